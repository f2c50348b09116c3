//! InputsReady: what the session brings is on the machine and verified. Env
//! values from Secrets and ConfigMaps go in a file only the login user can
//! read (sourced before the workload); ConfigMap and Secret inputs are written
//! over the login; URLs and bucket objects are fetched by the machine itself
//! from URLs the operator signed (sizes and checksums checked there), in the
//! background, with progress in the condition. A source that is wrong fails the
//! session (another host would not help); a host that cannot fetch fails the host.

use std::time::Duration;

use super::super::launcher::{SECRET_ENV, shell_quote, work_dir};
use super::super::sources::{self, Resolved};
use super::super::stage::{Pass, Verdict};
use super::super::step::{PROVISIONING_POLL, Step};
use crate::crd::conditions::{Status, types};
use crate::error::Result;
use crate::transfer::script::{INPUTS_PROGRESS, INPUTS_RESULT, fetch_script};

/// How often a transfer in progress is looked at.
const TRANSFER_POLL: Duration = Duration::from_secs(3);
/// Time allowed to one command that writes a file or reads progress.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The marker of a transfer started on this machine.
const STARTED: &str = "inputs.started";

pub async fn prove<'a>(step: &mut Step<'a>, pass: &mut Pass<'a, '_>) -> Result<Verdict> {
    if !sources::any(step) {
        step.condition(types::INPUTS_READY, true, "NothingToPlace", "the session brings no inputs or secret values");
        return Ok(Verdict::Proved);
    }
    let dir = work_dir(step);
    let look = format!(
        "mkdir -p \"{dir}\" && cd \"{dir}\" && cat {INPUTS_RESULT} 2>/dev/null; echo ---; cat {INPUTS_PROGRESS} 2>/dev/null; echo ---; ls {STARTED} 2>/dev/null"
    );
    let out = match pass.login.run(step, pass.key, &look).await {
        Ok(out) => out,
        Err(error) => return Ok(waiting(step, pass, &format!("cannot look at the machine yet: {error}"))),
    };
    let mut parts = out.stdout.split("---\n");
    let (result, progress, started) = (
        parts.next().unwrap_or("").trim(),
        parts.next().unwrap_or("").trim(),
        !parts.next().unwrap_or("").trim().is_empty(),
    );
    if result == "ok" {
        let message = match progress_text(progress) {
            Some(text) => format!("inputs in place and verified: {text}"),
            None => "inputs in place".to_string(),
        };
        step.condition(types::INPUTS_READY, true, "Placed", message);
        return Ok(Verdict::Proved);
    }
    if let Some(why) = result.strip_prefix("source:") {
        return Ok(Verdict::SessionFailed { reason: "InputInvalid", message: format!("an input is wrong:{why}") });
    }
    if let Some(why) = result.strip_prefix("host:") {
        return Ok(Verdict::host_failed("InputsFailed", format!("the machine could not fetch its inputs:{why}")));
    }
    if started {
        let text = progress_text(progress).unwrap_or_else(|| "starting".into());
        return Ok(waiting(step, pass, &format!("fetching: {text}")));
    }
    start(step, pass, &dir).await
}

/// "2 5 1048576 5242880" -> "2/5 files, 1.0 of 5.0 MiB".
fn progress_text(progress: &str) -> Option<String> {
    let numbers: Vec<u64> = progress.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [files, total_files, bytes, total_bytes] = numbers.as_slice() else { return None };
    let mib = |b: &u64| *b as f64 / (1024.0 * 1024.0);
    Some(format!("{files}/{total_files} files, {:.1} of {:.1} MiB", mib(bytes), mib(total_bytes)))
}

/// Not yet, or past the stage's time limit: the host is too slow to fetch.
fn waiting(step: &mut Step<'_>, pass: &Pass<'_, '_>, message: &str) -> Verdict {
    let since = step.true_since(types::CUDA_VERIFIED).unwrap_or(step.now);
    let limit = pass.timeouts.inputs_ready;
    if step.seconds_since(since) > limit.as_secs_f64() {
        let message = format!("the inputs were not in place within {}s: {message}", limit.as_secs());
        return Verdict::host_failed("InputsTooSlow", message);
    }
    step.condition(types::INPUTS_READY, Status::Unknown, "Transferring", message);
    Verdict::NotYet(TRANSFER_POLL)
}

/// Writes the secret values and small files over the login, and starts the machine's fetch.
async fn start<'a>(step: &mut Step<'a>, pass: &mut Pass<'a, '_>, dir: &str) -> Result<Verdict> {
    // Signed for the whole stage, at least an hour: a large dataset on a slow host still arrives.
    let lifetime = pass.timeouts.inputs_ready.max(Duration::from_secs(3600));
    let resolved = match sources::resolve(step, lifetime).await? {
        Ok(resolved) => resolved,
        // It was there before the rent: gone or refused since, the session cannot have it.
        Err(problem) => return Ok(Verdict::SessionFailed { reason: problem.reason, message: problem.message }),
    };
    if let Err(error) = place(step, pass, dir, &resolved).await {
        return Ok(waiting(step, pass, &error));
    }
    let script = fetch_script(dir, &resolved.fetches);
    let launch = format!(
        "cd \"{dir}\" && umask 077 && cat > inputs.sh && touch {STARTED} && \
         (nohup sh -c 'sh ./inputs.sh; rm -f ./inputs.sh' > inputs.log 2>&1 < /dev/null &) && echo started"
    );
    let started = match pass.login.connection(step, pass.key).await {
        Ok(connection) => match connection.exec_with_input(&launch, script.as_bytes(), COMMAND_TIMEOUT).await {
            Ok(out) if out.exit_code == Some(0) => Ok(()),
            Ok(out) => Err(format!("could not start the fetch: {}", out.stderr.trim())),
            Err(error) => Err(format!("could not start the fetch: {error}")),
        },
        Err(error) => Err(error.to_string()),
    };
    if let Err(why) = started {
        return Ok(waiting(step, pass, &why));
    }
    let count = resolved.files.len() + resolved.fetches.len();
    step.condition(
        types::INPUTS_READY,
        Status::Unknown,
        "Transferring",
        format!(
            "{count} inputs: {} written over SSH, {} fetched by the machine",
            resolved.files.len(),
            resolved.fetches.len()
        ),
    );
    Ok(Verdict::NotYet(PROVISIONING_POLL))
}

/// The env file and the inline files, each through the login's standard input (0600).
async fn place<'a>(
    step: &Step<'a>,
    pass: &mut Pass<'a, '_>,
    dir: &str,
    resolved: &Resolved,
) -> std::result::Result<(), String> {
    let connection = pass.login.connection(step, pass.key).await.map_err(|e| e.to_string())?;
    let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
    if !resolved.env.is_empty() {
        writes.push((SECRET_ENV.to_string(), sources::env_file(&resolved.env)));
    }
    writes.extend(resolved.files.iter().map(|f| (f.path.clone(), f.bytes.clone())));
    for (path, bytes) in writes {
        let target = shell_quote(&path);
        let command = format!("cd \"{dir}\" && umask 077 && mkdir -p \"$(dirname {target})\" && cat > {target}");
        match connection.exec_with_input(&command, &bytes, COMMAND_TIMEOUT).await {
            Ok(out) if out.exit_code == Some(0) => {}
            // The path is the user's, the message the shell's: neither holds the value.
            Ok(out) => return Err(format!("cannot write {path}: {}", out.stderr.trim())),
            Err(error) => return Err(format!("cannot write {path}: {error}")),
        }
    }
    Ok(())
}

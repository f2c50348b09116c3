//! Saving a Job's outputs before its machine is destroyed, whether the job
//! succeeded or failed. The operator lists the files over SSH, starts a
//! multipart upload for each large one, and signs a PUT per file or part; the
//! machine uploads in the background (the bytes never pass through the
//! operator) and writes what each upload answered. The operator then completes
//! the multipart uploads and confirms every object in the store (size, and the
//! MD5 where the store's ETag is one) before the session ends. The job's full
//! log is saved beside the first output. All of it is bounded by
//! `spec.timeouts.outputs`; past it the machine is destroyed anyway and the
//! lost outputs are named.

use std::collections::BTreeMap;
use std::time::Duration;

use super::launcher::{WORKLOAD_LOG, shell_quote, work_dir};
use super::login::{run_on_machine, run_with_input_on_machine};
use super::secret::SessionKey;
use super::sources::store_for;
use super::step::Step;
use crate::crd::conditions::{Status, types};
use crate::crd::session::SavedObject;
use crate::error::Result;
use crate::transfer::script::{OUTPUTS_DONE, OUTPUTS_RESULT, Put, PutResult, parse_put_results, put_script};
use crate::transfer::store::Store;

/// Files at least this large go up in parts.
const MULTIPART_FROM: u64 = 64 * 1024 * 1024;
/// A part's size (S3 allows 10 000 parts of 5 MiB to 5 GiB).
const PART_BYTES: u64 = 64 * 1024 * 1024;
/// The plan, on the machine, in the working directory (no secret in it).
const PLAN: &str = "outputs.plan";

/// Where saving stands.
pub enum Saving {
    /// Every output confirmed in its bucket.
    Saved { objects: Vec<SavedObject>, log: Option<String> },
    /// Uploading (the message says how far).
    NotYet(String),
    /// The time ran out or the store refused: these were not saved.
    Lost { objects: Vec<SavedObject>, log: Option<String>, lost: String },
}

/// One object to save: from which output, its key, its size, where on the machine, and its multipart upload.
#[derive(Clone, Debug, PartialEq)]
struct Planned {
    output: usize,
    key: String,
    bytes: u64,
    path: String,
    upload_id: Option<String>,
}

fn parse_plan(text: &str) -> Vec<Planned> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.splitn(5, '\t').collect();
            let [output, key, upload, bytes, path] = fields.as_slice() else { return None };
            Some(Planned {
                output: output.parse().ok()?,
                key: key.to_string(),
                upload_id: (*upload != "-").then(|| upload.to_string()),
                bytes: bytes.parse().ok()?,
                path: path.to_string(),
            })
        })
        .collect()
}

fn plan_text(plan: &[Planned]) -> String {
    plan.iter()
        .map(|p| {
            format!("{}\t{}\t{}\t{}\t{}\n", p.output, p.key, p.upload_id.as_deref().unwrap_or("-"), p.bytes, p.path)
        })
        .collect()
}

/// Moves the Job's outputs to their buckets; call it again until it is not `NotYet`.
pub async fn save(step: &mut Step<'_>, key: &SessionKey) -> Result<Saving> {
    let outputs = step.session.spec.workload.outputs.clone();
    if outputs.is_empty() {
        return Ok(Saving::Saved { objects: Vec::new(), log: None });
    }
    let limit = super::timeouts::for_spec(&step.session.spec).outputs;
    let since = match conditions_since(step) {
        Some(since) => since,
        None => {
            step.condition(types::OUTPUTS_SAVED, Status::Unknown, "Saving", "the job exited; saving its outputs");
            step.now
        }
    };
    let timed_out = step.seconds_since(since) > limit.as_secs_f64();
    let mut stores = BTreeMap::new();
    for (index, output) in outputs.iter().enumerate() {
        match store_for(step, &output.s3.location).await? {
            Ok(store) => {
                stores.insert(index, store);
            }
            Err(problem) => {
                return Ok(if timed_out {
                    Saving::Lost { objects: Vec::new(), log: None, lost: format!("every output: {}", problem.message) }
                } else {
                    Saving::NotYet(format!("cannot sign the uploads yet: {}", problem.message))
                });
            }
        }
    }
    let dir = work_dir(step);
    let look = format!(
        "cd \"{dir}\" && cat {PLAN} 2>/dev/null; echo ---; cat {OUTPUTS_RESULT} 2>/dev/null; echo ---; ls {OUTPUTS_DONE} 2>/dev/null"
    );
    let out = match run_on_machine(step, key, &look).await {
        Ok(out) => out,
        Err(error) if timed_out => {
            return Ok(Saving::Lost {
                objects: Vec::new(),
                log: None,
                lost: format!("every output: the machine could not be reached ({error})"),
            });
        }
        Err(error) => return Ok(Saving::NotYet(format!("cannot reach the machine: {error}"))),
    };
    let mut parts = out.stdout.split("---\n");
    let (plan_file, results, done) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), !parts.next().unwrap_or("").trim().is_empty());
    let mut plan = parse_plan(plan_file);
    if plan.is_empty() {
        plan = match make_plan(step, key, &stores).await? {
            Ok(plan) => plan,
            Err(why) if timed_out => {
                return Ok(Saving::Lost { objects: Vec::new(), log: None, lost: format!("every output: {why}") });
            }
            Err(why) => return Ok(Saving::NotYet(why)),
        };
        return start_uploads(step, key, &stores, &plan, limit).await;
    }
    if !done {
        let finished = results.lines().count();
        return Ok(Saving::NotYet(format!("uploading: {finished} uploads answered so far")));
    }
    let results = parse_put_results(results);
    let (objects, missing) = confirm(&plan, &results, &stores).await;
    let log = plan.iter().find(|p| p.path == WORKLOAD_LOG).map(|p| stores[&p.output].url_of(&p.key));
    let saved_log = log.filter(|url| objects.iter().any(|o| &o.url == url));
    let objects: Vec<SavedObject> = objects.into_iter().filter(|o| Some(&o.url) != saved_log.as_ref()).collect();
    if missing.is_empty() {
        return Ok(Saving::Saved { objects, log: saved_log });
    }
    if timed_out {
        return Ok(Saving::Lost { objects, log: saved_log, lost: missing.join("; ") });
    }
    // Refused or damaged: the whole plan is signed and run again (the store keeps what it has).
    start_uploads(step, key, &stores, &plan, limit)
        .await
        .map(|_| Saving::NotYet(format!("retrying: {}", missing.join("; "))))
}

/// When saving began, if it has.
fn conditions_since(step: &Step<'_>) -> Option<jiff::Timestamp> {
    crate::crd::conditions::find(&step.status.conditions, types::OUTPUTS_SAVED)
        .filter(|c| c.status == "Unknown")
        .map(|c| c.last_transition_time.0)
}

/// Lists the files of every output on the machine and gives each its key (and a
/// multipart upload when large); the plan is kept on the machine.
async fn make_plan(
    step: &Step<'_>,
    key: &SessionKey,
    stores: &BTreeMap<usize, Store>,
) -> Result<std::result::Result<Vec<Planned>, String>> {
    let outputs = &step.session.spec.workload.outputs;
    let dir = work_dir(step);
    let mut list = format!("cd \"{dir}\" || exit 1\n");
    for (index, output) in outputs.iter().enumerate() {
        let path = shell_quote(&output.path);
        list.push_str(&format!(
            "if [ -d {path} ]; then find {path} -type f -printf '{index}\\t%s\\t%P\\n'; elif [ -f {path} ]; then printf '{index}\\t%s\\t\\n' \"$(wc -c < {path} | tr -d ' ')\"; fi\n"
        ));
    }
    list.push_str(&format!(
        "[ -f {WORKLOAD_LOG} ] && printf 'log\\t%s\\t\\n' \"$(wc -c < {WORKLOAD_LOG} | tr -d ' ')\"\n"
    ));
    let out = match run_on_machine(step, key, &format!("sh -c {}", shell_quote(&list))).await {
        Ok(out) => out,
        Err(error) => return Ok(Err(format!("cannot list the outputs yet: {error}"))),
    };
    let mut plan = Vec::new();
    for line in out.stdout.lines() {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        let [which, bytes, rest] = fields.as_slice() else { continue };
        let Ok(bytes) = bytes.parse::<u64>() else { continue };
        let (output, object_key, path) = if *which == "log" {
            let prefix = &outputs[0].s3.prefix;
            (0, format!("{prefix}{WORKLOAD_LOG}"), WORKLOAD_LOG.to_string())
        } else {
            let Ok(index) = which.parse::<usize>() else { continue };
            let output = &outputs[index];
            let name = if rest.is_empty() {
                output.path.rsplit('/').next().unwrap_or(&output.path).to_string()
            } else {
                rest.to_string()
            };
            let path = if rest.is_empty() {
                output.path.clone()
            } else {
                format!("{}/{rest}", output.path.trim_end_matches('/'))
            };
            (index, format!("{}{name}", output.s3.prefix), path)
        };
        let upload_id = if bytes >= MULTIPART_FROM {
            match stores[&output].create_multipart(&object_key).await {
                Ok(id) => Some(id),
                Err(error) => return Ok(Err(format!("cannot start the upload of {object_key}: {error}"))),
            }
        } else {
            None
        };
        plan.push(Planned { output, key: object_key, bytes, path, upload_id });
    }
    Ok(Ok(plan))
}

/// Signs every upload of `plan` and starts the machine's upload in the background.
async fn start_uploads(
    step: &mut Step<'_>,
    key: &SessionKey,
    stores: &BTreeMap<usize, Store>,
    plan: &[Planned],
    limit: Duration,
) -> Result<Saving> {
    let lifetime = limit.max(Duration::from_secs(3600));
    let mut puts = Vec::new();
    for planned in plan {
        let store = &stores[&planned.output];
        match &planned.upload_id {
            None => puts.push(Put {
                url: store.signed_put(&planned.key, lifetime).to_string(),
                path: planned.path.clone(),
                key: planned.key.clone(),
                part: 0,
                offset: 0,
                bytes: planned.bytes,
            }),
            Some(id) => {
                let part_bytes = PART_BYTES.max(planned.bytes.div_ceil(10_000));
                for (n, offset) in (0..planned.bytes).step_by(part_bytes as usize).enumerate() {
                    let part = n as u16 + 1;
                    puts.push(Put {
                        url: store.signed_part(&planned.key, part, id, lifetime).to_string(),
                        path: planned.path.clone(),
                        key: planned.key.clone(),
                        part,
                        offset,
                        bytes: part_bytes.min(planned.bytes - offset),
                    });
                }
            }
        }
    }
    let dir = work_dir(step);
    let script = put_script(&dir, &puts);
    let plan_file = plan_text(plan);
    // The plan first (it names the multipart uploads to complete), then the script, run in the background.
    let launch = format!(
        "cd \"{dir}\" && umask 077 && printf '%s' {} > {PLAN} && cat > outputs.sh && \
         (nohup sh -c 'sh ./outputs.sh; rm -f ./outputs.sh' > outputs.log 2>&1 < /dev/null &) && echo started",
        shell_quote(&plan_file)
    );
    let started =
        run_with_input_on_machine(step, key, &launch, script.as_bytes()).await.map(|out| out.exit_code == Some(0));
    let message = match started {
        Ok(true) => format!("uploading {} objects in {} requests", plan.len(), puts.len()),
        Ok(false) => "could not start the upload yet".to_string(),
        Err(error) => format!("could not start the upload yet: {error}"),
    };
    step.condition(types::OUTPUTS_SAVED, Status::Unknown, "Saving", message.clone());
    Ok(Saving::NotYet(message))
}

/// Completes the multipart uploads and confirms every object in its store: the
/// objects saved, and what is missing (with why).
async fn confirm(
    plan: &[Planned],
    results: &[PutResult],
    stores: &BTreeMap<usize, Store>,
) -> (Vec<SavedObject>, Vec<String>) {
    let (mut saved, mut missing) = (Vec::new(), Vec::new());
    for planned in plan {
        let store = &stores[&planned.output];
        let mine: Vec<&PutResult> = results
            .iter()
            .filter(|r| matches!(r, PutResult::Done { key, .. } | PutResult::Failed { key, .. } if key == &planned.key))
            .collect();
        if let Some(PutResult::Failed { why, .. }) = mine.iter().find(|r| matches!(r, PutResult::Failed { .. })) {
            missing.push(format!("{} ({why})", planned.key));
            continue;
        }
        let mut done: Vec<(u16, String, String)> = mine
            .iter()
            .filter_map(|r| match r {
                PutResult::Done { part, etag, md5, .. } => Some((*part, etag.clone(), md5.clone())),
                PutResult::Failed { .. } => None,
            })
            .collect();
        done.sort();
        if let Some(id) = &planned.upload_id {
            let etags: Vec<String> = done.iter().map(|(_, etag, _)| etag.clone()).collect();
            if let Err(error) = store.complete_multipart(&planned.key, id, &etags).await {
                missing.push(format!("{} ({error})", planned.key));
                continue;
            }
        }
        match store.head(&planned.key).await {
            Ok(Some(found)) if found.bytes == planned.bytes => {
                // A single PUT's ETag is the MD5 the machine computed before sending.
                let damaged = planned.upload_id.is_none()
                    && done
                        .first()
                        .is_some_and(|(_, _, md5)| found.etag.as_ref().is_some_and(|e| e.len() == 32 && e != md5));
                if damaged {
                    missing.push(format!("{} (arrived damaged: MD5 differs)", planned.key));
                } else {
                    saved.push(SavedObject { url: store.url_of(&planned.key), bytes: found.bytes });
                }
            }
            Ok(Some(found)) => {
                missing.push(format!("{} (the store has {} bytes of {})", planned.key, found.bytes, planned.bytes))
            }
            Ok(None) => missing.push(format!("{} (not in the store)", planned.key)),
            Err(error) => missing.push(format!("{} ({error})", planned.key)),
        }
    }
    (saved, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_back_as_written() {
        let plan = vec![
            Planned {
                output: 0,
                key: "runs/ckpt/model.bin".into(),
                bytes: 70_000_000,
                path: "ckpt/model.bin".into(),
                upload_id: Some("u1".into()),
            },
            Planned { output: 1, key: "runs/job.log".into(), bytes: 12, path: "job.log".into(), upload_id: None },
        ];
        assert_eq!(parse_plan(&plan_text(&plan)), plan);
    }
}

//! Proving the machine works, stage by stage: InstanceRunning, SSHReady,
//! CUDAVerified, WorkloadReady, then Ready. A stage that fails for the host's
//! sake (never running, unreachable, CUDA below the requirement, workload
//! crash) destroys the instance, marks the host bad and shops again; any
//! other failure ends the session.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::login::StageLogin;
use super::secret::{self, SessionKey};
use super::timeouts::{self, StageTimeouts};
use super::{PROVISIONING_POLL, Step, teardown};
use crate::crd::conditions::{Status, types};
use crate::crd::session::{Attempt, SshEndpoint, after_stored};
use crate::crd::{SessionPhase, WorkloadKind};
use crate::error::Result;
use crate::inventory::Presence;
use crate::market::cuda_at_least;
use crate::metrics::ProviderLabels;
use crate::probe::nvidia;
use crate::probe::ssh::{CommandOutput, SshError};
use crate::provider::{Instance, InstanceState};

/// How long a just-created instance may be unknown to the marketplace's lookups.
const NOT_VISIBLE_YET: Duration = Duration::from_secs(30);

/// How long a starting session waits for the shared listing before it looks its machine up itself.
const LISTING_WAIT: Duration = Duration::from_secs(30);

pub async fn step<'a>(step: &mut Step<'a>, key: &SessionKey) -> Result<Action> {
    let limits = timeouts::for_spec(&step.session.spec);
    // The stages that pass in this reconcile share one login.
    let mut login = StageLogin::default();
    loop {
        let (stage, action) = if !step.condition_is_true(types::INSTANCE_RUNNING) {
            (types::INSTANCE_RUNNING, instance_running(step, &limits).await?)
        } else if !step.condition_is_true(types::SSH_READY) {
            (types::SSH_READY, ssh_ready(step, &mut login, key, &limits).await?)
        } else if !step.condition_is_true(types::CUDA_VERIFIED) {
            (types::CUDA_VERIFIED, cuda_verified(step, &mut login, key, &limits).await?)
        } else if !step.condition_is_true(types::WORKLOAD_READY) {
            (types::WORKLOAD_READY, workload_ready(step, &mut login, key, &limits).await?)
        } else {
            return ready(step).await;
        };
        // A stage that passed leads straight to the next in the same reconcile, so the
        // stages that pass at once cost one status write, not one each.
        let still_on_this_machine = step.status.instance_id.is_some()
            && !matches!(step.status.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed));
        if !(step.condition_is_true(stage) && still_on_this_machine) {
            return Ok(action);
        }
    }
}

/// What is known of the recorded instance while it starts.
enum Sighting {
    Seen(Box<Instance>),
    /// No listing sent since the rent has come back yet: the inventory loop is asked for
    /// one and wakes the session when it shows the machine running.
    AwaitingListing,
    /// The marketplace does not know the id.
    Unknown,
}

/// The recorded instance as the marketplace shows it: from the shared listing
/// (one paged listing per marketplace serves every starting session; Vast
/// paces each endpoint, and one lookup per instance per poll does not scale),
/// with one direct lookup only when the listing cannot say (absent from it,
/// running without the detail `complete` asks for, or the listing failing or overdue).
async fn current_instance(step: &Step<'_>, complete: impl Fn(&Instance) -> bool) -> Result<Sighting> {
    let (Some(provider), Some(id)) = (step.status.provider, step.status.instance_id.clone()) else {
        return Ok(Sighting::Unknown);
    };
    let Some(client) = step.ctx.provider(provider) else { return Ok(Sighting::Unknown) };
    let inventory = &step.ctx.inventory;
    let rented = step.status.rented_at.as_ref().map(after_stored).unwrap_or(step.now);
    match inventory.presence(provider, &id, rented) {
        Presence::Listed(instance) if instance.state == InstanceState::Running && complete(&instance) => {
            return Ok(Sighting::Seen(instance));
        }
        Presence::Listed(instance) if instance.state != InstanceState::Running => {
            inventory.request_refresh(provider);
            return Ok(Sighting::Seen(instance));
        }
        Presence::Unknown
            if inventory.last_error(provider).is_none() && step.seconds_since(rented) < LISTING_WAIT.as_secs_f64() =>
        {
            inventory.request_refresh(provider);
            return Ok(Sighting::AwaitingListing);
        }
        _ => {}
    }
    Ok(match client.get_instance(&id).await? {
        Some(instance) => Sighting::Seen(Box::new(instance)),
        None => Sighting::Unknown,
    })
}

async fn instance_running(step: &mut Step<'_>, limits: &StageTimeouts) -> Result<Action> {
    let instance = match current_instance(step, |i| i.ssh.is_some()).await? {
        Sighting::Seen(instance) => instance,
        // The condition still says the machine was created and is awaited: nothing new to write.
        Sighting::AwaitingListing => return Ok(Action::requeue(PROVISIONING_POLL)),
        Sighting::Unknown => {
            // A fresh create can take a moment to show in the marketplace's lookups.
            let rented = step.status.rented_at.as_ref().map(|t| t.0).unwrap_or(step.now);
            if step.seconds_since(rented) < NOT_VISIBLE_YET.as_secs_f64() {
                step.condition(types::INSTANCE_RUNNING, false, "Starting", "not visible at the marketplace yet");
                return Ok(Action::requeue(PROVISIONING_POLL));
            }
            return host_failed(step, "InstanceLost", "the marketplace no longer knows the instance".into()).await;
        }
    };
    if let (InstanceState::Running, Some(target)) = (&instance.state, &instance.ssh) {
        step.status.ssh = Some(SshEndpoint {
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            host_key_fingerprint: None,
        });
        secret::record_endpoint(step.session, step.ctx, &target.host, target.port, &target.user).await?;
        let message = format!(
            "{} reports the instance running; SSH at {}@{}:{}",
            instance.provider, target.user, target.host, target.port
        );
        step.condition(types::INSTANCE_RUNNING, true, "Running", message.clone());
        step.phase(SessionPhase::Verifying, "InstanceRunning", message);
        return Ok(Action::requeue(super::NEXT_STAGE));
    }
    let since = step.status.rented_at.as_ref().map(|t| t.0).unwrap_or(step.now);
    if step.seconds_since(since) > limits.instance_running.as_secs_f64() {
        let message = format!(
            "not running with an SSH endpoint after {}s (state {:?})",
            limits.instance_running.as_secs(),
            instance.state
        );
        return host_failed(step, "InstanceNeverRan", message).await;
    }
    step.condition(
        types::INSTANCE_RUNNING,
        false,
        "Starting",
        format!("state {:?}, no SSH endpoint yet", instance.state),
    );
    Ok(Action::requeue(PROVISIONING_POLL))
}

fn count_ssh_failure(step: &Step<'_>) {
    let provider = step.status.provider.map(|p| p.as_str()).unwrap_or("unknown");
    step.ctx.metrics.ssh_verify_failures.get_or_create(&ProviderLabels { provider }).inc();
}

async fn ssh_ready<'a>(
    step: &mut Step<'a>,
    login: &mut StageLogin<'a>,
    key: &SessionKey,
    limits: &StageTimeouts,
) -> Result<Action> {
    match login.open(step, key).await {
        Ok(host_fingerprint) => {
            let endpoint = step.status.ssh.as_mut().expect("InstanceRunning recorded the endpoint");
            endpoint.host_key_fingerprint.get_or_insert(host_fingerprint.clone());
            let message = format!(
                "logged in as {}@{}:{} with the session's key; host key {host_fingerprint} pinned",
                endpoint.user, endpoint.host, endpoint.port
            );
            step.condition(types::SSH_READY, true, "LoggedIn", message.clone());
            Ok(Action::requeue(super::NEXT_STAGE))
        }
        Err(error @ SshError::HostKeyChanged { .. }) => {
            count_ssh_failure(step);
            host_failed(step, "HostKeyChanged", error.to_string()).await
        }
        Err(error) => {
            count_ssh_failure(step);
            let since = step.true_since(types::INSTANCE_RUNNING).unwrap_or(step.now);
            if step.seconds_since(since) > limits.ssh_ready.as_secs_f64() {
                let message = format!("no SSH login within {}s: {error}", limits.ssh_ready.as_secs());
                return host_failed(step, "SSHUnreachable", message).await;
            }
            step.condition(types::SSH_READY, Status::Unknown, "Waiting", format!("not yet: {error}"));
            Ok(Action::requeue(PROVISIONING_POLL))
        }
    }
}

async fn cuda_verified<'a>(
    step: &mut Step<'a>,
    login: &mut StageLogin<'a>,
    key: &SessionKey,
    limits: &StageTimeouts,
) -> Result<Action> {
    let out = match login.run(step, key, nvidia::QUERY).await {
        Ok(out) => out,
        Err(error) => {
            count_ssh_failure(step);
            let since = step.true_since(types::SSH_READY).unwrap_or(step.now);
            if step.seconds_since(since) > limits.cuda_verified.as_secs_f64() {
                return host_failed(step, "SSHUnreachable", format!("lost SSH while verifying CUDA: {error}")).await;
            }
            step.condition(types::CUDA_VERIFIED, Status::Unknown, "Waiting", format!("not yet: {error}"));
            return Ok(Action::requeue(PROVISIONING_POLL));
        }
    };
    match judge_gpus(step, &out).await? {
        Ok(summary) => {
            step.condition(types::CUDA_VERIFIED, true, "Verified", summary);
            Ok(Action::requeue(super::NEXT_STAGE))
        }
        Err((reason, message)) => {
            // The machine is left: its login is no longer needed while it is destroyed.
            login.close();
            host_failed(step, reason, message).await
        }
    }
}

/// What nvidia-smi showed against what the session needs: a summary of the
/// GPUs, or why the host fails (a reason and a message).
async fn judge_gpus(
    step: &mut Step<'_>,
    out: &CommandOutput,
) -> Result<std::result::Result<String, (&'static str, String)>> {
    if out.exit_code != Some(0) {
        let why = if out.exit_code == Some(127) {
            "nvidia-smi is not installed: the image has no NVIDIA driver"
        } else {
            "nvidia-smi failed"
        };
        return Ok(Err(("DriverMissing", format!("{why} ({})", out.stderr.trim()))));
    }
    let Some(found) = nvidia::parse(&out.stdout) else {
        return Ok(Err(("CUDAUnverifiable", "nvidia-smi output could not be read".into())));
    };
    // The filter and the inline requirements together, as when shopping.
    let requirements = match super::rent::effective_requirements(step).await? {
        Ok(requirements) => requirements,
        Err(_) => step.session.spec.requirements.clone().unwrap_or_default(),
    };
    let needed = requirements.min_cuda_version.clone();
    let summary = nvidia::summary(&found);
    step.status.verified = Some(found.clone());
    if let Some(needed) = needed
        && !cuda_at_least(&found.cuda_version, &needed)
    {
        let message = format!(
            "nvidia-smi reports CUDA {} (the marketplace advertised more or nothing); the session needs {needed}: {summary}",
            found.cuda_version
        );
        return Ok(Err(("CUDAMismatch", message)));
    }
    if let Some(count) = requirements.gpu_count
        && found.gpu_count < count
    {
        return Ok(Err(("GPUCountMismatch", format!("asked for {count} GPUs, nvidia-smi shows {summary}"))));
    }
    Ok(Ok(summary))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The operator's own working directory on the machine for this session.
pub fn work_dir(step: &Step<'_>) -> String {
    format!("$HOME/.gpu-shopper/{}", step.session.uid().unwrap_or_default())
}

/// Starts the start script and the workload command in the background, once.
fn launcher(step: &Step<'_>) -> String {
    let spec = &step.session.spec;
    let dir = work_dir(step);
    let start = spec.start_script.clone().unwrap_or_default();
    let command = spec.workload.command.clone().unwrap_or_default();
    format!(
        "D=\"{dir}\"; mkdir -p \"$D\" && cd \"$D\" && if [ ! -e started ]; then touch started; \
         printf '%s\\n' {start} > start.sh; printf '%s\\n' {command} > workload.sh; \
         nohup sh -c 'sh ./start.sh > start.log 2>&1; sh ./workload.sh > job.log 2>&1; echo $? > exit_code.tmp; mv exit_code.tmp exit_code' \
         > /dev/null 2>&1 < /dev/null & fi; echo launched",
        start = shell_quote(&start),
        command = shell_quote(&command),
    )
}

async fn workload_ready<'a>(
    step: &mut Step<'a>,
    login: &mut StageLogin<'a>,
    key: &SessionKey,
    limits: &StageTimeouts,
) -> Result<Action> {
    if let Err(error) = login.run(step, key, &launcher(step)).await {
        count_ssh_failure(step);
        step.condition(
            types::WORKLOAD_READY,
            Status::Unknown,
            "Waiting",
            format!("could not start the workload yet: {error}"),
        );
        return workload_deadline(step, limits, &error.to_string()).await;
    }
    match step.session.spec.workload.kind {
        WorkloadKind::Interactive => {
            step.condition(
                types::WORKLOAD_READY,
                true,
                "SSHSuffices",
                "interactive: SSH works; the start script runs in the background",
            );
        }
        WorkloadKind::Job => {
            step.condition(types::WORKLOAD_READY, true, "JobRunning", "the job's command is running");
        }
        WorkloadKind::Inference => {
            // The model is probed over HTTP; the login is not needed while it loads or if the host fails.
            login.close();
            match probe_inference(step).await {
                InferenceProbe::Answered(message) => {
                    step.condition(types::WORKLOAD_READY, true, "ModelAnswered", message)
                }
                InferenceProbe::Crashed(message) => return host_failed(step, "WorkloadCrashed", message).await,
                InferenceProbe::NotYet(message) => {
                    step.condition(types::WORKLOAD_READY, false, "Loading", message.clone());
                    return workload_deadline(step, limits, &message).await;
                }
            }
        }
    }
    Ok(Action::requeue(super::NEXT_STAGE))
}

async fn workload_deadline(step: &mut Step<'_>, limits: &StageTimeouts, last: &str) -> Result<Action> {
    let since = step.true_since(types::CUDA_VERIFIED).unwrap_or(step.now);
    if step.seconds_since(since) > limits.workload_ready.as_secs_f64() {
        let message = format!("the workload was not ready within {}s: {last}", limits.workload_ready.as_secs());
        teardown::end(step, SessionPhase::Failed, "WorkloadTimeout", message).await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(PROVISIONING_POLL))
}

enum InferenceProbe {
    Answered(String),
    NotYet(String),
    Crashed(String),
}

async fn probe_inference(step: &Step<'_>) -> InferenceProbe {
    let Some(probe) = step.session.spec.workload.inference.clone() else {
        return InferenceProbe::NotYet("spec.workload.inference is missing".into());
    };
    let port = probe.port.unwrap_or(super::rent::DEFAULT_INFERENCE_PORT);
    // A listing may leave port mappings out: then the instance itself is looked up.
    let instance = match current_instance(step, |i| i.endpoint(port).is_some()).await {
        Ok(Sighting::Seen(instance)) => instance,
        Ok(_) => return InferenceProbe::NotYet("the instance is not visible".into()),
        Err(error) => return InferenceProbe::NotYet(error.to_string()),
    };
    let Some(endpoint) = instance.endpoint(port) else {
        return InferenceProbe::NotYet(format!("port {port} is not exposed yet"));
    };
    let base = format!("http://{}:{}", endpoint.host, endpoint.port);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
    let path = probe.health_path.clone().unwrap_or_else(|| "/v1/models".into());
    let listed = match http.get(format!("{base}{path}")).send().await {
        Ok(r) if r.status().is_success() => read_capped(r).await,
        Ok(r) => return InferenceProbe::NotYet(format!("{path} answered {}", r.status())),
        Err(e) => return InferenceProbe::NotYet(format!("{path}: {}", e.without_url())),
    };
    if !listed.contains(&probe.model) {
        return InferenceProbe::NotYet(format!("{path} does not list {} yet", probe.model));
    }
    let prompt = probe.test_prompt.clone().unwrap_or_else(|| "Say hello.".into());
    let body = serde_json::json!({"model": probe.model, "prompt": prompt, "max_tokens": 16});
    match http.post(format!("{base}/v1/completions")).json(&body).send().await {
        Ok(r) if r.status().is_success() => {
            InferenceProbe::Answered(format!("{} is listed and answered the test prompt", probe.model))
        }
        Ok(r) if r.status().is_server_error() => {
            let status = r.status();
            let text: String = read_capped(r).await.chars().take(300).collect();
            InferenceProbe::Crashed(format!("the first prompt failed with {status}: {text}"))
        }
        Ok(r) => InferenceProbe::NotYet(format!("/v1/completions answered {}", r.status())),
        Err(e) => InferenceProbe::NotYet(format!("/v1/completions: {}", e.without_url())),
    }
}

/// The most of an HTTP answer from a machine that is read.
const HTTP_READ_MAX: usize = 256 * 1024;

/// Reads at most `HTTP_READ_MAX` bytes of a body: a workload's answer cannot exhaust the operator's memory.
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = HTTP_READ_MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= HTTP_READ_MAX {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

async fn ready(step: &mut Step<'_>) -> Result<Action> {
    let message = "every stage passed: the machine is handed over".to_string();
    step.condition(types::READY, true, "AllStagesPassed", message.clone());
    step.phase(SessionPhase::Running, "Ready", message);
    step.status.started_at = Some(step.time());
    // One Event tells the whole proof (each stage's detail is in its condition).
    let ssh = step.status.ssh.as_ref().map(|e| {
        format!("SSH {}@{}:{} (host key {})", e.user, e.host, e.port, e.host_key_fingerprint.as_deref().unwrap_or("?"))
    });
    let found = step
        .status
        .verified
        .as_ref()
        .map(|v| format!("{}x {}, driver {}, CUDA {}", v.gpu_count, v.gpu_name, v.driver_version, v.cuda_version));
    let proof: Vec<String> = [ssh, found].into_iter().flatten().collect();
    step.event(false, "Ready", format!("every stage passed, the machine is handed over: {}", proof.join("; ")));
    step.observe_time_to_ready();
    super::running::set_expiry(step);
    Ok(Action::requeue(super::NEXT_STAGE))
}

/// The host failed a stage: destroy it, avoid it, record the attempt, shop again.
pub async fn host_failed(step: &mut Step<'_>, reason: &str, message: String) -> Result<Action> {
    let provider = step.status.provider;
    let offer_id = step.status.offer_id.clone().unwrap_or_default();
    if let (Some(provider), Some(host)) = (provider, step.status.host_id.as_deref()) {
        step.ctx.bad_hosts.mark(provider, host, reason);
    }
    teardown::release(step).await?;
    let cost_usd = step.status.rented_at.is_some().then(|| teardown::current_machine_cost(step));
    step.status.attempts.push(Attempt {
        provider,
        offer_id: offer_id.clone(),
        price_per_hour: step.status.price_per_hour,
        cost_usd,
        reason: reason.to_string(),
        message: message.clone(),
        time: step.time(),
    });
    step.event(
        true,
        reason,
        format!("offer {offer_id}: {message}; the host is avoided and another offer will be tried"),
    );
    let s = &mut step.status;
    s.instance_id = None;
    s.ssh = None;
    s.verified = None;
    s.rented_at = None;
    s.released_at = None;
    s.price_per_hour = None;
    s.gpu = None;
    s.started_at = None;
    s.expires_at = None;
    s.idle_since = None;
    for stage in [types::INSTANCE_RUNNING, types::SSH_READY, types::CUDA_VERIFIED, types::WORKLOAD_READY] {
        step.condition(stage, Status::Unknown, "Reshopping", format!("previous host failed: {reason}"));
    }
    // Not a failure of the session: it shops again, so readiness is not known yet.
    step.condition(types::READY, Status::Unknown, reason, message.clone());
    step.phase(SessionPhase::Provisioning, reason, format!("{message}; trying another offer"));
    Ok(Action::requeue(super::NEXT_STAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("echo 'hi'"), r"'echo '\''hi'\'''");
    }
}

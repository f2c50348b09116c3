//! WorkloadReady: the start script and workload are launched, and for an
//! Inference session the model answers a test prompt. A model that crashes on
//! its first prompt is the host's failure; a workload not ready within its time
//! limit ends the session (another host would not help).

use super::super::launcher::launcher;
use super::super::login::count_ssh_failure;
use super::super::stage::{Pass, Verdict};
use super::super::step::{PROVISIONING_POLL, Step};
use crate::crd::WorkloadKind;
use crate::crd::conditions::{Status, types};
use crate::error::Result;
use crate::probe::inference::{self, InferenceCheck, InferenceProbe};

pub async fn prove<'a>(step: &mut Step<'a>, pass: &mut Pass<'a, '_>) -> Result<Verdict> {
    if let Err(error) = pass.login.run(step, pass.key, &launcher(step)).await {
        count_ssh_failure(step);
        step.condition(
            types::WORKLOAD_READY,
            Status::Unknown,
            "Waiting",
            format!("could not start the workload yet: {error}"),
        );
        return Ok(deadline(step, pass, &error.to_string()));
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
            // The model is probed on the machine's loopback, through the login.
            match probe_model(step, pass).await {
                InferenceProbe::Answered(message) => {
                    step.condition(types::WORKLOAD_READY, true, "ModelAnswered", message)
                }
                InferenceProbe::Crashed(message) => return Ok(Verdict::host_failed("WorkloadCrashed", message)),
                InferenceProbe::NotYet(message) => {
                    step.condition(types::WORKLOAD_READY, false, "Loading", message.clone());
                    return Ok(deadline(step, pass, &message));
                }
            }
        }
    }
    Ok(Verdict::Proved)
}

/// Not ready yet: look again soon, or, past the stage's time limit, the session fails.
fn deadline(step: &Step<'_>, pass: &Pass<'_, '_>, last: &str) -> Verdict {
    // Counted from the inputs in place (a large dataset is not the workload's time).
    let since = step.true_since(types::INPUTS_READY).or(step.true_since(types::CUDA_VERIFIED)).unwrap_or(step.now);
    let limit = pass.timeouts.workload_ready;
    if step.seconds_since(since) > limit.as_secs_f64() {
        let message = format!("the workload was not ready within {}s: {last}", limit.as_secs());
        return Verdict::SessionFailed { reason: "WorkloadTimeout", message };
    }
    Verdict::NotYet(PROVISIONING_POLL)
}

/// The model server on the machine's inference port, reached on the machine's
/// own loopback through the stage's SSH login: the port is never exposed.
async fn probe_model<'a>(step: &Step<'a>, pass: &mut Pass<'a, '_>) -> InferenceProbe {
    let Some(probe) = step.session.spec.workload.inference.clone() else {
        return InferenceProbe::NotYet("spec.workload.inference is missing".into());
    };
    let port = probe.port_or_default();
    let connection = match pass.login.connection(step, pass.key).await {
        Ok(connection) => connection,
        Err(error) => return InferenceProbe::NotYet(format!("SSH: {error}")),
    };
    let connect = || async move { connection.tunnel(port).await.map_err(|e| e.to_string()) };
    let check = InferenceCheck {
        model: &probe.model,
        health_path: probe.health_path.as_deref().unwrap_or("/v1/models"),
        test_prompt: probe.test_prompt.as_deref().unwrap_or("Say hello."),
    };
    inference::probe(connect, &check).await
}

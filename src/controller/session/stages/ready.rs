//! Ready: every stage before it holds, so the machine is handed over. Sets the
//! phase Running, the start and expiry, and tells the whole proof in one Event.

use super::super::expiry::set_expiry;
use super::super::stage::{Pass, Verdict};
use super::super::step::Step;
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::error::Result;

pub async fn prove(step: &mut Step<'_>, _: &mut Pass<'_, '_>) -> Result<Verdict> {
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
    set_expiry(step);
    Ok(Verdict::Proved)
}

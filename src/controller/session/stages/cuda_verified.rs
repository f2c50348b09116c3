//! CUDAVerified: `nvidia-smi` on the machine shows the GPUs, driver and CUDA
//! the session needs (a marketplace's advertised CUDA is not trusted). Below the
//! requirement, no driver, or too few GPUs is the host's failure; but while the
//! VM's cloud-init still runs (TensorDock repairs broken drivers there, which
//! takes minutes and may reboot), a failing `nvidia-smi` is "not yet".

use super::super::login::count_ssh_failure;
use super::super::requirements;
use super::super::stage::{Pass, Verdict};
use super::super::step::{PROVISIONING_POLL, Step};
use crate::crd::conditions::{Status, types};
use crate::error::Result;
use crate::probe::nvidia;
use crate::probe::ssh::CommandOutput;
use crate::units::cuda_at_least;

pub async fn prove<'a>(step: &mut Step<'a>, pass: &mut Pass<'a, '_>) -> Result<Verdict> {
    let out = match pass.login.run(step, pass.key, nvidia::QUERY).await {
        Ok(out) => out,
        Err(error) => {
            count_ssh_failure(step);
            let since = step.true_since(types::SSH_READY).unwrap_or(step.now);
            if step.seconds_since(since) > pass.timeouts.cuda_verified.as_secs_f64() {
                return Ok(Verdict::host_failed("SSHUnreachable", format!("lost SSH while verifying CUDA: {error}")));
            }
            step.condition(types::CUDA_VERIFIED, Status::Unknown, "Waiting", format!("not yet: {error}"));
            return Ok(Verdict::NotYet(PROVISIONING_POLL));
        }
    };
    match judge_gpus(step, &out).await? {
        Ok(summary) => {
            step.condition(types::CUDA_VERIFIED, true, "Verified", summary);
            Ok(Verdict::Proved)
        }
        Err((reason, message)) if out.exit_code != Some(0) && still_setting_up(step, pass).await => {
            let since = step.true_since(types::SSH_READY).unwrap_or(step.now);
            if step.seconds_since(since) > pass.timeouts.cuda_verified.as_secs_f64() {
                let message =
                    format!("{message}; cloud-init was still running after {}s", pass.timeouts.cuda_verified.as_secs());
                return Ok(Verdict::host_failed(reason, message));
            }
            let waiting = "the machine's cloud-init is still running (it may be repairing the driver)";
            step.condition(types::CUDA_VERIFIED, Status::Unknown, "SettingUp", format!("not yet: {waiting}"));
            Ok(Verdict::NotYet(SETUP_POLL))
        }
        Err((reason, message)) => Ok(Verdict::host_failed(reason, message)),
    }
}

/// How often a machine still setting itself up is looked at again.
const SETUP_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the machine's boot-time setup (cloud-init) is still running. A container
/// without cloud-init, or an answer that cannot be read, says no.
async fn still_setting_up<'a>(step: &Step<'a>, pass: &mut Pass<'a, '_>) -> bool {
    match pass.login.run(step, pass.key, "cloud-init status").await {
        Ok(out) => out.stdout.lines().any(|line| line.trim() == "status: running"),
        Err(_) => false,
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
    let requirements = match requirements::effective(step).await? {
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

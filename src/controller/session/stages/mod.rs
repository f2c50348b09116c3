//! Proving the machine works, stage by stage (Karpenter's NodeClaim lifecycle
//! is the model): InstanceRunning, SSHReady, CUDAVerified, InputsReady,
//! WorkloadReady, then Ready. Each stage is one condition and one file with the same shape (see
//! `stage`); none calls a sibling. This parent runs them in order, and owns
//! what follows each verdict: on to the next stage, look again later, hand the
//! host to `bad_host` (destroyed, avoided, replaced), or end the session.

mod cuda_verified;
mod inputs_ready;
mod instance_running;
mod ready;
mod ssh_ready;
mod workload_ready;

use kube::runtime::controller::Action;

use super::bad_host;
use super::login::StageLogin;
use super::secret::SessionKey;
use super::stage::{Pass, Verdict};
use super::step::{NEXT_STAGE, Step};
use super::teardown;
use super::timeouts;
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::error::Result;

/// The stages, in the order they are proved.
#[derive(Clone, Copy)]
enum Stage {
    InstanceRunning,
    SshReady,
    CudaVerified,
    InputsReady,
    WorkloadReady,
    Ready,
}

const STAGES: [Stage; 6] = [
    Stage::InstanceRunning,
    Stage::SshReady,
    Stage::CudaVerified,
    Stage::InputsReady,
    Stage::WorkloadReady,
    Stage::Ready,
];

impl Stage {
    /// The condition the stage sets (and that says it was proved).
    fn condition(self) -> &'static str {
        match self {
            Stage::InstanceRunning => types::INSTANCE_RUNNING,
            Stage::SshReady => types::SSH_READY,
            Stage::CudaVerified => types::CUDA_VERIFIED,
            Stage::InputsReady => types::INPUTS_READY,
            Stage::WorkloadReady => types::WORKLOAD_READY,
            Stage::Ready => types::READY,
        }
    }
}

/// Runs the first stage whose condition does not hold yet, and the next ones
/// while they pass: the stages that pass at once cost one status write, not one each.
pub async fn run<'a>(step: &mut Step<'a>, key: &SessionKey) -> Result<Action> {
    let mut pass = Pass { login: StageLogin::default(), key, timeouts: timeouts::for_spec(&step.session.spec) };
    for stage in STAGES {
        if step.condition_is_true(stage.condition()) {
            continue;
        }
        let verdict = match stage {
            Stage::InstanceRunning => instance_running::prove(step, &mut pass).await?,
            Stage::SshReady => ssh_ready::prove(step, &mut pass).await?,
            Stage::CudaVerified => cuda_verified::prove(step, &mut pass).await?,
            Stage::InputsReady => inputs_ready::prove(step, &mut pass).await?,
            Stage::WorkloadReady => workload_ready::prove(step, &mut pass).await?,
            Stage::Ready => ready::prove(step, &mut pass).await?,
        };
        match verdict {
            Verdict::Proved => continue,
            Verdict::NotYet(wait) => return Ok(Action::requeue(wait)),
            Verdict::HostFailed { reason, message } => {
                // The machine is left: its login is not needed while it is destroyed.
                pass.login.close();
                return bad_host::replace(step, reason, message).await;
            }
            Verdict::SessionFailed { reason, message } => {
                pass.login.close();
                teardown::end(step, SessionPhase::Failed, reason, message).await?;
                return Ok(Action::await_change());
            }
        }
    }
    // After our own status write, its watch event starts the next step with the fresh object.
    Ok(Action::requeue(NEXT_STAGE))
}

//! Per-stage time limits: the session's own, else defaults per workload kind
//! (an inference image that pulls gigabytes needs far longer than a shell).

use std::time::Duration;

use crate::crd::WorkloadKind;
use crate::crd::duration::parse;
use crate::crd::session::GpuSessionSpec;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageTimeouts {
    pub instance_running: Duration,
    pub ssh_ready: Duration,
    pub cuda_verified: Duration,
    pub inputs_ready: Duration,
    pub workload_ready: Duration,
    /// After a Job exits, for its outputs to be saved.
    pub outputs: Duration,
}

const MINUTE: u64 = 60;

pub fn for_spec(spec: &GpuSessionSpec) -> StageTimeouts {
    // CUDAVerified allows a VM's cloud-init to repair its driver (TensorDock: the dpkg lock
    // alone is held "2-5 min after boot", cloud-gpu-shopper); a host whose nvidia-smi fails
    // with no setup running still fails at once.
    let defaults = match spec.workload.kind {
        WorkloadKind::Interactive => [10 * MINUTE, 5 * MINUTE, 15 * MINUTE, MINUTE],
        WorkloadKind::Job => [10 * MINUTE, 5 * MINUTE, 15 * MINUTE, 5 * MINUTE],
        WorkloadKind::Inference => [20 * MINUTE, 10 * MINUTE, 15 * MINUTE, 45 * MINUTE],
    }
    .map(Duration::from_secs);
    let given = spec.timeouts.clone().unwrap_or_default();
    let pick = |value: &Option<String>, default: Duration| value.as_deref().and_then(parse).unwrap_or(default);
    StageTimeouts {
        instance_running: pick(&given.instance_running, defaults[0]),
        ssh_ready: pick(&given.ssh_ready, defaults[1]),
        cuda_verified: pick(&given.cuda_verified, defaults[2]),
        inputs_ready: pick(&given.inputs_ready, Duration::from_secs(30 * MINUTE)),
        workload_ready: pick(&given.workload_ready, defaults[3]),
        outputs: pick(&given.outputs, Duration::from_secs(30 * MINUTE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::session::{StageTimeouts as SpecTimeouts, Workload};

    #[test]
    fn inference_waits_longer_and_the_spec_overrides() {
        let mut spec = GpuSessionSpec {
            workload: Workload { kind: WorkloadKind::Inference, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(for_spec(&spec).workload_ready, Duration::from_secs(45 * 60));
        spec.timeouts = Some(SpecTimeouts { ssh_ready: Some("90s".into()), ..Default::default() });
        assert_eq!(for_spec(&spec).ssh_ready, Duration::from_secs(90));
        assert_eq!(for_spec(&GpuSessionSpec::default()).workload_ready, Duration::from_secs(60));
    }
}

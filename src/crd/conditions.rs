//! `metav1.Condition` bookkeeping: set a condition by type, keeping its
//! `lastTransitionTime` when the status did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types written by the session controller.
pub mod types {
    pub const READY: &str = "Ready";
    pub const INSTANCE_RUNNING: &str = "InstanceRunning";
    pub const SSH_READY: &str = "SSHReady";
    pub const CUDA_VERIFIED: &str = "CUDAVerified";
    /// Inputs in place and verified on the machine (between CUDAVerified and WorkloadReady).
    pub const INPUTS_READY: &str = "InputsReady";
    pub const WORKLOAD_READY: &str = "WorkloadReady";
    /// A Job's outputs saved and confirmed in their buckets.
    pub const OUTPUTS_SAVED: &str = "OutputsSaved";
    /// An Inference session: its gateway answers in-cluster clients through the session's Service.
    pub const ENDPOINT_READY: &str = "EndpointReady";
    /// Written on a GpuOfferFilter: could every allowed provider be searched?
    pub const MARKET_SEARCHED: &str = "MarketSearched";
    /// Terminal, True once a session ended as intended (as a Job's `Complete`).
    pub const COMPLETE: &str = "Complete";
    /// Terminal, True once a session ended without a working machine or its Job failed.
    pub const FAILED: &str = "Failed";
}

/// A condition's status. `Unknown` is "not yet": a session still shopping or
/// being proven is neither ready nor failed (the kstatus convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// Desired state of one condition.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionUpdate<'a> {
    pub type_: &'a str,
    pub status: Status,
    pub reason: &'a str,
    pub message: String,
}

/// Sets `update` in `conditions`, replacing a condition of the same type.
/// The transition time moves only when the status flips.
pub fn set(conditions: &mut Vec<Condition>, update: ConditionUpdate<'_>, generation: Option<i64>, now: Time) {
    let status = update.status.as_str().to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == update.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    let condition = Condition {
        type_: update.type_.to_string(),
        status,
        reason: update.reason.to_string(),
        message: update.message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, when present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn update(status: bool, reason: &str) -> ConditionUpdate<'_> {
        ConditionUpdate { type_: types::READY, status: status.into(), reason, message: format!("because {reason}") }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conditions = Vec::new();
        set(&mut conditions, update(false, "Pending"), Some(1), at(10));
        set(&mut conditions, update(false, "StillPending"), Some(2), at(20));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].reason, "StillPending");
        assert_eq!(conditions[0].observed_generation, Some(2));

        set(&mut conditions, update(true, "Ready"), Some(2), at(30));
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, at(30));
    }
}

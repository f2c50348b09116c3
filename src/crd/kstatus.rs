//! The two conditions kstatus reads (sigs.k8s.io/cli-utils, used by Flux, kpt
//! and `kubectl`'s wait helpers) to tell whether a resource has settled, derived
//! from a session's phase and reason:
//! - `Reconciling` True while the operator is still working towards the spec:
//!   shopping, renting, proving, waiting for room or for the market, deleting;
//! - `Stalled` True when it cannot get there without someone acting: the session
//!   failed, or it waits on something only a user can fix (a missing Secret, a
//!   conflicting name, no marketplace credentials).
//!
//! Both are "abnormal-true": False once the session runs (`Ready`) or has ended.
//! kstatus then reads `Ready`, so a running session is Current; an ended one
//! (Ready False) reads as InProgress: docs/gitops.md gives Flux health checks
//! that count `Succeeded` as done.

use super::SessionPhase;
use super::conditions::Status;

pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Reasons a session waits on that only a user can fix.
const NEEDS_A_USER: &[&str] = &[
    "NoProvidersConfigured",
    "SecretConflict",
    "OfferFilterNotFound",
    "ConflictingRequirements",
    "SecretNotFound",
    "SecretKeyNotFound",
    "ConfigMapNotFound",
    "ConfigMapKeyNotFound",
    "InputNotFound",
    "InputAccessDenied",
    "InputInvalid",
    "OutputBucketNotFound",
    "OutputAccessDenied",
    "EndpointNameTaken",
    "InvalidServiceName",
    "ApiKeySecretNotFound",
    "ApiKeyMissing",
];

/// `(Reconciling, Stalled)` for a session in `phase` with `reason`, ready or not.
pub fn session(phase: Option<SessionPhase>, reason: Option<&str>, ready: bool) -> (Status, Status) {
    let needs_a_user = reason.is_some_and(|r| NEEDS_A_USER.contains(&r));
    match phase {
        Some(SessionPhase::Failed) => (Status::False, Status::True),
        Some(SessionPhase::Succeeded) => (Status::False, Status::False),
        _ if needs_a_user => (Status::False, Status::True),
        Some(SessionPhase::Running) if ready => (Status::False, Status::False),
        _ => (Status::True, Status::False),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_session_at_rest_is_neither_reconciling_nor_stalled() {
        let running = session(Some(SessionPhase::Running), Some("Ready"), true);
        assert_eq!(running, (Status::False, Status::False));
        let shopping = session(Some(SessionPhase::Pending), Some("NoMatchingOffers"), false);
        assert_eq!(shopping, (Status::True, Status::False));
        let conflict = session(Some(SessionPhase::Pending), Some("SecretConflict"), false);
        assert_eq!(conflict, (Status::False, Status::True));
        assert_eq!(
            session(Some(SessionPhase::Failed), Some("AttemptsExhausted"), false),
            (Status::False, Status::True)
        );
        assert_eq!(session(Some(SessionPhase::Succeeded), Some("Expired"), false), (Status::False, Status::False));
        // Running but not ready (a replacement being proven): still working.
        assert_eq!(
            session(Some(SessionPhase::Running), Some("EndpointNotReady"), false),
            (Status::True, Status::False)
        );
    }
}

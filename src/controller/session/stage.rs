//! The shape every readiness stage shares (shared/STYLE.md, habit 9): a stage
//! is given the `Pass` (what one reconcile's stages share: the machine's login,
//! the session's key, the stage time limits), proves one thing, sets its own
//! condition, and answers a `Verdict`. What follows a verdict is the parent's.

use std::time::Duration;

use super::login::StageLogin;
use super::secret::SessionKey;
use super::timeouts::StageTimeouts;

/// What a stage found.
#[derive(Debug)]
pub enum Verdict {
    /// Its condition holds: the next stage may run in the same reconcile.
    Proved,
    /// Not yet: look again in this long.
    NotYet(Duration),
    /// The host failed the stage: it is destroyed, avoided and replaced.
    HostFailed { reason: &'static str, message: String },
    /// The session cannot go on whatever host it gets (its workload never became ready): it ends, failed.
    SessionFailed { reason: &'static str, message: String },
}

impl Verdict {
    pub fn host_failed(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict::HostFailed { reason, message: message.into() }
    }
}

/// What the stages of one reconcile share.
pub struct Pass<'a, 'k> {
    /// One login for every stage that passes in this reconcile.
    pub login: StageLogin<'a>,
    pub key: &'k SessionKey,
    pub timeouts: StageTimeouts,
}

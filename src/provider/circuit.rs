//! Holds calls back from a marketplace that stopped answering. Without it every
//! caller waits out its own timeout (and its retries) on a marketplace that
//! hangs: a reconcile slot, a lookup or a destroy each held for a minute, until the sessions on one hung marketplace fill every reconcile slot
//! and starve the others. After `OPEN_AFTER` calls in a row time out, calls fail
//! at once for a hold period; then one call at a time is let through to see
//! whether the marketplace answers again. Any answer (even an error status)
//! closes the circuit. Refused calls were never sent, so a refused create can
//! never have landed.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Timeouts in a row, across every caller, before calls are held back: one slow
/// call is not a hung marketplace.
pub const OPEN_AFTER: u32 = 2;

#[derive(Debug, Default)]
struct State {
    /// Calls that timed out since the last answer.
    unanswered: u32,
    /// Calls are refused until then.
    held_until: Option<Instant>,
    /// A call is out to find whether the marketplace answers again.
    probing: bool,
}

/// What a caller may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Permission {
    /// Send the call.
    Send,
    /// Send it as the one probe of a held marketplace; report its outcome.
    Probe,
    /// Do not send it.
    Refuse(Refusal),
}

/// Why a call is not sent: the marketplace has not answered its last `unanswered`
/// calls; the next one is tried in `retry_in` at the earliest.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub unanswered: u32,
    pub retry_in: Duration,
}

#[derive(Debug)]
pub struct Circuit {
    hold: Duration,
    state: Mutex<State>,
}

impl Circuit {
    /// Calls are held back for `hold` after the marketplace stopped answering
    /// (the call timeout: no one waits longer on a refusal than on a call).
    pub fn new(hold: Duration) -> Self {
        Circuit { hold, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call would be refused now, without taking the probe (a caller
    /// checks this before it queues for a connection).
    pub fn would_refuse(&self, now: Instant) -> Option<Refusal> {
        let state = self.state();
        let until = state.held_until?;
        (now < until || state.probing).then(|| Refusal {
            unanswered: state.unanswered,
            retry_in: until.saturating_duration_since(now).max(Duration::from_millis(1)),
        })
    }

    pub fn permission(&self, now: Instant) -> Permission {
        if let Some(refusal) = self.would_refuse(now) {
            return Permission::Refuse(refusal);
        }
        let mut state = self.state();
        if state.held_until.is_none() {
            return Permission::Send;
        }
        state.probing = true;
        Permission::Probe
    }

    /// The marketplace answered (any HTTP status, or a refused connection: it is not hanging).
    pub fn answered(&self) {
        *self.state() = State::default();
    }

    /// A call sent with `permission` timed out.
    pub fn timed_out(&self, permission: &Permission, now: Instant) {
        let mut state = self.state();
        state.unanswered += 1;
        if *permission == Permission::Probe {
            state.probing = false;
        }
        if state.unanswered >= OPEN_AFTER {
            state.held_until = Some(now + self.hold);
        }
    }

    /// A probe ended without telling either way (its caller went away).
    pub fn probe_abandoned(&self) {
        self.state().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(20);

    #[test]
    fn one_slow_call_holds_nothing_back() {
        let circuit = Circuit::new(HOLD);
        let now = Instant::now();
        circuit.timed_out(&Permission::Send, now);
        assert_eq!(circuit.permission(now), Permission::Send);
        circuit.answered();
        circuit.timed_out(&Permission::Send, now);
        assert_eq!(circuit.permission(now), Permission::Send, "an answer in between starts the count over");
    }

    #[test]
    fn a_marketplace_that_stopped_answering_is_held_back_then_probed_once() {
        let circuit = Circuit::new(HOLD);
        let now = Instant::now();
        circuit.timed_out(&Permission::Send, now);
        circuit.timed_out(&Permission::Send, now);
        assert_eq!(circuit.permission(now), Permission::Refuse(Refusal { unanswered: 2, retry_in: HOLD }));

        let later = now + HOLD;
        assert_eq!(circuit.permission(later), Permission::Probe);
        assert!(matches!(circuit.permission(later), Permission::Refuse(_)), "one probe at a time");

        circuit.timed_out(&Permission::Probe, later);
        assert_eq!(
            circuit.permission(later),
            Permission::Refuse(Refusal { unanswered: 3, retry_in: HOLD }),
            "held again"
        );

        let again = later + HOLD;
        assert_eq!(circuit.permission(again), Permission::Probe);
        circuit.answered();
        assert_eq!(circuit.permission(again), Permission::Send, "it answers again: every call goes");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let circuit = Circuit::new(HOLD);
        let now = Instant::now();
        circuit.timed_out(&Permission::Send, now);
        circuit.timed_out(&Permission::Send, now);
        let later = now + HOLD;
        assert_eq!(circuit.permission(later), Permission::Probe);
        circuit.probe_abandoned();
        assert_eq!(circuit.permission(later), Permission::Probe);
    }
}

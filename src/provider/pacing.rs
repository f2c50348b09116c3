//! Client-side rate limiting, one pacer per marketplace client, shared by every
//! caller in the process (sessions, the inventory loop, filters, `doctor`).
//! Calls wait for their slot instead of drawing a 429: a marketplace that
//! limits per account (TensorDock) gets an account-wide budget, one that limits
//! per endpoint (Vast) a minimum interval per endpoint. A 429 anyway (the
//! limits are not all published) widens that endpoint's interval for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The limits a marketplace publishes (or, where it publishes none, a guess
/// that docs/providers.md names as one).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// At most `calls` per `period` for the whole account, with bursts of `burst`.
    pub account: Option<Budget>,
    /// At least this long between two calls to the same endpoint.
    pub per_endpoint: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub calls: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Limits {
    pub const NONE: Limits = Limits { account: None, per_endpoint: None };
}

/// How long a 429 keeps an endpoint's interval widened, and the widest it gets.
const BACKOFF_MEMORY: Duration = Duration::from_secs(60);
const MAX_ENDPOINT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    /// GCRA theoretical arrival time of the account budget.
    account_tat: Option<Instant>,
    /// Earliest next call per endpoint.
    endpoint_next: HashMap<&'static str, Instant>,
    /// Interval widened after a 429, until the instant it is forgotten.
    widened: HashMap<&'static str, (Duration, Instant)>,
}

/// The pacer's state as a user reads it (`gpu-shopper doctor`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headroom {
    /// The limits the client paces itself to.
    pub limits: Limits,
    /// Calls that may go at once now, of the account budget's burst.
    pub burst_left: Option<(u32, u32)>,
    /// Endpoints a 429 has spaced out, with their interval now.
    pub slowed: Vec<(&'static str, Duration)>,
}

pub struct Pacer {
    limits: Limits,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(limits: Limits) -> Self {
        Pacer { limits, state: Mutex::default() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Waits until a call to `endpoint` fits every limit, and books it.
    pub async fn wait(&self, endpoint: &'static str) {
        let delay = self.book(endpoint, Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Books the next slot for `endpoint` at or after `now`; returns how long to wait for it.
    fn book(&self, endpoint: &'static str, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = now;
        if let Some(budget) = self.limits.account {
            // GCRA: one emission interval per call, `burst - 1` of them may be early.
            let interval = budget.period / budget.calls.max(1);
            let tolerance = interval * budget.burst.saturating_sub(1);
            let tat = state.account_tat.unwrap_or(now).max(now);
            let earliest = tat.checked_sub(tolerance).unwrap_or(now).max(now);
            at = at.max(earliest);
            state.account_tat = Some(tat.max(at) + interval);
        }
        let widened = match state.widened.get(endpoint) {
            Some((interval, until)) if *until > now => Some(*interval),
            _ => None,
        };
        let interval = match (self.limits.per_endpoint, widened) {
            (Some(base), Some(wide)) => Some(base.max(wide)),
            (base, wide) => base.or(wide),
        };
        if let Some(interval) = interval {
            let next = state.endpoint_next.get(endpoint).copied().unwrap_or(now);
            at = at.max(next);
            state.endpoint_next.insert(endpoint, at + interval);
        }
        at.saturating_duration_since(now)
    }

    /// What is left of the budget now, and which endpoints a 429 has slowed.
    pub fn headroom(&self) -> Headroom {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let burst_left = self.limits.account.map(|budget| {
            let interval = budget.period / budget.calls.max(1);
            let ahead = state.account_tat.map(|tat| tat.saturating_duration_since(now)).unwrap_or_default();
            let used = ahead.as_secs_f64() / interval.as_secs_f64().max(f64::MIN_POSITIVE);
            let left = (f64::from(budget.burst) - used.ceil()).max(0.0);
            (left as u32, budget.burst)
        });
        let mut slowed: Vec<(&'static str, Duration)> = state
            .widened
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(endpoint, (interval, _))| (*endpoint, *interval))
            .collect();
        slowed.sort();
        Headroom { limits: self.limits, burst_left, slowed }
    }

    /// The marketplace answered 429 to `endpoint` although the pacer let the
    /// call through: its real limit is tighter than ours, so space that endpoint
    /// out (doubling, up to a cap) for a while.
    pub fn rate_limited(&self, endpoint: &'static str) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let base = self.limits.per_endpoint.unwrap_or(Duration::from_millis(250));
        let current = match state.widened.get(endpoint) {
            Some((interval, until)) if *until > now => *interval,
            _ => base,
        };
        let wider = (current * 2).min(MAX_ENDPOINT_INTERVAL);
        state.widened.insert(endpoint, (wider, now + BACKOFF_MEMORY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pacer: &Pacer, endpoint: &'static str, calls: usize, now: Instant) -> Vec<Duration> {
        (0..calls).map(|_| pacer.book(endpoint, now)).collect()
    }

    #[test]
    fn headroom_shows_the_burst_used_and_endpoints_a_429_slowed() {
        let pacer = Pacer::new(Limits {
            account: Some(Budget { calls: 60, period: Duration::from_secs(60), burst: 10 }),
            per_endpoint: None,
        });
        assert_eq!(pacer.headroom().burst_left, Some((10, 10)));
        let now = Instant::now();
        slots(&pacer, "GET /x", 3, now);
        assert_eq!(pacer.headroom().burst_left, Some((7, 10)));
        pacer.rate_limited("GET /x");
        assert_eq!(pacer.headroom().slowed, vec![("GET /x", Duration::from_millis(500))]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_budget_allows_its_burst_then_spaces_calls_evenly() {
        let pacer = Pacer::new(Limits {
            account: Some(Budget { calls: 60, period: Duration::from_secs(60), burst: 3 }),
            per_endpoint: None,
        });
        let now = Instant::now();
        let waits = slots(&pacer, "a", 6, now);
        assert_eq!(waits[..3], [Duration::ZERO; 3], "the burst goes at once");
        assert_eq!(waits[3..], [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_never_lets_more_than_calls_plus_burst_through_in_one_period() {
        let budget = Budget { calls: 90, period: Duration::from_secs(60), burst: 10 };
        let pacer = Pacer::new(Limits { account: Some(budget), per_endpoint: None });
        let now = Instant::now();
        let within_a_minute = slots(&pacer, "a", 200, now).iter().filter(|w| **w < Duration::from_secs(60)).count();
        assert!(within_a_minute <= 100, "{within_a_minute} calls in the first minute");
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_are_paced_apart_and_a_429_widens_only_that_endpoint() {
        let pacer = Pacer::new(Limits { account: None, per_endpoint: Some(Duration::from_millis(500)) });
        let now = Instant::now();
        assert_eq!(slots(&pacer, "search", 2, now), [Duration::ZERO, Duration::from_millis(500)]);
        assert_eq!(pacer.book("list", now), Duration::ZERO, "another endpoint has its own interval");
        pacer.rate_limited("list");
        assert_eq!(pacer.book("list", now), Duration::from_millis(500));
        assert_eq!(pacer.book("list", now), Duration::from_millis(1500), "widened to 1 s after the 429");
    }
}

//! Client-side rate limiting, one pacer per marketplace client, shared by every
//! caller in the process (sessions, the inventory loop, filters, `doctor`).
//! Calls wait for their slot instead of drawing a 429: a marketplace that
//! limits per account (TensorDock) gets an account-wide budget, one that limits
//! per endpoint (Vast) a minimum interval per endpoint, and an endpoint with a
//! published budget of its own (Vast's search) a window of its own.
//!
//! Waiting calls are served by urgency (`caller::Urgency`: money first), and
//! within one urgency the namespaces take turns, so a tenant with a hundred
//! calls queued delays another's destroy by one slot at most. A caller that
//! gives up leaves the queue at once; a tenant's queue per urgency is bounded
//! (money never is). A 429 anyway (the limits are not all published) halves
//! that endpoint's rate; calls that succeed raise it again step by step
//! (additive increase, multiplicative decrease).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::caller::{self, Urgency};

/// The limits a marketplace publishes (or, where it publishes none, a guess
/// that docs/providers.md names as one).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// At most `calls` per `period` for the whole account, with bursts of `burst`.
    pub account: Option<Budget>,
    /// At least this long between two calls to the same endpoint.
    pub per_endpoint: Option<Duration>,
    /// Endpoints with a budget of their own: at most `calls` in any `period`.
    pub endpoint_windows: &'static [(&'static str, Window)],
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub calls: u32,
    pub period: Duration,
    pub burst: u32,
}

/// At most `calls` in any `period` (a sliding window).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub calls: u32,
    pub period: Duration,
}

impl Limits {
    pub const NONE: Limits = Limits { account: None, per_endpoint: None, endpoint_windows: &[] };
}

/// The longest an endpoint's interval grows after 429s, and where pacing starts
/// on a marketplace that publishes none.
const MAX_ENDPOINT_INTERVAL: Duration = Duration::from_secs(10);
const FIRST_WIDENING: Duration = Duration::from_millis(250);
/// Calls a second added back to a slowed endpoint's rate per call that succeeds.
const RATE_STEP_PER_SECOND: f64 = 0.25;
/// Calls of one tenant and urgency that may wait at once; money is never refused.
pub const MAX_WAITING_PER_TENANT: usize = 64;

/// A call refused before it was sent: its tenant already has too many waiting.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueFull {
    pub waiting: usize,
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
    /// Calls waiting for a slot now.
    pub waiting: usize,
}

struct Lane {
    /// Earliest next call.
    next: Instant,
    /// The interval between calls now: the configured one, or wider after 429s.
    interval: Duration,
    /// When the calls of the last `window.period` went, for an endpoint with a window.
    window: Option<(Window, VecDeque<Instant>)>,
}

struct Waiter {
    id: u64,
    endpoint: &'static str,
    urgency: Urgency,
    tenant: Arc<str>,
}

#[derive(Default)]
struct State {
    /// GCRA theoretical arrival time of the account budget.
    account_tat: Option<Instant>,
    lanes: HashMap<&'static str, Lane>,
    waiting: Vec<Waiter>,
    /// Calls served per (urgency, tenant): the tenant served least goes first.
    served: HashMap<(Urgency, Arc<str>), u64>,
    next_id: u64,
}

pub struct Pacer {
    limits: Limits,
    state: Mutex<State>,
    changed: Notify,
}

/// What a waiting call may do now.
enum Decision {
    Go,
    WaitUntil(Instant),
    WaitTurn,
}

impl Pacer {
    pub fn new(limits: Limits) -> Self {
        Pacer { limits, state: Mutex::default(), changed: Notify::new() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a call to `endpoint` fits every limit and no more urgent call
    /// (or one of a tenant served less) waits for the same limit, and takes the slot.
    pub async fn acquire(&self, endpoint: &'static str) -> Result<(), QueueFull> {
        let caller = caller::current();
        let id = {
            let mut state = self.lock();
            if caller.urgency != Urgency::Money {
                let mine =
                    state.waiting.iter().filter(|w| w.urgency == caller.urgency && w.tenant == caller.tenant).count();
                if mine >= MAX_WAITING_PER_TENANT {
                    return Err(QueueFull { waiting: mine });
                }
            }
            // A tenant new to this urgency starts level with the least served, not ahead of everyone.
            let least =
                state.served.iter().filter(|((u, _), _)| *u == caller.urgency).map(|(_, n)| *n).min().unwrap_or(0);
            let served = state.served.entry((caller.urgency, caller.tenant.clone())).or_insert(least);
            *served = (*served).max(least);
            state.next_id += 1;
            let id = state.next_id;
            state.waiting.push(Waiter { id, endpoint, urgency: caller.urgency, tenant: caller.tenant });
            id
        };
        let mut leaving = Leaving { pacer: self, id: Some(id) };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let decision = self.decide(id, Instant::now());
            match decision {
                Decision::Go => {
                    leaving.id = None;
                    self.changed.notify_waiters();
                    return Ok(());
                }
                Decision::WaitUntil(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut changed => {}
                    }
                }
                Decision::WaitTurn => {
                    // The call ahead wakes everyone when it goes; the timeout only guards a missed wake-up.
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut changed).await;
                }
            }
        }
    }

    /// Whether waiter `id` goes now; when it does, its slot is booked and it leaves the queue.
    fn decide(&self, id: u64, now: Instant) -> Decision {
        let mut state = self.lock();
        let Some(position) = state.waiting.iter().position(|w| w.id == id) else { return Decision::Go };
        let me = &state.waiting[position];
        let account = self.limits.account.is_some();
        let rank = |w: &Waiter| {
            let served = state.served.get(&(w.urgency, w.tenant.clone())).copied().unwrap_or(0);
            (w.urgency, served, w.id)
        };
        let my_rank = rank(me);
        let ahead = state
            .waiting
            .iter()
            .filter(|w| w.id != id && (account || w.endpoint == me.endpoint))
            .any(|w| rank(w) < my_rank);
        if ahead {
            return Decision::WaitTurn;
        }
        let endpoint = me.endpoint;
        let at = self.earliest(&mut state, endpoint, now);
        if at > now {
            return Decision::WaitUntil(at);
        }
        self.book(&mut state, endpoint, now);
        let waiter = state.waiting.remove(position);
        *state.served.entry((waiter.urgency, waiter.tenant)).or_default() += 1;
        Decision::Go
    }

    /// The earliest moment a call to `endpoint` fits every limit.
    fn earliest(&self, state: &mut State, endpoint: &'static str, now: Instant) -> Instant {
        let mut at = now;
        if let Some(budget) = self.limits.account {
            let (_, tolerance) = gcra(budget);
            let tat = state.account_tat.unwrap_or(now).max(now);
            at = at.max(tat.checked_sub(tolerance).unwrap_or(now));
        }
        if let Some(lane) = self.lane(state, endpoint, now) {
            at = at.max(lane.next);
            if let Some((window, recent)) = &mut lane.window {
                while recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= window.period) {
                    recent.pop_front();
                }
                if recent.len() >= window.calls as usize
                    && let Some(oldest) = recent.front()
                {
                    at = at.max(*oldest + window.period);
                }
            }
        }
        at
    }

    fn book(&self, state: &mut State, endpoint: &'static str, at: Instant) {
        if let Some(budget) = self.limits.account {
            let (interval, _) = gcra(budget);
            let tat = state.account_tat.unwrap_or(at).max(at);
            state.account_tat = Some(tat + interval);
        }
        if let Some(lane) = self.lane(state, endpoint, at) {
            lane.next = at + lane.interval;
            if let Some((_, recent)) = &mut lane.window {
                recent.push_back(at);
            }
        }
    }

    /// The endpoint's lane, made on first use when the endpoint is paced at all.
    fn lane<'s>(&self, state: &'s mut State, endpoint: &'static str, now: Instant) -> Option<&'s mut Lane> {
        if !state.lanes.contains_key(endpoint) {
            let window = self.limits.endpoint_windows.iter().find(|(e, _)| *e == endpoint).map(|(_, w)| *w);
            if self.limits.per_endpoint.is_none() && window.is_none() {
                return None;
            }
            let interval = self.limits.per_endpoint.unwrap_or_default();
            state.lanes.insert(endpoint, Lane { next: now, interval, window: window.map(|w| (w, VecDeque::new())) });
        }
        state.lanes.get_mut(endpoint)
    }

    /// The marketplace answered 429 to `endpoint` although the pacer let the call
    /// through: its real limit is tighter than ours, so that endpoint's rate is halved.
    pub fn rate_limited(&self, endpoint: &'static str) {
        let now = Instant::now();
        let mut state = self.lock();
        let lane = state.lanes.entry(endpoint).or_insert(Lane { next: now, interval: Duration::ZERO, window: None });
        lane.interval = (lane.interval.max(FIRST_WIDENING / 2) * 2).min(MAX_ENDPOINT_INTERVAL);
        lane.next = lane.next.max(now + lane.interval);
    }

    /// A call to `endpoint` was answered: a slowed endpoint gets a little of its rate back.
    pub fn succeeded(&self, endpoint: &'static str) {
        let base = self.limits.per_endpoint.unwrap_or_default();
        let mut state = self.lock();
        let Some(lane) = state.lanes.get_mut(endpoint) else { return };
        if lane.interval <= base {
            return;
        }
        let rate = 1.0 / lane.interval.as_secs_f64() + RATE_STEP_PER_SECOND;
        let interval = Duration::from_secs_f64(1.0 / rate);
        // Below a fiftieth of a second an unpaced endpoint is unpaced again.
        lane.interval = if base.is_zero() && interval < Duration::from_millis(20) { base } else { interval.max(base) };
    }

    /// What is left of the budget now, which endpoints a 429 has slowed, and how many calls wait.
    pub fn headroom(&self) -> Headroom {
        let now = Instant::now();
        let state = self.lock();
        let burst_left = self.limits.account.map(|budget| {
            let (interval, _) = gcra(budget);
            let ahead = state.account_tat.map(|tat| tat.saturating_duration_since(now)).unwrap_or_default();
            let used = ahead.as_secs_f64() / interval.as_secs_f64().max(f64::MIN_POSITIVE);
            let left = (f64::from(budget.burst) - used.ceil()).max(0.0);
            (left as u32, budget.burst)
        });
        let base = self.limits.per_endpoint.unwrap_or_default();
        let mut slowed: Vec<(&'static str, Duration)> =
            state.lanes.iter().filter(|(_, lane)| lane.interval > base).map(|(e, lane)| (*e, lane.interval)).collect();
        slowed.sort();
        Headroom { limits: self.limits, burst_left, slowed, waiting: state.waiting.len() }
    }
}

/// GCRA emission interval and tolerance of a budget: one interval per call, `burst - 1` of them early.
fn gcra(budget: Budget) -> (Duration, Duration) {
    let interval = budget.period / budget.calls.max(1);
    (interval, interval * budget.burst.saturating_sub(1))
}

/// Takes a waiter that gave up (its future was dropped) out of the queue, and wakes the others.
struct Leaving<'a> {
    pacer: &'a Pacer,
    id: Option<u64>,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.pacer.lock().waiting.retain(|w| w.id != id);
            self.pacer.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::caller::calling;

    async fn go(pacer: &Pacer, endpoint: &'static str) -> Duration {
        let start = Instant::now();
        pacer.acquire(endpoint).await.expect("not refused");
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_budget_allows_its_burst_then_spaces_calls_evenly() {
        let pacer = Pacer::new(Limits {
            account: Some(Budget { calls: 60, period: Duration::from_secs(60), burst: 3 }),
            ..Limits::NONE
        });
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            pacer.acquire("a").await.unwrap();
            at.push(start.elapsed());
        }
        assert_eq!(at[..3], [Duration::ZERO; 3], "the burst goes at once");
        assert_eq!(at[3..], [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_are_paced_apart_and_a_429_halves_only_that_endpoints_rate() {
        let pacer = Pacer::new(Limits { per_endpoint: Some(Duration::from_millis(500)), ..Limits::NONE });
        assert_eq!(go(&pacer, "search").await, Duration::ZERO);
        assert_eq!(go(&pacer, "search").await, Duration::from_millis(500));
        assert_eq!(go(&pacer, "list").await, Duration::ZERO, "another endpoint has its own interval");
        pacer.rate_limited("list");
        assert_eq!(pacer.headroom().slowed, vec![("list", Duration::from_secs(1))]);
        assert_eq!(go(&pacer, "list").await, Duration::from_secs(1));
        assert_eq!(go(&pacer, "list").await, Duration::from_secs(1), "widened to 1 s after the 429");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowed_endpoint_narrows_again_as_calls_succeed() {
        let pacer = Pacer::new(Limits { per_endpoint: Some(Duration::from_millis(100)), ..Limits::NONE });
        go(&pacer, "get").await;
        for _ in 0..8 {
            pacer.rate_limited("get");
        }
        assert_eq!(pacer.headroom().slowed, vec![("get", Duration::from_secs(10))], "capped");
        let mut successes = 0;
        while !pacer.headroom().slowed.is_empty() {
            pacer.succeeded("get");
            successes += 1;
            assert!(successes < 100, "never narrowed back");
        }
        assert!(successes >= 30, "additive: it comes back step by step ({successes} successes)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_lets_its_calls_through_at_once_then_waits_for_the_oldest_to_age() {
        const WINDOWS: &[(&str, Window)] = &[("search", Window { calls: 10, period: Duration::from_secs(60) })];
        let pacer = Pacer::new(Limits { endpoint_windows: WINDOWS, ..Limits::NONE });
        for _ in 0..10 {
            assert_eq!(go(&pacer, "search").await, Duration::ZERO);
        }
        assert_eq!(go(&pacer, "search").await, Duration::from_secs(60));
        assert_eq!(go(&pacer, "other").await, Duration::ZERO, "only that endpoint has a window");
    }

    #[tokio::test(start_paused = true)]
    async fn money_goes_before_every_search_queued_ahead_of_it() {
        let pacer = Arc::new(Pacer::new(Limits {
            account: Some(Budget { calls: 60, period: Duration::from_secs(60), burst: 1 }),
            ..Limits::NONE
        }));
        pacer.acquire("x").await.unwrap(); // the budget is used: everyone waits from here
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (pacer, order) = (pacer.clone(), order.clone());
            tasks.push(tokio::spawn(calling(Urgency::Search, "tenant-a", async move {
                pacer.acquire("search").await.unwrap();
                order.lock().unwrap().push(format!("search {i}"));
            })));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (p, o) = (pacer.clone(), order.clone());
        let destroy = tokio::spawn(calling(Urgency::Money, "tenant-b", async move {
            p.acquire("delete").await.unwrap();
            o.lock().unwrap().push("destroy".to_string());
        }));
        destroy.await.unwrap();
        assert_eq!(order.lock().unwrap().first().map(String::as_str), Some("destroy"), "{:?}", order.lock().unwrap());
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tenants_of_one_urgency_take_turns() {
        let pacer = Arc::new(Pacer::new(Limits { per_endpoint: Some(Duration::from_secs(1)), ..Limits::NONE }));
        pacer.acquire("delete").await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (pacer, order) = (pacer.clone(), order.clone());
            tasks.push(tokio::spawn(calling(Urgency::Money, "noisy", async move {
                pacer.acquire("delete").await.unwrap();
                order.lock().unwrap().push(format!("noisy {i}"));
            })));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (p, o) = (pacer.clone(), order.clone());
        let quiet = tokio::spawn(calling(Urgency::Money, "quiet", async move {
            p.acquire("delete").await.unwrap();
            o.lock().unwrap().push("quiet".to_string());
        }));
        quiet.await.unwrap();
        let position = order.lock().unwrap().iter().position(|c| c == "quiet").unwrap();
        assert!(position <= 1, "the quiet tenant waited behind {position} of the noisy one's calls");
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_frees_its_place_and_a_full_queue_refuses() {
        let pacer = Arc::new(Pacer::new(Limits { per_endpoint: Some(Duration::from_secs(60)), ..Limits::NONE }));
        pacer.acquire("get").await.unwrap();
        let waiting: Vec<_> = (0..MAX_WAITING_PER_TENANT)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire("get").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pacer.headroom().waiting, MAX_WAITING_PER_TENANT);
        assert_eq!(pacer.acquire("get").await, Err(QueueFull { waiting: MAX_WAITING_PER_TENANT }));
        for task in &waiting {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pacer.headroom().waiting, 0, "callers that gave up left the queue");
        let money = calling(Urgency::Money, "", pacer.acquire("get"));
        assert!(tokio::time::timeout(Duration::from_secs(61), money).await.is_ok(), "served within one interval");
    }
}

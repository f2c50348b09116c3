//! What every reconcile shares: the client, configuration, metrics, the Event
//! publisher, and the per-object retry backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use rand::Rng;

use crate::config::Config;
use crate::controller::events::EventPublisher;
use crate::crd::{GpuOfferFilter, GpuSession};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::market::{BadHosts, OfferCache};
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};
use crate::provider::Provider;
use crate::provider::gate::{Gate, Gated};
use kube::runtime::reflector::Store;

/// The caches one namespace's watches keep (or the whole cluster's: `namespace` None).
#[derive(Clone)]
pub struct NamespaceStores {
    pub namespace: Option<String>,
    pub sessions: Store<GpuSession>,
    pub filters: Store<GpuOfferFilter>,
}

/// The caches the controllers' watches keep, read instead of asking the API server again.
#[derive(Clone, Default)]
pub struct Stores(pub Vec<NamespaceStores>);

impl Stores {
    fn of(&self, namespace: &str) -> Option<&NamespaceStores> {
        self.0.iter().find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
    }

    pub fn filters(&self, namespace: &str) -> Option<&Store<GpuOfferFilter>> {
        self.of(namespace).map(|s| &s.filters)
    }

    /// Every watched session, once every session cache has listed everything.
    pub fn sessions_if_ready(&self) -> Option<Vec<Arc<GpuSession>>> {
        use futures::FutureExt;
        let mut all = Vec::new();
        for stores in &self.0 {
            if stores.sessions.wait_until_ready().now_or_never().is_none_or(|r| r.is_err()) {
                return None;
            }
            all.extend(stores.sessions.state());
        }
        Some(all)
    }

    /// `namespace`'s sessions as the watch last saw them (empty before it has listed).
    pub fn sessions_in(&self, namespace: &str) -> Vec<Arc<GpuSession>> {
        let Some(stores) = self.of(namespace) else { return Vec::new() };
        stores.sessions.state().into_iter().filter(|s| s.metadata.namespace.as_deref() == Some(namespace)).collect()
    }
}

/// `name` in `namespace` from a watch's cache when it holds it, else from the API
/// server (the cache may not have seen a new object yet, or not hold that kind).
pub async fn cached_or_get<K>(
    store: Option<&Store<K>>,
    api: &kube::Api<K>,
    namespace: &str,
    name: &str,
) -> kube::Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match store.and_then(|store| store.get(&ObjectRef::new(name).within(namespace))) {
        Some(cached) => Ok(Some(cached.as_ref().clone())),
        None => api.get_opt(name).await,
    }
}

/// SSH sessions the operator keeps open at once (each holds buffers and a handshake's state).
pub const MAX_CONCURRENT_SSH: usize = 32;

/// Name of this controller in Events and field managers.
pub const CONTROLLER_NAME: &str = "gpu-shopper";

pub struct Context {
    pub client: Client,
    /// How to reach the API server, for the clients of other runtimes (the leader election's).
    pub kube_config: kube::Config,
    pub config: Arc<Config>,
    /// A client per marketplace with credentials, each behind `marketplace_gate`.
    pub providers: Vec<Arc<dyn Provider>>,
    /// Closed when this replica can no longer be sure it leads: no marketplace call passes.
    pub marketplace_gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    pub events: EventPublisher,
    /// Hosts that failed verification, avoided when shopping.
    pub bad_hosts: BadHosts,
    pub offer_cache: OfferCache,
    /// What exists at each marketplace, listed by one loop per marketplace.
    pub inventory: Inventory,
    /// Sessions the inventory wants reconciled now (their machine changed, or a pending create can be settled).
    wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<GpuSession>>,
    woken: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<GpuSession>>>>,
    /// What each session seen had cost per marketplace, for the spend counter's increments.
    spend_seen: Mutex<HashMap<String, HashMap<String, f64>>>,
    /// Phase and provider of each session seen, for the `gpu_shopper_sessions_active` gauge.
    session_phases: Mutex<HashMap<String, (String, String, f64)>>,
    /// SSH sessions open at once, across every session: memory does not grow with the
    /// number of machines being verified.
    pub ssh_permits: tokio::sync::Semaphore,
    /// The watches' caches, set once the controllers start.
    stores: std::sync::OnceLock<Stores>,
    /// When each running session's machine was last checked over SSH (Job exit, idleness).
    machine_checks: Mutex<HashMap<String, std::time::Instant>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Jobs whose exit a held SSH channel waits for (so a finished Job stops billing at once).
    pub exit_watches: ExitWatches,
    /// The machine each session was seen to own (by uid): recorded by this process at
    /// the rent, or shown by its marketplace carrying the session's label.
    pub owned_machines: OwnedMachines,
}

/// Which machine each session is known to own, so status is checked against the
/// marketplace once per machine, not before every destroy or login; and what each
/// costs, so a namespace's cap counts a rent the moment it lands, before the watch
/// shows its status.
#[derive(Default)]
pub struct OwnedMachines {
    by_session: Mutex<HashMap<String, OwnedMachine>>,
    /// Sessions whose machine this process released lately: the watch may still show it held.
    released: Mutex<HashMap<String, std::time::Instant>>,
    /// One rent at a time per capped namespace: two sessions cannot both take its last place.
    rent_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Longer than the watch takes to show a released machine's status.
const RELEASE_REMEMBERED: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Debug, PartialEq)]
pub struct OwnedMachine {
    pub provider: crate::crd::ProviderName,
    pub id: String,
    pub namespace: String,
    pub price_per_hour: f64,
}

impl OwnedMachines {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, OwnedMachine>> {
        self.by_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, uid: &str, machine: OwnedMachine) {
        self.map().insert(uid.to_string(), machine);
    }

    pub fn owns(&self, uid: &str, provider: crate::crd::ProviderName, id: &str) -> bool {
        self.map().get(uid).is_some_and(|m| m.provider == provider && m.id == id)
    }

    /// The machines of `namespace`'s sessions, by session uid.
    pub fn in_namespace(&self, namespace: &str) -> HashMap<String, OwnedMachine> {
        self.map().iter().filter(|(_, m)| m.namespace == namespace).map(|(u, m)| (u.clone(), m.clone())).collect()
    }

    /// The session's machine is gone (destroyed, or never its own).
    pub fn forget(&self, uid: &str) {
        if self.map().remove(uid).is_some() {
            let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
            released.retain(|_, at| at.elapsed() < RELEASE_REMEMBERED);
            released.insert(uid.to_string(), std::time::Instant::now());
        }
    }

    /// Whether this process released the session's machine lately (and has not rented it another).
    pub fn released_lately(&self, uid: &str) -> bool {
        !self.map().contains_key(uid)
            && self
                .released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(uid)
                .is_some_and(|at| at.elapsed() < RELEASE_REMEMBERED)
    }

    /// Waits for `namespace`'s turn to rent.
    pub async fn rent_turn(&self, namespace: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn =
            self.rent_turns.lock().unwrap_or_else(|p| p.into_inner()).entry(namespace.to_string()).or_default().clone();
        turn.lock_owned().await
    }
}

/// The Jobs being waited on, and those whose exit was seen and not yet handled.
#[derive(Clone, Default)]
pub struct ExitWatches {
    inner: Arc<Mutex<ExitState>>,
}

#[derive(Default)]
struct ExitState {
    watching: HashMap<String, tokio::task::AbortHandle>,
    exited: std::collections::HashSet<String>,
}

/// At most this many Jobs are waited on over held channels at once; the others
/// are looked at every MACHINE_CHECK_INTERVAL.
pub const MAX_EXIT_WATCHES: usize = 512;

impl ExitWatches {
    fn state(&self) -> std::sync::MutexGuard<'_, ExitState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new watch may start for `uid` (none runs, and there is room).
    pub fn may_start(&self, uid: &str) -> bool {
        let state = self.state();
        !state.watching.contains_key(uid) && state.watching.len() < MAX_EXIT_WATCHES
    }

    pub fn started(&self, uid: &str, task: tokio::task::AbortHandle) {
        self.state().watching.insert(uid.to_string(), task);
    }

    /// The watch of `uid` ended: the job exited (`true`) or the watch broke.
    pub fn ended(&self, uid: &str, exited: bool) {
        let mut state = self.state();
        state.watching.remove(uid);
        if exited {
            state.exited.insert(uid.to_string());
        }
    }

    /// Whether an exit was seen for `uid` since last asked.
    pub fn take_exited(&self, uid: &str) -> bool {
        self.state().exited.remove(uid)
    }

    /// Stops watching `uid` (the session ended or went).
    pub fn forget(&self, uid: &str) {
        let mut state = self.state();
        if let Some(task) = state.watching.remove(uid) {
            task.abort();
        }
        state.exited.remove(uid);
    }
}

impl Context {
    pub fn new(
        client: Client,
        kube_config: kube::Config,
        config: Arc<Config>,
        providers: Vec<Arc<dyn Provider>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events = EventPublisher::new(client.clone(), CONTROLLER_NAME.into(), config.instance_name.clone());
        let bad_hosts = BadHosts::new(config.bad_host_ttl);
        let inventory = Inventory::new(providers.iter().map(|p| p.name()));
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let marketplace_gate = Arc::new(Gate::default());
        let providers = providers.into_iter().map(|p| Gated::wrap(p, marketplace_gate.clone())).collect();
        Context {
            client,
            kube_config,
            config,
            providers,
            marketplace_gate,
            metrics,
            events,
            bad_hosts,
            offer_cache: OfferCache::default(),
            inventory,
            wake,
            woken: Mutex::new(Some(woken)),
            session_phases: Mutex::default(),
            spend_seen: Mutex::default(),
            machine_checks: Mutex::default(),
            stores: std::sync::OnceLock::new(),
            ssh_permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_SSH),
            failures: Mutex::default(),
            exit_watches: ExitWatches::default(),
            owned_machines: OwnedMachines::default(),
        }
    }

    /// Records a successful reconcile: the object's backoff starts over.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, controller: &'static str, obj: &K) {
        self.metrics.reconciliations.get_or_create(&ControllerLabels { controller }).inc();
        self.failures.lock().expect("backoff map poisoned").remove(&key(obj));
    }

    /// Hands the watches' caches over (once, when the controllers start).
    pub fn set_stores(&self, stores: Stores) {
        let _ = self.stores.set(stores);
    }

    /// The watches' caches, once the controllers run (tests and tools run without them).
    pub fn stores(&self) -> Option<&Stores> {
        self.stores.get()
    }

    /// Asks the session controller to reconcile `session` now.
    pub fn wake(&self, session: &GpuSession) {
        let _ = self.wake.send(ObjectRef::from_obj(session));
    }

    /// A way for a task of its own to wake `session` later.
    pub fn waker(&self, session: &GpuSession) -> impl Fn() + Send + Sync + 'static {
        let (sender, target) = (self.wake.clone(), ObjectRef::from_obj(session));
        move || {
            let _ = sender.send(target.clone());
        }
    }

    /// The stream of sessions to wake, for the session controller (taken once).
    pub fn woken_sessions(&self) -> impl futures::Stream<Item = ObjectRef<GpuSession>> + Send + 'static {
        let receiver = self.woken.lock().expect("wake receiver poisoned").take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let next = receiver.recv().await?;
            Some((next, Some(receiver)))
        })
    }

    /// How long until the machine of session `uid` may be checked over SSH again
    /// (zero: now, and the check is counted as done).
    pub fn machine_check_due(&self, uid: &str) -> Duration {
        let mut checks = self.machine_checks.lock().expect("check map poisoned");
        let interval = self.config.machine_check_interval;
        // One reading of the clock: two could straddle the interval and underflow.
        match checks.get(uid).map(|last| last.elapsed()) {
            Some(elapsed) if elapsed < interval => interval.saturating_sub(elapsed),
            _ => {
                checks.insert(uid.to_string(), std::time::Instant::now());
                Duration::ZERO
            }
        }
    }

    /// Forgets a session's machine checks (it ended or is gone).
    pub fn forget_machine_checks(&self, uid: &str) {
        self.machine_checks.lock().expect("check map poisoned").remove(uid);
    }

    /// The client of `provider`, when it is configured.
    pub fn provider(&self, provider: crate::crd::ProviderName) -> Option<&Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.name() == provider)
    }

    /// Records a session's phase, provider and cost (`None`: the session is gone) and refreshes the gauges.
    pub fn track_session(&self, uid: &str, state: Option<(String, String, f64)>) {
        let mut phases = self.session_phases.lock().expect("phase map poisoned");
        match state {
            Some(state) => phases.insert(uid.to_string(), state),
            None => phases.remove(uid),
        };
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        for (phase, provider, _) in phases.values() {
            *counts.entry((phase.clone(), provider.clone())).or_default() += 1;
        }
        self.metrics.sessions_active.clear();
        for ((phase, provider), count) in counts {
            self.metrics.sessions_active.get_or_create(&crate::metrics::PhaseLabels { phase, provider }).set(count);
        }
        self.metrics.accrued_cost.set(phases.values().map(|(_, _, cost)| cost).sum());
    }

    /// Adds what a session spent since it was last seen to the spend counter. A
    /// session first seen by this process (a restart, a new leader) only sets the
    /// baseline: its earlier spend was counted by the process that saw it, so a
    /// restart never counts it twice.
    pub fn track_spend(&self, uid: &str, namespace: &str, per_provider: HashMap<String, f64>) {
        let mut seen = self.spend_seen.lock().expect("spend map poisoned");
        let first_sight = !seen.contains_key(uid);
        let known = seen.entry(uid.to_string()).or_default();
        for (provider, cost) in per_provider {
            let before = known.insert(provider.clone(), cost);
            let delta = cost - before.unwrap_or(if first_sight { cost } else { 0.0 });
            if delta > 0.0 && delta.is_finite() {
                let labels = crate::metrics::SpendLabels { provider, session_namespace: namespace.to_string() };
                self.metrics.spend_usd.get_or_create(&labels).inc_by(delta);
            }
        }
    }

    /// Forgets a session's spend baseline once it is gone (the counter keeps what it spent).
    pub fn forget_spend(&self, uid: &str) {
        self.spend_seen.lock().expect("spend map poisoned").remove(uid);
    }

    fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> u32 {
        let mut failures = self.failures.lock().expect("backoff map poisoned");
        let count = failures.entry(key(obj)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    ObjectRef::from_obj(obj).to_string()
}

/// Backoff after `failures` consecutive failures: 1s doubling to at most 5 minutes, with ±20% jitter so that many failing objects do not retry in lockstep.
pub fn backoff_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(9));
    let capped = base.min(Duration::from_secs(300));
    capped.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Fallback retry after a write refused on a stale copy (the watch event usually comes first).
const STALE_COPY_RETRY: Duration = Duration::from_millis(500);

/// The error policy of both controllers: log, count, and retry with backoff.
pub fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + ResourceExt,
{
    let controller = if K::kind(&()) == "GpuSession" { "gpusession" } else { "gpuofferfilter" };
    if error.is_stale_copy() {
        // Our copy was older than the server's: no fault, no backoff; the fresh copy arrives by watch.
        ctx.metrics.reconcile_errors.get_or_create(&ErrorLabels { controller, error: "stale_copy" }).inc();
        tracing::debug!(object = %key(obj.as_ref()), "write refused on a stale copy; retrying on the fresh one");
        return Action::requeue(STALE_COPY_RETRY);
    }
    let failures = ctx.failed(obj.as_ref());
    let delay = backoff_delay(failures);
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabels { controller, error: error.metric_label() }).inc();
    tracing::warn!(
        object = %key(obj.as_ref()), %error, failures, retry_in_ms = delay.as_millis() as u64,
        "reconcile failed; retrying with backoff"
    );
    Action::requeue(delay)
}

/// Logs what a controller stream yields (reconcile outcomes and scheduling errors).
pub fn log_outcome<K, E: std::fmt::Display, Q: std::fmt::Display>(
    controller: &str,
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, Q>>,
) where
    K: Resource,
    K::DynamicType: Clone + std::fmt::Debug + Eq + std::hash::Hash,
{
    match result {
        Ok((object, action)) => tracing::debug!(controller, %object, ?action, "reconciled"),
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {} // already logged by error_policy
        // Woken (by the inventory) after it was deleted: nothing left to do.
        Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
            tracing::debug!(controller, %object, "woken after it was deleted")
        }
        Err(error) => tracing::warn!(controller, %error, "controller stream error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff_delay(1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200), "{first:?}");
        let fourth = backoff_delay(4);
        assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600), "{fourth:?}");
        for failures in [20, 1000, u32::MAX] {
            assert!(backoff_delay(failures) <= Duration::from_secs(360));
        }
    }
}

//! One owner of "what exists at each marketplace": the last listing of this
//! deployment's instances per marketplace, refreshed by one loop per
//! marketplace (see `controller::sweeper`) and read, never re-listed, by the
//! orphan sweeper, the stray reaper and the supervision of running sessions
//! (Karpenter's GC controller and crossplane-runtime's Observe are the models).
//! A marketplace whose listing hangs or fails degrades only its own entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;

use crate::crd::ProviderName;
use crate::provider::caller::{Urgency, with_urgency};
use crate::provider::{Instance, InstanceState, Provider, ProviderError};

/// How long an instance this process destroyed is hidden from stale listings.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// How long the last sighting of a vanished instance is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// One successful listing.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the listing call was sent: everything created before this is in it.
    pub started: Timestamp,
    pub instances: Vec<Instance>,
}

/// What the inventory knows about one recorded instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Presence {
    /// In the last listing, as it was listed.
    Listed(Box<Instance>),
    /// Absent from a listing sent after `since` (the instance should have been in it).
    Absent { listed: Timestamp },
    /// No listing sent after `since` has succeeded yet.
    Unknown,
}

#[derive(Default)]
struct Entry {
    last: Option<Snapshot>,
    last_error: Option<(Timestamp, ProviderError)>,
    /// When each instance was last listed alive (running or starting).
    last_alive: HashMap<String, Timestamp>,
    /// Instances confirmed destroyed by this process, hidden from listings sent before they went.
    tombstones: HashMap<String, Timestamp>,
    /// Where each instance is in the last listing: every reconcile asks about its own
    /// session's instances, and a scan of ten thousand per question does not scale.
    index: Index,
}

/// Positions in the last listing's instances, by instance id and by the session uid of the label.
#[derive(Default)]
struct Index {
    by_id: HashMap<String, usize>,
    by_session: HashMap<String, Vec<usize>>,
}

impl Index {
    fn of(instances: &[Instance]) -> Self {
        let mut index = Index::default();
        for (position, instance) in instances.iter().enumerate() {
            index.by_id.insert(instance.id.clone(), position);
            if let Some(label) = &instance.label {
                index.by_session.entry(label.session_uid.clone()).or_default().push(position);
            }
        }
        index
    }
}

#[derive(Default)]
struct Marketplace {
    entry: Mutex<Entry>,
    wake: Notify,
    /// Woken whenever a listing is stored.
    stored: Notify,
}

/// The shared inventory of every configured marketplace.
#[derive(Default)]
pub struct Inventory {
    marketplaces: HashMap<ProviderName, Arc<Marketplace>>,
}

impl Inventory {
    pub fn new(providers: impl IntoIterator<Item = ProviderName>) -> Self {
        Inventory { marketplaces: providers.into_iter().map(|p| (p, Arc::default())).collect() }
    }

    fn marketplace(&self, provider: ProviderName) -> Option<&Arc<Marketplace>> {
        self.marketplaces.get(&provider)
    }

    fn with_entry<T>(&self, provider: ProviderName, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let marketplace = self.marketplace(provider)?;
        let mut entry = marketplace.entry.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut entry))
    }

    /// Lists `provider`'s instances of `installations` and stores the result.
    /// A failed listing keeps the previous snapshot and records the error: it
    /// never reads as "nothing there".
    pub async fn refresh(&self, provider: &dyn Provider, installations: &[String]) -> Result<(), ProviderError> {
        let started = Timestamp::now();
        // The listing confirms destroys and shows what still bills: a money call.
        let result = with_urgency(Urgency::Money, provider.list_instances(installations)).await;
        self.store(provider.name(), started, result)
    }

    /// Stores the outcome of a listing sent at `started`.
    pub fn store(
        &self,
        provider: ProviderName,
        started: Timestamp,
        result: Result<Vec<Instance>, ProviderError>,
    ) -> Result<(), ProviderError> {
        let stored = self
            .with_entry(provider, |entry| match result {
                Ok(instances) => {
                    for instance in &instances {
                        if matches!(instance.state, InstanceState::Running | InstanceState::Provisioning) {
                            entry.last_alive.insert(instance.id.clone(), started);
                        }
                    }
                    // Kept after an instance vanishes: its loss is settled at the last time it was seen alive.
                    entry
                        .last_alive
                        .retain(|_, seen| started.duration_since(*seen).as_secs_f64() < FORGET_AFTER.as_secs_f64());
                    entry
                        .tombstones
                        .retain(|_, at| started.duration_since(*at).as_secs_f64() < TOMBSTONE_TTL.as_secs_f64());
                    entry.index = Index::of(&instances);
                    entry.last = Some(Snapshot { started, instances });
                    entry.last_error = None;
                    Ok(())
                }
                Err(error) => {
                    entry.last_error = Some((started, error.clone()));
                    Err(error)
                }
            })
            .unwrap_or(Ok(()));
        if let Some(marketplace) = self.marketplace(provider) {
            marketplace.stored.notify_waiters();
        }
        stored
    }

    /// Whether a listing of `provider` sent after `after` shows `id` gone (absent,
    /// or listed destroyed): a destroy confirmed by the one shared listing instead of
    /// a lookup per instance. Asks for a listing and waits for it at most `wait`;
    /// `None` when none came (the caller looks the instance up itself).
    pub async fn gone_in_a_listing_after(
        &self,
        provider: ProviderName,
        id: &str,
        after: Timestamp,
        wait: Duration,
    ) -> Option<bool> {
        let marketplace = self.marketplace(provider)?.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let stored = marketplace.stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let answer = self.with_entry(provider, |entry| {
                let snapshot = entry.last.as_ref().filter(|s| s.started > after)?;
                let listed = entry.index.by_id.get(id).and_then(|position| snapshot.instances.get(*position));
                Some(listed.is_none_or(|instance| instance.state == InstanceState::Destroyed))
            });
            if let Some(Some(gone)) = answer {
                return Some(gone);
            }
            self.request_refresh(provider);
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                return None;
            }
        }
    }

    /// Asks the refresh loop of `provider` to list now rather than at its next interval.
    pub fn request_refresh(&self, provider: ProviderName) {
        if let Some(marketplace) = self.marketplace(provider) {
            marketplace.wake.notify_one();
        }
    }

    /// Waits until a refresh of `provider` is asked for.
    pub async fn refresh_requested(&self, provider: ProviderName) {
        match self.marketplace(provider) {
            Some(marketplace) => marketplace.wake.notified().await,
            None => futures::future::pending().await,
        }
    }

    /// The last successful listing of `provider`, without instances this process destroyed.
    pub fn snapshot(&self, provider: ProviderName) -> Option<Snapshot> {
        self.with_entry(provider, |entry| {
            let started = entry.last.as_ref()?.started;
            Some(Snapshot { started, instances: visible(entry).cloned().collect() })
        })
        .flatten()
    }

    /// Whether a listing of `provider` sent after `time` has succeeded.
    pub fn listed_since(&self, provider: ProviderName, time: Timestamp) -> bool {
        self.with_entry(provider, |entry| entry.last.as_ref().is_some_and(|s| s.started > time)).unwrap_or(false)
    }

    /// The last listing error of `provider`, if its last listing failed.
    pub fn last_error(&self, provider: ProviderName) -> Option<ProviderError> {
        self.with_entry(provider, |entry| entry.last_error.as_ref().map(|(_, e)| e.clone())).flatten()
    }

    /// Every listed instance, on any marketplace, labelled for the session `uid` and not destroyed.
    /// Searched in place: every reconcile asks, so no listing is copied for it.
    pub fn labelled_for(&self, uid: &str) -> Vec<Instance> {
        let mut found = Vec::new();
        for provider in self.marketplaces.keys() {
            self.with_entry(*provider, |entry| {
                let positions = entry.index.by_session.get(uid).map(Vec::as_slice).unwrap_or_default();
                found.extend(
                    positions
                        .iter()
                        .filter_map(|position| visible_at(entry, *position))
                        .filter(|i| i.state != InstanceState::Destroyed)
                        .cloned(),
                );
            });
        }
        found
    }

    /// What the last listing says about instance `id`, which exists since `since`.
    pub fn presence(&self, provider: ProviderName, id: &str, since: Timestamp) -> Presence {
        self.with_entry(provider, |entry| {
            let Some(started) = entry.last.as_ref().map(|s| s.started) else { return Presence::Unknown };
            match entry.index.by_id.get(id).and_then(|position| visible_at(entry, *position)) {
                Some(instance) => Presence::Listed(Box::new(instance.clone())),
                None if started > since => Presence::Absent { listed: started },
                None => Presence::Unknown,
            }
        })
        .unwrap_or(Presence::Unknown)
    }

    /// When instance `id` was last listed alive, as far as this process knows.
    pub fn last_alive(&self, provider: ProviderName, id: &str) -> Option<Timestamp> {
        self.with_entry(provider, |entry| entry.last_alive.get(id).copied()).flatten()
    }

    /// Records that `id` is confirmed destroyed, so listings sent before that do not bring it back.
    pub fn mark_destroyed(&self, provider: ProviderName, id: &str) {
        self.with_entry(provider, |entry| {
            entry.tombstones.insert(id.to_string(), Timestamp::now());
            entry.last_alive.remove(id);
        });
    }
}

/// The last listing's instances, without those this process destroyed after it was sent.
fn visible(entry: &Entry) -> impl Iterator<Item = &Instance> {
    entry.last.iter().flat_map(move |snapshot| {
        snapshot.instances.iter().filter(move |instance| not_destroyed_since(entry, snapshot, instance))
    })
}

/// The last listing's instance at `position`, unless this process destroyed it after the listing was sent.
fn visible_at(entry: &Entry, position: usize) -> Option<&Instance> {
    let snapshot = entry.last.as_ref()?;
    snapshot.instances.get(position).filter(|instance| not_destroyed_since(entry, snapshot, instance))
}

fn not_destroyed_since(entry: &Entry, snapshot: &Snapshot, instance: &Instance) -> bool {
    entry.tombstones.get(&instance.id).is_none_or(|destroyed| *destroyed < snapshot.started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::InstanceLabel;

    fn instance(id: &str, uid: &str, state: InstanceState) -> Instance {
        Instance {
            provider: ProviderName::Vastai,
            id: id.into(),
            label: Some(InstanceLabel::new("d", uid)),
            state,
            ssh: None,
            public_ip: None,
            price_per_hour: Some(1.0),
            gpu_model: None,
            endpoints: Vec::new(),
            ports_open_on_public_ip: false,
        }
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_failed_listing_is_an_error_and_keeps_what_was_known() {
        let inventory = Inventory::new([ProviderName::Vastai]);
        inventory.store(ProviderName::Vastai, ts(0), Ok(vec![instance("1", "a", InstanceState::Running)])).unwrap();
        let error = ProviderError::AuthFailed { provider: ProviderName::Vastai, status: 401 };
        assert!(inventory.store(ProviderName::Vastai, ts(10), Err(error.clone())).is_err());
        assert_eq!(inventory.last_error(ProviderName::Vastai), Some(error));
        assert_eq!(inventory.labelled_for("a").len(), 1, "the last good listing still stands");
        assert!(!inventory.listed_since(ProviderName::Vastai, ts(5)), "a failed listing proves nothing");
    }

    #[test]
    fn an_instance_is_absent_only_from_a_listing_sent_after_it_existed() {
        let inventory = Inventory::new([ProviderName::Vastai]);
        assert_eq!(inventory.presence(ProviderName::Vastai, "1", ts(0)), Presence::Unknown);
        inventory.store(ProviderName::Vastai, ts(10), Ok(vec![])).unwrap();
        assert_eq!(inventory.presence(ProviderName::Vastai, "1", ts(20)), Presence::Unknown);
        assert_eq!(inventory.presence(ProviderName::Vastai, "1", ts(5)), Presence::Absent { listed: ts(10) });
    }

    #[test]
    fn a_destroyed_instance_does_not_come_back_from_an_older_listing() {
        let inventory = Inventory::new([ProviderName::Vastai]);
        let stale = Timestamp::now() - jiff::SignedDuration::from_secs(5);
        inventory.store(ProviderName::Vastai, stale, Ok(vec![instance("1", "a", InstanceState::Running)])).unwrap();
        assert_eq!(inventory.last_alive(ProviderName::Vastai, "1"), Some(stale));
        inventory.mark_destroyed(ProviderName::Vastai, "1");
        assert!(inventory.labelled_for("a").is_empty());
        assert_eq!(inventory.last_alive(ProviderName::Vastai, "1"), None);
    }

    #[test]
    fn each_listing_replaces_what_is_found_by_id_and_by_session() {
        let inventory = Inventory::new([ProviderName::Vastai]);
        let first = vec![
            instance("1", "a", InstanceState::Running),
            instance("2", "b", InstanceState::Provisioning),
            instance("3", "a", InstanceState::Destroyed),
        ];
        inventory.store(ProviderName::Vastai, ts(0), Ok(first)).unwrap();
        let ids = |uid: &str| inventory.labelled_for(uid).into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids("a"), ["1"], "a destroyed instance is not the session's");
        assert_eq!(ids("b"), ["2"]);
        let Presence::Listed(found) = inventory.presence(ProviderName::Vastai, "2", ts(-1)) else { panic!() };
        assert_eq!((found.id.as_str(), found.state), ("2", InstanceState::Provisioning));

        // The next listing: 1 is gone, 2 runs, 4 is new; nothing of the old positions lingers.
        let second = vec![instance("4", "a", InstanceState::Running), instance("2", "b", InstanceState::Running)];
        inventory.store(ProviderName::Vastai, ts(10), Ok(second)).unwrap();
        assert_eq!(ids("a"), ["4"]);
        assert_eq!(inventory.presence(ProviderName::Vastai, "1", ts(5)), Presence::Absent { listed: ts(10) });
        let Presence::Listed(found) = inventory.presence(ProviderName::Vastai, "2", ts(5)) else { panic!() };
        assert_eq!(found.state, InstanceState::Running);
    }

    #[test]
    fn unknown_marketplaces_are_never_listed_since_anything() {
        let inventory = Inventory::new([]);
        assert!(!inventory.listed_since(ProviderName::Runpod, ts(0)));
        assert!(inventory.store(ProviderName::Runpod, ts(1), Ok(vec![])).is_ok());
        assert_eq!(inventory.presence(ProviderName::Runpod, "x", ts(0)), Presence::Unknown);
    }
}

//! One loop per marketplace: list this deployment's instances into the shared
//! inventory (every interval, or sooner when a session asks), then destroy
//! what nobody should be paying for:
//! - orphans: labelled with this deployment, owned by no live GpuSession,
//!   after `ORPHAN_GRACE_PERIOD`;
//! - strays: labelled with a live session that records another instance (or
//!   has ended), after `STRAY_GRACE_PERIOD` (a create that landed late, a
//!   lookup that failed).
//!
//! Instances of other deployments are never touched: the listing is already
//! filtered by our deployment id. When the sessions cannot be listed, nothing
//! is destroyed. A marketplace that hangs delays only its own loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::context::{CONTROLLER_NAME, Context};
use crate::controller::events::{Event as RecordedEvent, EventType};
use crate::crd::conditions::{self, types};
use crate::crd::session::after_stored;
use crate::crd::{GpuSession, GpuSessionStatus, ProviderName, SessionPhase};
use crate::inventory::{Presence, Snapshot};
use crate::metrics::ProviderLabels;
use crate::provider::types::namespace_tag;
use crate::provider::{Instance, InstanceLabel, InstanceState, Provider, destroy_confirmed};

/// Since when each unowned instance (by id) has been seen as one.
type Seen = HashMap<String, Instant>;

/// The shortest time between two listings of one marketplace, however often a refresh is asked for.
const MIN_GAP: Duration = Duration::from_millis(500);

/// Runs one refresh-and-sweep loop per marketplace until the task is aborted.
pub async fn run(ctx: Arc<Context>) {
    let loops = ctx.providers.clone().into_iter().map(|provider| run_marketplace(ctx.clone(), provider));
    futures::future::join_all(loops).await;
}

async fn run_marketplace(ctx: Arc<Context>, provider: Arc<dyn Provider>) {
    let mut seen = Seen::new();
    loop {
        let name = provider.name();
        let started = Instant::now();
        match ctx.inventory.refresh(provider.as_ref(), &ctx.config.installations()).await {
            Ok(()) => {
                let listed = started.elapsed();
                sweep(&ctx, provider.as_ref(), &mut seen).await;
                tracing::debug!(provider = %name, ?listed, swept = ?(started.elapsed() - listed), "listed and swept");
            }
            // Kept as an error: a listing that failed is never "nothing there".
            Err(error) => {
                tracing::warn!(provider = %name, %error, "could not list instances; nothing is swept on it until it answers")
            }
        }
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.orphan_sweep_interval.saturating_sub(MIN_GAP)) => {}
            _ = ctx.inventory.refresh_requested(name) => {}
        }
    }
}

/// Why an instance should not exist.
#[derive(Debug, PartialEq)]
enum Unowned {
    Orphan,
    /// Labelled for a live session that does not hold it.
    Stray,
}

/// Whose a labelled instance is, as far as this installation can tell.
#[derive(Debug, PartialEq)]
enum Ownership {
    Ours,
    /// Another installation's: never touched.
    Foreign,
    /// Labelled the old way (deployment id, no cluster) for no session here: it may be
    /// another cluster's that uses the same deployment id, so it is never destroyed.
    Undecidable,
}

fn ownership(
    label: &InstanceLabel,
    installation: &str,
    deployment_id: &str,
    sessions: &HashMap<String, &GpuSession>,
) -> Ownership {
    if label.installation == installation {
        Ownership::Ours
    } else if label.installation != deployment_id {
        Ownership::Foreign
    } else if sessions.contains_key(&label.session_uid) {
        // Session UIDs are unique: an old label of a session here is this installation's.
        Ownership::Ours
    } else {
        Ownership::Undecidable
    }
}

/// Judges one listed instance against the live sessions (by uid).
fn judge(instance: &Instance, provider: ProviderName, sessions: &HashMap<String, &GpuSession>) -> Option<Unowned> {
    if instance.state == InstanceState::Destroyed {
        return None;
    }
    let label = instance.label.as_ref()?;
    let Some(session) = sessions.get(&label.session_uid) else { return Some(Unowned::Orphan) };
    let none = GpuSessionStatus::default();
    let status = session.status.as_ref().unwrap_or(&none);
    let recorded = status.provider == Some(provider) && status.instance_id.as_deref() == Some(instance.id.as_str());
    let ended = matches!(status.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed));
    match (recorded, status.instance_id.is_some()) {
        // Its own machine: the session's teardown owns it, unless it says it is released.
        (true, _) => status.released_at.is_some().then_some(Unowned::Stray),
        // The session holds another machine, or has ended: this one is extra.
        (false, true) => Some(Unowned::Stray),
        (false, false) if ended => Some(Unowned::Stray),
        // A session still shopping adopts what carries its label.
        (false, false) => None,
    }
}

/// One pass over `provider`'s last listing.
pub async fn sweep(ctx: &Context, provider: &dyn Provider, seen: &mut Seen) {
    let name = provider.name();
    let Some(snapshot) = ctx.inventory.snapshot(name) else { return };
    // The session controllers' caches once they have listed everything; the API server before that.
    let sessions: Vec<Arc<GpuSession>> = match ctx.stores().and_then(|stores| stores.sessions_if_ready()) {
        Some(sessions) => sessions,
        None => match list_watched_sessions(ctx).await {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(%error, "sweep skipped: cannot list GpuSessions, so nothing may be destroyed");
                return;
            }
        },
    };
    let by_uid: HashMap<String, &GpuSession> = sessions.iter().filter_map(|s| Some((s.uid()?, s.as_ref()))).collect();
    let installation = ctx.config.installation();
    let mut still_unowned = HashSet::new();
    let mut unwatched: i64 = 0;
    for instance in &snapshot.instances {
        let Some(label) = instance.label.clone() else { continue };
        match ownership(&label, &installation, &ctx.config.deployment_id, &by_uid) {
            Ownership::Ours => {}
            Ownership::Foreign => continue,
            Ownership::Undecidable => {
                if seen.insert(instance.id.clone(), Instant::now()).is_none() {
                    tracing::warn!(provider = %name, instance = %instance.id, %label, "instance labelled without a cluster id, of no session in this cluster: possibly another cluster's, so not destroyed; destroy it by hand if it is not (docs/upgrading.md)");
                }
                still_unowned.insert(instance.id.clone());
                continue;
            }
        }
        let Some(kind) = judge(instance, name, &by_uid) else { continue };
        still_unowned.insert(instance.id.clone());
        // "No session owns it" is known only where its session's namespace is watched.
        if kind == Unowned::Orphan && !namespace_watched(&label, &ctx.config.watch_namespaces) {
            unwatched += 1;
            if seen.insert(instance.id.clone(), Instant::now()).is_none() {
                tracing::warn!(provider = %name, instance = %instance.id, %label, "instance labelled for a session in a namespace this operator does not watch: it bills, and is not destroyed");
                unwatched_event(ctx, name, &instance.id, &label).await;
            }
            continue;
        }
        let first = *seen.entry(instance.id.clone()).or_insert_with(|| {
            if kind == Unowned::Orphan {
                ctx.metrics.orphans_detected.get_or_create(&ProviderLabels { provider: name.as_str() }).inc();
            }
            tracing::warn!(provider = %name, instance = %instance.id, %label, ?kind, "unowned instance detected");
            Instant::now()
        });
        let grace = match kind {
            Unowned::Orphan => ctx.config.orphan_grace_period,
            Unowned::Stray => ctx.config.stray_grace_period,
        };
        if first.elapsed() < grace {
            continue;
        }
        match destroy_confirmed(provider, &instance.id).await {
            Ok(_) => {
                ctx.inventory.mark_destroyed(name, &instance.id);
                seen.remove(&instance.id);
                still_unowned.remove(&instance.id);
                tracing::warn!(provider = %name, instance = %instance.id, ?kind, "unowned instance destroyed");
                match (kind, by_uid.get(&label.session_uid)) {
                    (Unowned::Stray, Some(session)) => stray_event(ctx, session, name, &instance.id).await,
                    _ => orphan_event(ctx, name, &instance.id, &label).await,
                }
            }
            Err(error) => {
                ctx.metrics.destroy_failures.get_or_create(&ProviderLabels { provider: name.as_str() }).inc();
                tracing::warn!(provider = %name, instance = %instance.id, %error, "could not destroy an unowned instance; will retry");
            }
        }
    }
    seen.retain(|id, _| still_unowned.contains(id));
    ctx.metrics.unwatched_instances.get_or_create(&ProviderLabels { provider: name.as_str() }).set(unwatched);
    wake_affected(ctx, name, &snapshot, &sessions);
}

/// Every session in the watched namespaces, from the API server.
async fn list_watched_sessions(ctx: &Context) -> kube::Result<Vec<Arc<GpuSession>>> {
    let mut all = Vec::new();
    for api in super::scope::watched_apis::<GpuSession>(&ctx.client, &ctx.config.watch_namespaces) {
        all.extend(api.list(&ListParams::default()).await?.items.into_iter().map(Arc::new));
    }
    Ok(all)
}

/// Wakes every session this listing says something new about: its machine is
/// missing or no longer alive, its starting machine now runs, or a create it is
/// waiting on can now be settled.
fn wake_affected(ctx: &Context, provider: ProviderName, snapshot: &Snapshot, sessions: &[Arc<GpuSession>]) {
    for session in sessions {
        let Some(status) = session.status.as_ref() else { continue };
        let settles = status
            .pending_creates
            .iter()
            .any(|intent| intent.provider == provider && snapshot.started > intent.settled_by_listings_after());
        let machine_changed = status.provider == Some(provider)
            && status.released_at.is_none()
            && status.instance_id.as_ref().is_some_and(|id| {
                let since = status.rented_at.as_ref().map(after_stored).unwrap_or(snapshot.started);
                match ctx.inventory.presence(provider, id, since) {
                    Presence::Listed(instance) => match instance.state {
                        InstanceState::Stopped | InstanceState::Destroyed => true,
                        // A starting session waits for this listing to show its machine running.
                        InstanceState::Running => !conditions::is_true(&status.conditions, types::INSTANCE_RUNNING),
                        _ => false,
                    },
                    Presence::Absent { .. } => true,
                    Presence::Unknown => false,
                }
            });
        if settles || machine_changed {
            ctx.wake(session);
        }
    }
}

async fn stray_event(ctx: &Context, session: &GpuSession, provider: ProviderName, instance_id: &str) {
    let event = RecordedEvent {
        type_: EventType::Warning,
        reason: "StrayDestroyed".into(),
        note: Some(format!(
            "instance {instance_id} on {provider} carried this session's label but is not its machine (a create that landed late, or one left after the session ended); destroyed"
        )),
        action: "Sweep".into(),
        secondary: None,
    };
    if let Err(error) = ctx.events.publish(&event, &session.object_ref(&())).await {
        tracing::warn!(%error, "could not record the stray event");
    }
}

/// Whether the namespace of `label`'s session is watched by this operator. Labels
/// made before namespaces were folded in say nothing: they count as watched only
/// when every namespace is.
fn namespace_watched(label: &InstanceLabel, watch_namespaces: &[String]) -> bool {
    if watch_namespaces.is_empty() {
        return true;
    }
    label.namespace_tag.as_ref().is_some_and(|tag| watch_namespaces.iter().any(|ns| namespace_tag(ns) == *tag))
}

/// An Event about the destroyed orphan, on the (gone) GpuSession it belonged to.
async fn orphan_event(ctx: &Context, provider: ProviderName, instance_id: &str, label: &InstanceLabel) {
    let message = format!(
        "instance {instance_id} on {provider} was labelled for this deployment but no live GpuSession owned it; destroyed"
    );
    sweep_event(ctx, "OrphanDestroyed", message, label).await;
}

/// An Event about a machine left alone because its session's namespace is not watched.
async fn unwatched_event(ctx: &Context, provider: ProviderName, instance_id: &str, label: &InstanceLabel) {
    let message = format!(
        "instance {instance_id} on {provider} is labelled for a session in a namespace this operator does not watch (taken out of watchNamespaces?); it still bills and is not destroyed: watch that namespace again and delete the session there, or destroy the instance in the marketplace's console"
    );
    sweep_event(ctx, "UnwatchedInstance", message, label).await;
}

/// A Warning Event from the sweeper, on the GpuSession `label` names (which may be gone or unwatched).
async fn sweep_event(ctx: &Context, reason: &str, message: String, label: &InstanceLabel) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    let namespace = ctx.config.watch_namespaces.first().cloned().unwrap_or_else(|| "default".into());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some("gpu-shopper-sweep-".into()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("gpushopper.dev/v1alpha1".into()),
            kind: Some("GpuSession".into()),
            namespace: Some(namespace.clone()),
            name: Some(label.to_string()),
            uid: Some(label.session_uid.clone()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some("Warning".into()),
        source: Some(EventSource { component: Some(CONTROLLER_NAME.into()), host: None }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, reason, "could not record the sweeper's event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn an_orphan_is_destroyed_only_where_its_namespace_is_known_to_be_watched() {
        let tagged = InstanceLabel::for_session("d-3f9a0c12", "uid", "team-b");
        let old = InstanceLabel::new("d-3f9a0c12", "uid");
        let all: Vec<String> = vec![];
        let some = vec!["team-a".to_string()];
        assert!(namespace_watched(&tagged, &all) && namespace_watched(&old, &all), "watching every namespace");
        assert!(!namespace_watched(&tagged, &some), "team-b left the watch");
        assert!(!namespace_watched(&old, &some), "an old label cannot say where its session is");
        assert!(namespace_watched(&tagged, &["team-b".to_string(), "team-a".to_string()]));
    }

    fn instance(id: &str, uid: &str) -> Instance {
        Instance {
            provider: ProviderName::Vastai,
            id: id.into(),
            label: Some(InstanceLabel::new("d", uid)),
            state: InstanceState::Running,
            ssh: None,
            public_ip: None,
            price_per_hour: None,
            gpu_model: None,
            endpoints: Vec::new(),
            ports_open_on_public_ip: false,
        }
    }

    fn session(status: GpuSessionStatus) -> GpuSession {
        let mut session = GpuSession::new("s", Default::default());
        session.status = Some(status);
        session
    }

    #[test]
    fn old_labels_are_ours_only_for_sessions_here_and_other_installations_never() {
        let here = session(GpuSessionStatus::default());
        let sessions: HashMap<String, &GpuSession> = [("uid-here".to_string(), &here)].into();
        let owner = |installation: &str, uid: &str| {
            ownership(&InstanceLabel::new(installation, uid), "team-a-3f9a0c12", "team-a", &sessions)
        };
        assert_eq!(owner("team-a-3f9a0c12", "uid-gone"), Ownership::Ours, "today's label: an orphan to sweep");
        assert_eq!(owner("team-a", "uid-here"), Ownership::Ours, "an old label of a session here");
        assert_eq!(owner("team-a", "uid-gone"), Ownership::Undecidable, "an old label of no session here");
        assert_eq!(owner("team-a-0ther0ne", "uid-gone"), Ownership::Foreign, "same deployment id, other cluster");
        assert_eq!(owner("team-b", "uid-here"), Ownership::Foreign);
    }

    #[test]
    fn instances_are_judged_by_who_holds_them() {
        let holding_1 = session(GpuSessionStatus {
            provider: Some(ProviderName::Vastai),
            instance_id: Some("1".into()),
            ..Default::default()
        });
        let shopping = session(GpuSessionStatus::default());
        let ended = session(GpuSessionStatus { phase: Some(SessionPhase::Succeeded), ..Default::default() });
        let released = session(GpuSessionStatus {
            provider: Some(ProviderName::Vastai),
            instance_id: Some("1".into()),
            released_at: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        });
        let judge_with = |s: &GpuSession, id: &str| {
            let sessions = HashMap::from([("u".to_string(), s)]);
            judge(&instance(id, "u"), ProviderName::Vastai, &sessions)
        };
        assert_eq!(judge_with(&holding_1, "1"), None);
        assert_eq!(judge_with(&holding_1, "2"), Some(Unowned::Stray), "a second machine for one session");
        assert_eq!(judge_with(&shopping, "2"), None, "a session still shopping adopts it");
        assert_eq!(judge_with(&ended, "2"), Some(Unowned::Stray), "an ended session keeps nothing");
        assert_eq!(judge_with(&released, "1"), Some(Unowned::Stray), "released means gone");
        assert_eq!(judge(&instance("3", "gone"), ProviderName::Vastai, &HashMap::new()), Some(Unowned::Orphan));
    }
}

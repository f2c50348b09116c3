//! Publishes Kubernetes Events (events.k8s.io/v1) on the objects the operator
//! reconciles, folding a repeat of the same reason on the same object into the
//! first Event's series count, as kube's `Recorder` does.
//!
//! Why not kube's `Recorder`: it keeps a full copy of every Event for six
//! minutes and prunes only when the next Event is published, so after a ramp
//! of 10 000 sessions it held three Events per session (~1.5 KB each) for as
//! long as nothing new happened. A repeat needs only the first Event's name and
//! count, so that is all this keeps, and it prunes on a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};
use tokio::sync::Mutex;

/// How long a published Event can still gain a repeat (kube's `Recorder` uses the same).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What a repeat needs of the Event it folds into.
struct Published {
    name: String,
    count: i32,
    last: Instant,
}

pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    /// Keyed by the regarding object's uid (or namespace/name), type, action, reason and related object.
    published: Mutex<HashMap<String, Published>>,
}

impl EventPublisher {
    pub fn new(client: Client, controller: String, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| controller.clone());
        EventPublisher { client, controller, instance, published: Mutex::default() }
    }

    /// Creates the Event, or, when the same reason was published on the same object
    /// within the window, raises that Event's series count instead.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = series_key(event, regarding);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let now = Instant::now();
        let repeat = repeat_of(&mut *self.published.lock().await, &key, now);
        if let Some((name, count)) = repeat {
            let series = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) }
            });
            events.patch(&name, &PatchParams::default(), &Patch::Merge(&series)).await?;
            return Ok(());
        }
        let created = events.create(&PostParams::default(), &self.new_event(event, regarding)).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.published.lock().await.insert(key, Published { name, count: 1, last: now });
        Ok(())
    }

    /// Forgets the series older than the window; called on a clock so that memory
    /// is returned even when nothing new is published.
    pub async fn prune(&self) {
        forget_stale(&mut *self.published.lock().await, Instant::now());
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let base = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_name(event.type_).into()),
            ..K8sEvent::default()
        }
    }
}

/// The Event a repeat at `now` folds into (its name and new count), counted; `None`
/// when there is none within the window. Stale series are skipped here and dropped
/// by `forget_stale`: no sweep over every series for each Event.
fn repeat_of(published: &mut HashMap<String, Published>, key: &str, now: Instant) -> Option<(String, i32)> {
    let series = published.get_mut(key).filter(|p| now.duration_since(p.last) < SERIES_WINDOW)?;
    series.count += 1;
    series.last = now;
    Some((series.name.clone(), series.count))
}

fn forget_stale(published: &mut HashMap<String, Published>, now: Instant) {
    published.retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
    published.shrink_to_fit();
}

fn type_name(type_: EventType) -> &'static str {
    match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// The object's uid rather than its whole reference: the reference carries a
/// resourceVersion that every status write changes, which would keep a repeat
/// from ever folding.
fn series_key(event: &Event, regarding: &ObjectReference) -> String {
    let object = |r: &ObjectReference| match &r.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}/{}",
            r.kind.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or(""),
            r.name.as_deref().unwrap_or("")
        ),
    };
    let related = event.secondary.as_ref().map(object).unwrap_or_default();
    format!("{}|{}|{}|{}|{related}", object(regarding), type_name(event.type_), event.action, event.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(uid: &str, resource_version: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("GpuSession".into()),
            namespace: Some("team".into()),
            name: Some("train".into()),
            uid: Some(uid.into()),
            resource_version: Some(resource_version.into()),
            ..ObjectReference::default()
        }
    }

    fn warning(reason: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: None,
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[test]
    fn a_repeat_on_the_same_object_folds_even_after_a_status_write() {
        assert_eq!(
            series_key(&warning("Rekeyed"), &session("u1", "10")),
            series_key(&warning("Rekeyed"), &session("u1", "11"))
        );
    }

    #[test]
    fn a_repeat_within_the_window_counts_and_an_old_series_starts_again() {
        let start = Instant::now();
        let mut published = HashMap::from([("k".to_string(), Published { name: "e1".into(), count: 1, last: start })]);
        assert_eq!(repeat_of(&mut published, "k", start + Duration::from_secs(60)), Some(("e1".into(), 2)));
        assert_eq!(repeat_of(&mut published, "k", start + Duration::from_secs(120)), Some(("e1".into(), 3)));
        assert_eq!(repeat_of(&mut published, "other", start), None);
        // Six minutes after its last repeat a series is over: the next is a new Event, and it is forgotten.
        let later = start + Duration::from_secs(120) + SERIES_WINDOW;
        assert_eq!(repeat_of(&mut published, "k", later), None);
        forget_stale(&mut published, later);
        assert!(published.is_empty());
    }

    #[test]
    fn another_reason_or_another_object_is_a_new_event() {
        let first = series_key(&warning("Rekeyed"), &session("u1", "10"));
        assert_ne!(first, series_key(&warning("ProviderUnavailable"), &session("u1", "10")));
        assert_ne!(first, series_key(&warning("Rekeyed"), &session("u2", "10")));
    }
}

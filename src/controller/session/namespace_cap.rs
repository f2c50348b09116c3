//! A namespace's spending cap, set by annotations on its Namespace object (under
//! Kubernetes' default roles a tenant cannot edit its own Namespace, so it cannot
//! lift its cap):
//! - `gpushopper.dev/max-concurrent-sessions`: sessions holding a machine at once;
//! - `gpushopper.dev/max-usd-per-day`, `gpushopper.dev/max-usd-per-month`: what the
//!   namespace's machines may cost together, as a rate (their hourly prices x 24, or
//!   x 24 x 31). Held at every moment, the rate bounds the spend of any day or month.
//!
//! A rent that would pass a cap is not sent: the session waits, Pending with reason
//! `NamespaceCapReached`, and rents once others end. Rents in a capped namespace take
//! turns, so two sessions cannot both take its last place.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt};
use tokio::sync::OwnedMutexGuard;

use super::step::Step;
use crate::crd::SessionPhase;
use crate::error::Result;
use crate::metrics::NamespaceLabels;
use crate::provider::Offer;

pub const MAX_CONCURRENT_SESSIONS: &str = "gpushopper.dev/max-concurrent-sessions";
pub const MAX_USD_PER_DAY: &str = "gpushopper.dev/max-usd-per-day";
pub const MAX_USD_PER_MONTH: &str = "gpushopper.dev/max-usd-per-month";

/// The reason a session waits for its namespace's cap.
pub const CAP_REACHED: &str = "NamespaceCapReached";

/// A namespace's cap, as its annotations say.
#[derive(Debug, Default, PartialEq)]
pub struct Cap {
    pub max_sessions: Option<u32>,
    /// USD per day the namespace's machines may cost together (the stricter of the day and month caps).
    pub max_usd_per_day: Option<f64>,
    /// Annotations that did not parse, for the session's message.
    pub unreadable: Vec<String>,
}

impl Cap {
    pub fn from_annotations(annotations: &std::collections::BTreeMap<String, String>) -> Self {
        let mut cap = Cap::default();
        if let Some(text) = annotations.get(MAX_CONCURRENT_SESSIONS) {
            match text.trim().parse::<u32>() {
                Ok(n) => cap.max_sessions = Some(n),
                Err(_) => cap.unreadable.push(format!("{MAX_CONCURRENT_SESSIONS}={text:?} (want a whole number)")),
            }
        }
        let mut rate = |key: &str, days: f64| match annotations.get(key).map(|t| t.trim().parse::<f64>()) {
            Some(Ok(usd)) if usd.is_finite() && usd >= 0.0 => Some(usd / days),
            Some(_) => {
                cap.unreadable.push(format!("{key}={:?} (want a number of USD)", annotations[key]));
                Some(0.0) // unreadable money limit: nothing new is rented until it is fixed
            }
            None => None,
        };
        let day = rate(MAX_USD_PER_DAY, 1.0);
        let month = rate(MAX_USD_PER_MONTH, 31.0);
        cap.max_usd_per_day = match (day, month) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        cap
    }

    fn is_set(&self) -> bool {
        self.max_sessions.is_some() || self.max_usd_per_day.is_some()
    }
}

/// What the namespace's other sessions hold now: machines and their price per hour, by session uid.
fn held_by_others(step: &Step<'_>, namespace: &str) -> HashMap<String, f64> {
    let own = step.session.uid().unwrap_or_default();
    let mut held: HashMap<String, f64> = HashMap::new();
    for session in step.ctx.stores().map(|s| s.sessions_in(namespace)).unwrap_or_default() {
        let Some(status) = session.status.as_ref() else { continue };
        let holds =
            (status.instance_id.is_some() && status.released_at.is_none()) || !status.pending_creates.is_empty();
        if holds
            && let Some(uid) = session.uid()
            && !step.ctx.owned_machines.released_lately(&uid)
        {
            held.insert(uid, status.price_per_hour.unwrap_or(0.0));
        }
    }
    // Rents this process made that the watch may not show yet.
    for (uid, machine) in step.ctx.owned_machines.in_namespace(namespace) {
        held.insert(uid, machine.price_per_hour);
    }
    held.remove(&own);
    held
}

/// Whether a rent may go ahead in the session's namespace.
pub enum Admission {
    /// No cap, or room: the turn (when capped) is held until the rent is recorded.
    Admitted {
        turn: Option<OwnedMutexGuard<()>>,
        offers: Vec<Offer>,
    },
    Refused,
}

/// Keeps the candidates a rent may take under the namespace's cap; when none may
/// be taken, the session is told why and waits.
pub async fn admit(step: &mut Step<'_>, candidates: Vec<Offer>) -> Result<Admission> {
    let namespace = step.session.namespace().unwrap_or_default();
    let cap = read_cap(step, &namespace).await;
    if !cap.is_set() && cap.unreadable.is_empty() {
        return Ok(Admission::Admitted { turn: None, offers: candidates });
    }
    let turn = step.ctx.owned_machines.rent_turn(&namespace).await;
    let held = held_by_others(step, &namespace);
    let rate_per_day: f64 = held.values().map(|p| p * 24.0).sum();
    let where_set = format!("annotations on Namespace {namespace}");
    let refusal = if !cap.unreadable.is_empty() {
        Some(format!("the cap's {} cannot be read; nothing new is rented until it is fixed", cap.unreadable.join(", ")))
    } else {
        cap.max_sessions.filter(|max| held.len() >= *max as usize).map(|max| {
            format!(
                "namespace {namespace} allows {max} session(s) holding a machine at once ({MAX_CONCURRENT_SESSIONS}, {where_set}) and {} hold one; this session rents when one ends",
                held.len()
            )
        })
    };
    let offers: Vec<Offer> = match (refusal.is_none(), cap.max_usd_per_day) {
        (true, Some(max)) => {
            candidates.into_iter().filter(|o| rate_per_day + o.price_per_hour * 24.0 <= max + 1e-9).collect()
        }
        (true, None) => candidates,
        (false, _) => Vec::new(),
    };
    let refusal = refusal.or_else(|| {
        offers.is_empty().then(|| {
            let max = cap.max_usd_per_day.unwrap_or_default();
            format!(
                "namespace {namespace}'s machines may cost ${max:.2}/day together ({MAX_USD_PER_DAY} or {MAX_USD_PER_MONTH}/31, {where_set}); its running machines cost ${rate_per_day:.2}/day and no matching offer fits in the rest; this session rents when there is room"
            )
        })
    });
    if let Some(message) = refusal {
        step.ctx.metrics.namespace_cap_refusals.get_or_create(&NamespaceLabels { namespace: namespace.clone() }).inc();
        if step.status.reason.as_deref() != Some(CAP_REACHED) {
            step.event(true, CAP_REACHED, &message);
        }
        step.phase(SessionPhase::Pending, CAP_REACHED, message.clone());
        step.condition(crate::crd::conditions::types::READY, false, CAP_REACHED, message);
        return Ok(Admission::Refused);
    }
    Ok(Admission::Admitted { turn: Some(turn), offers })
}

/// A machine of the session's namespace was released: the sessions waiting for room
/// look again now, not at their next requeue.
pub fn wake_waiting(step: &Step<'_>) {
    let namespace = step.session.namespace().unwrap_or_default();
    for session in step.ctx.stores().map(|s| s.sessions_in(&namespace)).unwrap_or_default() {
        if session.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(CAP_REACHED) {
            step.ctx.wake(&session);
        }
    }
}

/// The cap on `namespace`. A Namespace the operator may not read has no cap (said in the log).
async fn read_cap(step: &Step<'_>, namespace: &str) -> Cap {
    let namespaces: Api<Namespace> = Api::all(step.ctx.client.clone());
    match namespaces.get_metadata_opt(namespace).await {
        Ok(Some(object)) => Cap::from_annotations(object.annotations()),
        Ok(None) => Cap::default(),
        Err(error) => {
            tracing::warn!(%namespace, %error, "cannot read the Namespace for its spending cap; grant `get` on namespaces (the chart does). Renting as if uncapped");
            Cap::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cap(pairs: &[(&str, &str)]) -> Cap {
        Cap::from_annotations(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
    }

    #[test]
    fn the_stricter_of_the_day_and_month_caps_holds() {
        assert_eq!(cap(&[]), Cap::default());
        assert_eq!(cap(&[(MAX_USD_PER_DAY, "48")]).max_usd_per_day, Some(48.0));
        assert_eq!(cap(&[(MAX_USD_PER_MONTH, "310")]).max_usd_per_day, Some(10.0));
        assert_eq!(cap(&[(MAX_USD_PER_DAY, "48"), (MAX_USD_PER_MONTH, "310")]).max_usd_per_day, Some(10.0));
        assert_eq!(cap(&[(MAX_CONCURRENT_SESSIONS, " 3 ")]).max_sessions, Some(3));
    }

    #[test]
    fn an_unreadable_money_cap_rents_nothing_rather_than_everything() {
        let unreadable = cap(&[(MAX_USD_PER_DAY, "lots"), (MAX_CONCURRENT_SESSIONS, "-1")]);
        assert_eq!(unreadable.max_usd_per_day, Some(0.0));
        assert_eq!(unreadable.max_sessions, None);
        assert_eq!(unreadable.unreadable.len(), 2, "{:?}", unreadable.unreadable);
    }
}

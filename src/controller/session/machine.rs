//! The recorded machine as its marketplace shows it, for the stages that wait
//! on it: from the shared inventory's listing first, with one direct lookup only
//! when the listing cannot say.

use std::time::Duration;

use super::step::Step;
use crate::crd::GpuSessionStatus;
use crate::crd::session::after_stored;
use crate::error::Result;
use crate::inventory::Presence;
use crate::provider::{Instance, InstanceState};

/// How long a starting session waits for the shared listing before it looks its machine up itself.
const LISTING_WAIT: Duration = Duration::from_secs(30);

/// What is known of the recorded instance while it starts.
pub enum Sighting {
    Seen(Box<Instance>),
    /// No listing sent since the rent has come back yet: the inventory loop is asked for
    /// one and wakes the session when it shows the machine running.
    AwaitingListing,
    /// The marketplace does not know the id.
    Unknown,
}

/// The recorded instance as the marketplace shows it: from the shared listing
/// (one paged listing per marketplace serves every starting session; Vast
/// paces each endpoint, and one lookup per instance per poll does not scale),
/// with one direct lookup only when the listing cannot say (absent from it,
/// running without the detail `complete` asks for, or the listing failing or overdue).
pub async fn current_instance(step: &Step<'_>, complete: impl Fn(&Instance) -> bool) -> Result<Sighting> {
    let (Some(provider), Some(id)) = (step.status.provider, step.status.instance_id.clone()) else {
        return Ok(Sighting::Unknown);
    };
    let Some(client) = step.ctx.provider(provider) else { return Ok(Sighting::Unknown) };
    let inventory = &step.ctx.inventory;
    let rented = step.status.rented_at.as_ref().map(after_stored).unwrap_or(step.now);
    match inventory.presence(provider, &id, rented) {
        Presence::Listed(instance) if instance.state == InstanceState::Running && complete(&instance) => {
            return Ok(Sighting::Seen(instance));
        }
        Presence::Listed(instance) if instance.state != InstanceState::Running => {
            inventory.request_refresh(provider);
            return Ok(Sighting::Seen(instance));
        }
        Presence::Unknown
            if inventory.last_error(provider).is_none() && step.seconds_since(rented) < LISTING_WAIT.as_secs_f64() =>
        {
            inventory.request_refresh(provider);
            return Ok(Sighting::AwaitingListing);
        }
        _ => {}
    }
    Ok(match client.get_instance(&id).await? {
        Some(instance) => Sighting::Seen(Box::new(instance)),
        None => Sighting::Unknown,
    })
}

/// Drops the recorded machine and everything learnt about it from status (it was
/// destroyed, or it was never this session's).
pub fn forget(status: &mut GpuSessionStatus) {
    status.replacing = None;
    status.ending = None;
    status.instance_id = None;
    status.ssh = None;
    status.verified = None;
    status.rented_at = None;
    status.released_at = None;
    status.price_per_hour = None;
    status.gpu = None;
    status.started_at = None;
    status.expires_at = None;
    status.idle_since = None;
}

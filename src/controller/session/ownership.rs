//! Status is not an authority over machines. Anyone who may patch
//! `gpusessions/status` can write any instance id there, so before this process
//! destroys, attaches a key to, or logs in to the machine status names, its
//! marketplace must show that machine carrying this session's label. A machine
//! this process rented for the session is known; any other is checked once,
//! from the shared listing when it holds it.

use kube::ResourceExt;

use super::step::Step;
use crate::controller::context::OwnedMachine;
use crate::crd::session::{SshEndpoint, after_stored};
use crate::error::Result;
use crate::inventory::Presence;
use crate::provider::Instance;
use crate::provider::caller::{Urgency, with_urgency};

/// What the marketplace says of the machine status names.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// It carries this session's label (or this process rented it for the session).
    Ours,
    /// It exists and carries another label, or none: it is not this session's.
    NotOurs,
    /// The marketplace does not know it, or cannot be asked (no credentials): nothing
    /// done to it can reach another's machine.
    Unseen,
    /// No listing has come back since this process started; asked for one.
    AwaitingListing,
}

/// Whether the machine status names is this session's. `wait_for_listing`: before
/// the first listing, wait for it rather than look the machine up (at start every
/// session asks at once, and one listing answers them all).
pub async fn claim(step: &Step<'_>, wait_for_listing: bool) -> Result<Claim> {
    let (Some(provider), Some(id)) = (step.status.provider, step.status.instance_id.as_deref()) else {
        return Ok(Claim::Unseen);
    };
    let uid = step.session.uid().unwrap_or_default();
    if step.ctx.owned_machines.owns(&uid, provider, id) {
        return Ok(Claim::Ours);
    }
    let Some(client) = step.ctx.provider(provider) else { return Ok(Claim::Unseen) };
    let inventory = &step.ctx.inventory;
    let since = step.status.rented_at.as_ref().map(after_stored).unwrap_or(step.now);
    let instance = match inventory.presence(provider, id, since) {
        Presence::Listed(instance) => Some(*instance),
        Presence::Unknown if wait_for_listing && inventory.last_error(provider).is_none() => {
            inventory.request_refresh(provider);
            return Ok(Claim::AwaitingListing);
        }
        // Absent from our listing (which holds only this installation's labels), or no listing: ask.
        _ => with_urgency(Urgency::Lookup, client.get_instance(id)).await?,
    };
    let Some(instance) = instance else { return Ok(Claim::Unseen) };
    if labelled_for_session(step, &instance, &uid) {
        remember(step);
        Ok(Claim::Ours)
    } else {
        Ok(Claim::NotOurs)
    }
}

/// Records the machine status names as this session's (it was just rented, adopted by
/// its label, or shown carrying it), with what it costs for the namespace's cap.
pub fn remember(step: &Step<'_>) {
    let (Some(provider), Some(id)) = (step.status.provider, step.status.instance_id.clone()) else { return };
    let machine = OwnedMachine {
        provider,
        id,
        namespace: step.session.namespace().unwrap_or_default(),
        price_per_hour: step.status.price_per_hour.unwrap_or(0.0),
    };
    step.ctx.owned_machines.record(&step.session.uid().unwrap_or_default(), machine);
}

fn labelled_for_session(step: &Step<'_>, instance: &Instance, uid: &str) -> bool {
    instance
        .label
        .as_ref()
        .is_some_and(|label| label.session_uid == uid && step.ctx.config.installations().contains(&label.installation))
}

/// Logins go where the marketplace lists the machine's SSH, not where status says:
/// an endpoint in status that differs from the listing's is put back (the pinned
/// host key is kept, so a machine that changed its key still fails to log in).
pub fn follow_listed_endpoint(step: &mut Step<'_>) {
    let (Some(provider), Some(id), Some(recorded)) =
        (step.status.provider, step.status.instance_id.as_deref(), step.status.ssh.as_ref())
    else {
        return;
    };
    let since = step.status.rented_at.as_ref().map(after_stored).unwrap_or(step.now);
    let Presence::Listed(instance) = step.ctx.inventory.presence(provider, id, since) else { return };
    let Some(listed) = instance.ssh else { return };
    if (recorded.host.as_str(), recorded.port, recorded.user.as_str())
        != (listed.host.as_str(), listed.port, listed.user.as_str())
    {
        tracing::info!(session = %step.session.name_any(), instance = %id, "SSH endpoint in status differs from the marketplace's listing; the listing's is used");
        let host_key_fingerprint = recorded.host_key_fingerprint.clone();
        step.status.ssh =
            Some(SshEndpoint { host: listed.host, port: listed.port, user: listed.user, host_key_fingerprint });
    }
}

/// The reason of a session whose status named a machine that is not its own.
pub const NOT_OWNED: &str = "InstanceNotOwned";

/// Forgets the recorded machine without touching it, says so, and returns why.
pub fn disown(step: &mut Step<'_>) -> String {
    let id = step.status.instance_id.clone().unwrap_or_default();
    let provider = step.status.provider.map(|p| p.as_str()).unwrap_or("?");
    let message = format!(
        "status named instance {id} on {provider}, which does not carry this session's label: status is not an \
         authority over machines, so it was left untouched and forgotten; any machine of this session is destroyed \
         by the sweeper. Was gpusessions/status patched by hand?"
    );
    step.event(true, NOT_OWNED, &message);
    step.ctx.owned_machines.forget(&step.session.uid().unwrap_or_default());
    super::machine::forget(&mut step.status);
    message
}

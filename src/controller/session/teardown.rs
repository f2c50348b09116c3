//! Ending a session's machine: destroy it, confirm it is gone, record. A
//! destroy counts only when the marketplace shows the instance gone; a failed
//! or unconfirmed destroy is an error (retried with backoff, counted), never
//! dropped.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::cost::settle_cost;
use super::namespace_cap;
use super::ownership::{self, Claim};
use super::step::{Step, for_status};
use crate::crd::SessionPhase;
use crate::crd::conditions::{find, types};
use crate::crd::session::{Ending, after_stored};
use crate::error::{Error, Result};
use crate::metrics::ProviderLabels;
use crate::provider::caller::{Urgency, with_urgency};
use crate::provider::{Gone, Provider, ProviderError, confirm_gone, destroy_confirmed};

/// Destroys the recorded instance unless already released, and waits for the marketplace to confirm it.
pub async fn release(step: &mut Step<'_>) -> Result<()> {
    release_at(step, None).await
}

/// Like `release`; `billing_ended` (the last time a lost machine was seen alive) is
/// when its cost stops, instead of the moment the destroy is confirmed.
pub async fn release_at(step: &mut Step<'_>, billing_ended: Option<Timestamp>) -> Result<()> {
    let (Some(id), None) = (step.status.instance_id.clone(), step.status.released_at.clone()) else { return Ok(()) };
    let Some(provider_name) = step.status.provider else { return Ok(()) };
    let Some(provider) = step.ctx.provider(provider_name).cloned() else {
        let message = format!(
            "instance {id} is on {provider_name}, which has no credentials any more: it cannot be destroyed until they are restored"
        );
        step.event(true, "DestroyFailed", &message);
        return Err(ProviderError::AuthFailed { provider: provider_name, status: 0 }.into());
    };
    // Status is not an authority: a machine not carrying this session's label is never destroyed.
    if ownership::claim(step, false).await? == Claim::NotOurs {
        ownership::disown(step);
        return Ok(());
    }
    let gone = match destroy_and_confirm(step, provider.as_ref(), &id).await {
        Ok(gone) => gone,
        Err(error) => {
            step.ctx.metrics.destroy_failures.get_or_create(&ProviderLabels { provider: provider_name.as_str() }).inc();
            step.event(true, "DestroyFailed", format!("destroying instance {id} failed, will retry: {error}"));
            return Err(error.into());
        }
    };
    step.ctx.inventory.mark_destroyed(provider_name, &id);
    step.ctx.owned_machines.forget(&step.session.uid().unwrap_or_default());
    namespace_cap::wake_waiting(step);
    step.destroyed_a_machine = true;
    // Gone before this step (destroyed by a step whose status write was lost, or by
    // anyone): billing ended at the latest when it was last known alive.
    let billing_ended = match gone {
        Gone::Now => billing_ended,
        Gone::Already => billing_ended.or_else(|| last_known_alive(step)),
    };
    let ended = billing_ended.map(|t| t.min(step.now)).unwrap_or(step.now);
    step.status.released_at = Some(Time(ended));
    settle_cost(step);
    if !step.deleting {
        step.event(false, "InstanceDestroyed", format!("instance {id} on {provider_name} destroyed"));
    }
    Ok(())
}

/// How long a destroy waits for the shared listing to confirm it before looking the instance up itself.
const LISTING_CONFIRMS_WITHIN: Duration = Duration::from_secs(5);

/// Sends the destroy, then counts it done when the marketplace shows the instance
/// gone: from the shared listing when one comes soon (one listing confirms every
/// destroy of that moment), else by one lookup. Money calls: they go first.
async fn destroy_and_confirm(step: &Step<'_>, provider: &dyn Provider, id: &str) -> Result<Gone, ProviderError> {
    let gone = with_urgency(Urgency::Money, provider.destroy_instance(id)).await?;
    let answered = Timestamp::now();
    let inventory = &step.ctx.inventory;
    match inventory.gone_in_a_listing_after(provider.name(), id, answered, LISTING_CONFIRMS_WITHIN).await {
        Some(true) => Ok(gone),
        _ => confirm_gone(provider, id, gone).await,
    }
}

/// The last time the recorded machine is known to have been alive: the later of the
/// inventory's last sighting and the last stage this process proved on it (SSH, CUDA,
/// the workload answered: each a login on the machine itself). When this process never
/// saw it (it restarted since), the later of its rent and the last stored cost (counted
/// while it was believed alive). This step's own cost refresh says nothing about the
/// machine, so the stored one is used.
pub fn last_known_alive(step: &Step<'_>) -> Option<Timestamp> {
    let (provider, id) = (step.status.provider?, step.status.instance_id.as_deref()?);
    let proved = last_stage_proved(step);
    match step.ctx.inventory.last_alive(provider, id) {
        Some(listed) => Some(proved.map_or(listed, |p| p.max(listed))),
        None => {
            let rented = step.status.rented_at.as_ref().map(|t| t.0);
            let costed = step.stored_status().accrued_cost_at.as_ref().map(|t| t.0);
            rented.max(costed).max(proved)
        }
    }
}

/// When the latest proof stage on the current machine turned true.
fn last_stage_proved(step: &Step<'_>) -> Option<Timestamp> {
    [types::SSH_READY, types::CUDA_VERIFIED, types::INPUTS_READY, types::WORKLOAD_READY]
        .into_iter()
        .filter_map(|type_| find(&step.status.conditions, type_))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0)
        .max()
}

/// Ends the session: destroys its machine first, then records the outcome, so
/// a session shown Succeeded or Failed has nothing billing. The end's intent
/// (`status.ending`) is stored before the destroy is sent: if the write after
/// the destroy is lost, the next reconcile finishes this end (`resume_end`),
/// never reads the machine as lost.
pub async fn end(step: &mut Step<'_>, phase: SessionPhase, reason: &str, message: String) -> Result<()> {
    step.status.pending_creates.clear(); // a late landing is the stray reaper's
    if let Some(id) = step.status.instance_id.clone()
        && step.status.released_at.is_none()
        && step.status.ending.as_ref().is_none_or(|e| e.instance_id != id)
    {
        let message = for_status(message.clone());
        step.status.ending = Some(Ending { instance_id: id, phase, reason: reason.to_string(), message });
        step.persist().await?;
    }
    release(step).await?;
    settle_cost(step);
    step.status.ending = None;
    step.condition(types::READY, false, reason, message.clone());
    // A terminal condition tools can wait on (`kubectl wait --for=condition=Complete`).
    let terminal = if phase == SessionPhase::Failed { types::FAILED } else { types::COMPLETE };
    step.condition(terminal, true, reason, message.clone());
    step.phase(phase, reason, message.clone());
    step.event(phase == SessionPhase::Failed, reason, message);
    Ok(())
}

/// An end whose status was lost after its destroy was sent: finished now, as what it was.
pub async fn resume_end(step: &mut Step<'_>) -> Result<bool> {
    let Some(ending) = step.status.ending.clone() else { return Ok(false) };
    if step.status.instance_id.as_deref() != Some(ending.instance_id.as_str()) {
        step.status.ending = None; // another machine since: only the marker was left
        return Ok(false);
    }
    end(step, ending.phase, &ending.reason, ending.message).await?;
    Ok(true)
}

/// Destroys every instance labelled with this session that status does not
/// hold (a create whose answer was lost just before deletion). Marketplaces
/// with a create whose outcome is unknown must be listed first; the others'
/// last listing is enough (the sweeper destroys anything that shows up later).
pub async fn destroy_unrecorded(step: &mut Step<'_>) -> Result<()> {
    let uid = step.session.uid().unwrap_or_default();
    // A create whose answer was lost may land late, invisible to every listing for a
    // while: hold the finalizer until a listing sent after the stray grace shows it.
    let window = jiff::SignedDuration::try_from(step.ctx.config.stray_grace_period).unwrap_or_default();
    let uncertain = step
        .status
        .pending_creates
        .iter()
        .map(|intent| (Some(intent.provider), &intent.sent_at))
        .chain(step.status.attempts.iter().filter(|a| may_have_landed(&a.reason)).map(|a| (a.provider, &a.time)));
    for (provider, sent_at) in uncertain {
        let Some(provider) = provider.filter(|p| step.ctx.provider(*p).is_some()) else { continue };
        // `checked_add`: a time read back from status may be anything the schema took.
        let settled_after = after_stored(sent_at).checked_add(window).unwrap_or(jiff::Timestamp::MAX);
        if !step.ctx.inventory.listed_since(provider, settled_after) {
            step.ctx.inventory.request_refresh(provider);
            return Err(Error::WaitingForListing { provider, sent_at: sent_at.0.to_string() });
        }
    }
    for instance in step.ctx.inventory.labelled_for(&uid) {
        let recorded = step.status.instance_id.as_deref() == Some(instance.id.as_str())
            && step.status.provider == Some(instance.provider);
        if recorded && step.status.released_at.is_some() {
            continue;
        }
        let Some(provider) = step.ctx.provider(instance.provider).cloned() else { continue };
        if let Err(error) = destroy_confirmed(provider.as_ref(), &instance.id).await.map(|_| ()) {
            step.ctx
                .metrics
                .destroy_failures
                .get_or_create(&ProviderLabels { provider: provider.name().as_str() })
                .inc();
            return Err(error.into());
        }
        step.ctx.inventory.mark_destroyed(instance.provider, &instance.id);
        step.event(
            false,
            "InstanceDestroyed",
            format!("unrecorded instance {} on {} destroyed", instance.id, provider.name()),
        );
    }
    step.status.pending_creates.clear();
    Ok(())
}

/// An attempt whose create may have reached the marketplace although no answer said so.
fn may_have_landed(reason: &str) -> bool {
    matches!(reason, "ProviderTimeout" | "ProviderUnavailable" | "BadResponse")
}

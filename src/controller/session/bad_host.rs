//! A host that failed: destroy it, avoid it, record the attempt, shop again.
//! Every stage's "the host failed" and every machine lost with
//! `onInstanceLoss: Replace` end here.

use kube::runtime::controller::Action;

use super::cost::current_machine_cost;
use super::step::{NEXT_STAGE, Step, for_status};
use super::teardown;
use crate::crd::SessionPhase;
use crate::crd::conditions::{Status, types};
use crate::crd::session::{Attempt, Replacement};
use crate::error::Result;

/// A replacement whose status write was lost after its destroy: finished now,
/// with its own reason (the machine is gone because we destroyed it, not lost).
pub async fn resume(step: &mut Step<'_>) -> Result<Option<Action>> {
    let Some(replacing) = step.status.replacing.clone() else { return Ok(None) };
    if step.status.instance_id.as_deref() != Some(replacing.instance_id.as_str()) {
        step.status.replacing = None; // done already; only the marker was left
        return Ok(None);
    }
    replace(step, &replacing.reason, replacing.message.clone()).await.map(Some)
}

/// The host failed a stage: destroy it, avoid it, record the attempt, shop again.
/// The intent is stored before the destroy is sent (like a create's).
pub async fn replace(step: &mut Step<'_>, reason: &str, message: String) -> Result<Action> {
    if let Some(id) = step.status.instance_id.clone()
        && step.status.replacing.as_ref().is_none_or(|r| r.instance_id != id)
    {
        step.status.replacing =
            Some(Replacement { instance_id: id, reason: reason.to_string(), message: for_status(message.clone()) });
        step.persist().await?;
    }
    let provider = step.status.provider;
    let offer_id = step.status.offer_id.clone().unwrap_or_default();
    if let (Some(provider), Some(host)) = (provider, step.status.host_id.as_deref()) {
        step.ctx.bad_hosts.mark(provider, host, reason);
    }
    teardown::release(step).await?;
    let cost_usd = step.status.rented_at.is_some().then(|| current_machine_cost(step));
    step.status.attempts.push(Attempt {
        provider,
        offer_id: offer_id.clone(),
        price_per_hour: step.status.price_per_hour,
        cost_usd,
        reason: reason.to_string(),
        message: for_status(message.clone()),
        time: step.time(),
    });
    step.event(
        true,
        reason,
        format!("offer {offer_id}: {message}; the host is avoided and another offer will be tried"),
    );
    super::machine::forget(&mut step.status);
    for stage in
        [types::INSTANCE_RUNNING, types::SSH_READY, types::CUDA_VERIFIED, types::INPUTS_READY, types::WORKLOAD_READY]
    {
        step.condition(stage, Status::Unknown, "Reshopping", format!("previous host failed: {reason}"));
    }
    // Not a failure of the session: it shops again, so readiness is not known yet.
    step.condition(types::READY, Status::Unknown, reason, message.clone());
    step.phase(SessionPhase::Provisioning, reason, format!("{message}; trying another offer"));
    Ok(Action::requeue(NEXT_STAGE))
}

//! Ending a session's machine: destroy it, confirm, record. A failed destroy
//! is an error (retried with backoff, counted), never dropped.

use kube::ResourceExt;

use super::Step;
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::error::Result;
use crate::metrics::ProviderLabels;
use crate::provider::ProviderError;

/// Destroys the recorded instance unless already released.
pub async fn release(step: &mut Step<'_>) -> Result<()> {
    let (Some(id), None) = (step.status.instance_id.clone(), step.status.released_at.clone()) else { return Ok(()) };
    let Some(provider_name) = step.status.provider else { return Ok(()) };
    let Some(provider) = step.ctx.provider(provider_name).cloned() else {
        let message = format!(
            "instance {id} is on {provider_name}, which has no credentials any more: it cannot be destroyed until they are restored"
        );
        step.event(true, "DestroyFailed", &message);
        return Err(ProviderError::AuthFailed { provider: provider_name, status: 0 }.into());
    };
    if let Err(error) = provider.destroy_instance(&id).await {
        step.ctx.metrics.destroy_failures.get_or_create(&ProviderLabels { provider: provider_name.as_str() }).inc();
        step.event(true, "DestroyFailed", format!("destroying instance {id} failed, will retry: {error}"));
        return Err(error.into());
    }
    settle_cost(step);
    step.status.released_at = Some(step.time());
    step.event(false, "InstanceDestroyed", format!("instance {id} on {provider_name} destroyed"));
    Ok(())
}

/// Accrued cost = price x time from rent to release (or now).
pub fn settle_cost(step: &mut Step<'_>) {
    if let (Some(price), Some(rented)) = (step.status.price_per_hour, step.status.rented_at.as_ref()) {
        let end = step.status.released_at.as_ref().map(|t| t.0).unwrap_or(step.now);
        let hours = end.duration_since(rented.0).as_secs_f64().max(0.0) / 3600.0;
        step.status.accrued_cost_usd = Some((price * hours * 10_000.0).round() / 10_000.0);
    }
}

/// Ends the session: destroys its machine first, then records the outcome.
pub async fn end(step: &mut Step<'_>, phase: SessionPhase, reason: &str, message: String) -> Result<()> {
    release(step).await?;
    step.condition(types::READY, false, reason, message.clone());
    step.phase(phase, reason, message.clone());
    step.event(phase == SessionPhase::Failed, reason, message);
    Ok(())
}

/// Destroys every instance labelled with this session that status does not
/// hold (a create whose answer was lost just before deletion).
pub async fn destroy_unrecorded(step: &mut Step<'_>) -> Result<()> {
    let uid = step.session.uid().unwrap_or_default();
    let deployment = step.ctx.config.deployment_id.clone();
    for provider in step.ctx.providers.clone() {
        let instances = match provider.list_instances(&deployment).await {
            Ok(instances) => instances,
            // Without credentials nothing can have been created there by us now.
            Err(error) if error.next_step() == crate::provider::NextStep::SkipProvider => continue,
            Err(error) => return Err(error.into()),
        };
        for instance in instances.into_iter().filter(|i| i.label.as_ref().is_some_and(|l| l.session_uid == uid)) {
            let recorded = step.status.instance_id.as_deref() == Some(instance.id.as_str())
                && step.status.provider == Some(provider.name());
            if recorded && step.status.released_at.is_some() {
                continue;
            }
            if let Err(error) = provider.destroy_instance(&instance.id).await {
                step.ctx
                    .metrics
                    .destroy_failures
                    .get_or_create(&ProviderLabels { provider: provider.name().as_str() })
                    .inc();
                return Err(error.into());
            }
            step.event(
                false,
                "InstanceDestroyed",
                format!("unrecorded instance {} on {} destroyed", instance.id, provider.name()),
            );
        }
    }
    Ok(())
}

//! Renting: adopt an instance already carrying our label, else shop the
//! market and create on the best offer not tried before, falling over to the
//! next one when an offer is gone, within the session's attempt budget.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::secret::SessionKey;
use super::teardown;
use super::{PROVISIONING_POLL, Step};
use crate::crd::conditions::types;
use crate::crd::session::Attempt;
use crate::crd::{GpuOfferFilter, OfferRequirements, ProviderName, SessionPhase, WorkloadKind};
use crate::error::Result;
use crate::market::{self, rank};
use crate::provider::{CreateRequest, Instance, InstanceLabel, InstanceState, NextStep, Offer};

pub const DEFAULT_IMAGE: &str = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
pub const DEFAULT_DISK_GB: u32 = 40;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_INFERENCE_PORT: u16 = 8000;
const SEARCH_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT_FOR_MARKET: Duration = Duration::from_secs(30);

pub async fn step(step: &mut Step<'_>, key: &SessionKey) -> Result<Action> {
    if let Some((provider, instance)) = find_labelled(step).await? {
        if let Some(client) = step.ctx.provider(provider) {
            client.ensure_ssh_key(&instance.id, &key.public_openssh).await?;
        }
        step.event(
            false,
            "Adopted",
            format!("found instance {} on {provider} carrying this session's label; adopting it", instance.id),
        );
        record_rented(step, provider, &instance, None, "adopted an instance created for this session earlier".into());
        return Ok(Action::requeue(PROVISIONING_POLL));
    }

    let max_attempts = step.session.spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) as usize;
    if step.status.attempts.len() >= max_attempts {
        let tried: Vec<String> = step.status.attempts.iter().map(|a| format!("{}: {}", a.offer_id, a.reason)).collect();
        let message = format!(
            "tried {max_attempts} offers without a working machine ({}); raise spec.maxAttempts or loosen the requirements",
            tried.join(", ")
        );
        teardown::end(step, SessionPhase::Failed, "AttemptsExhausted", message).await?;
        return Ok(Action::await_change());
    }

    let requirements = match effective_requirements(step).await? {
        Ok(requirements) => requirements,
        Err((reason, message)) => {
            step.phase(SessionPhase::Pending, reason, message.clone());
            step.condition(types::READY, false, reason, message);
            return Ok(Action::requeue(WAIT_FOR_MARKET));
        }
    };

    let ctx = step.ctx;
    let view = market::search_cached(&ctx.providers, &requirements, SEARCH_TIMEOUT, Some(&ctx.offer_cache)).await;
    let candidates: Vec<Offer> =
        view.offers.iter().filter(|o| !tried_before(step, o) && ctx.bad_hosts.avoided(o).is_none()).cloned().collect();
    let Some(best) = candidates.first().cloned() else {
        let failures: Vec<String> = view.failures.iter().map(|f| f.error.to_string()).collect();
        let message = format!(
            "no offer matches now ({} found, {} tried or avoided){}; looking again in {}s",
            view.offers.len(),
            view.offers.len() - candidates.len(),
            if failures.is_empty() { String::new() } else { format!("; {}", failures.join("; ")) },
            WAIT_FOR_MARKET.as_secs()
        );
        step.phase(SessionPhase::Pending, "NoMatchingOffers", message.clone());
        step.condition(types::READY, false, "NoMatchingOffers", message);
        return Ok(Action::requeue(WAIT_FOR_MARKET));
    };

    let Some(provider) = ctx.provider(best.provider).cloned() else { return Ok(Action::requeue(PROVISIONING_POLL)) };
    let request = create_request(step, &best, key);
    let why = rank::explain(&best, candidates.len());
    match provider.create_instance(&request).await {
        Ok(instance) => {
            step.event(false, "Rented", format!("rented {} on {}: {why}", instance.id, best.provider));
            record_rented(step, best.provider, &instance, Some(&best), why);
            Ok(Action::requeue(PROVISIONING_POLL))
        }
        Err(error) => {
            if error.next_step() == NextStep::NextOffer {
                ctx.offer_cache.invalidate(best.provider); // its listing was stale
            }
            step.status.attempts.push(Attempt {
                provider: Some(best.provider),
                offer_id: best.id.clone(),
                price_per_hour: Some(best.price_per_hour),
                reason: error.reason().to_string(),
                message: error.to_string(),
                time: step.time(),
            });
            step.event(true, "AttemptFailed", format!("offer {} on {}: {error}", best.id, best.provider));
            if error.next_step() == NextStep::GiveUp {
                teardown::end(
                    step,
                    SessionPhase::Failed,
                    "CreateRejected",
                    format!("the marketplace refused to create the instance: {error}"),
                )
                .await?;
                return Ok(Action::await_change());
            }
            let message = format!("offer {} failed ({}); trying the next one", best.id, error.reason());
            step.phase(SessionPhase::Provisioning, "NextOffer", message);
            // A lost create answer is healed by the label lookup at the start of the next step.
            Ok(Action::requeue(super::NEXT_STAGE))
        }
    }
}

fn tried_before(step: &Step<'_>, offer: &Offer) -> bool {
    step.status.attempts.iter().any(|a| a.provider == Some(offer.provider) && a.offer_id == offer.id)
}

/// An instance on any marketplace labelled with this session, not destroyed.
async fn find_labelled(step: &Step<'_>) -> Result<Option<(ProviderName, Instance)>> {
    let uid = step.session.uid().unwrap_or_default();
    for provider in &step.ctx.providers {
        let instances = match provider.list_instances(&step.ctx.config.deployment_id).await {
            Ok(instances) => instances,
            // Without working credentials nothing was created there for us just now.
            Err(error) if error.next_step() == NextStep::SkipProvider => continue,
            // Unsure what exists: creating now could double an instance. Retry later.
            Err(error) => return Err(error.into()),
        };
        let ours = instances
            .into_iter()
            .find(|i| i.label.as_ref().is_some_and(|l| l.session_uid == uid) && i.state != InstanceState::Destroyed);
        if let Some(instance) = ours {
            return Ok(Some((provider.name(), instance)));
        }
    }
    Ok(None)
}

/// The referenced filter merged with the inline requirements, or why the session cannot shop.
pub(super) async fn effective_requirements(
    step: &Step<'_>,
) -> Result<Result<OfferRequirements, (&'static str, String)>> {
    let inline = step.session.spec.requirements.clone().unwrap_or_default();
    let Some(filter_ref) = &step.session.spec.offer_filter_ref else { return Ok(Ok(inline)) };
    let namespace = step.session.namespace().unwrap_or_default();
    let filters: Api<GpuOfferFilter> = Api::namespaced(step.ctx.client.clone(), &namespace);
    let Some(filter) = filters.get_opt(&filter_ref.name).await? else {
        return Ok(Err((
            "OfferFilterNotFound",
            format!(
                "GpuOfferFilter {:?} does not exist in namespace {namespace:?}: create it or fix spec.offerFilterRef.name",
                filter_ref.name
            ),
        )));
    };
    Ok(market::merge(&filter.spec.requirements, &inline)
        .map_err(|why| ("ConflictingRequirements", format!("the filter and the session contradict each other: {why}"))))
}

fn create_request(step: &Step<'_>, offer: &Offer, key: &SessionKey) -> CreateRequest {
    let spec = &step.session.spec;
    let mut env: Vec<(String, String)> = spec.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
    let mut ports = spec.ports.clone();
    if spec.workload.kind == WorkloadKind::Inference
        && let Some(inference) = &spec.workload.inference
    {
        env.push(("GPU_SHOPPER_MODEL".into(), inference.model.clone()));
        let port = inference.port.unwrap_or(DEFAULT_INFERENCE_PORT);
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    CreateRequest {
        offer: offer.clone(),
        label: InstanceLabel::new(&step.ctx.config.deployment_id, &step.session.uid().unwrap_or_default()),
        ssh_public_key: key.public_openssh.clone(),
        image: spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        // The operator runs the start script itself over SSH, the same way on every marketplace.
        start_script: None,
        env,
        ports,
        disk_gb: spec.disk_gb.unwrap_or(DEFAULT_DISK_GB),
    }
}

fn record_rented(step: &mut Step<'_>, provider: ProviderName, instance: &Instance, offer: Option<&Offer>, why: String) {
    let now = step.time();
    let s = &mut step.status;
    s.provider = Some(provider);
    s.instance_id = Some(instance.id.clone());
    s.offer_id = offer.map(|o| o.id.clone()).or_else(|| s.offer_id.clone());
    s.price_per_hour = instance.price_per_hour.or(offer.map(|o| o.price_per_hour));
    s.gpu = offer.map(|o| format!("{}x {}", o.gpu_count, o.gpu_model)).or_else(|| instance.gpu_model.clone());
    s.selection = Some(why);
    s.rented_at = Some(now);
    s.released_at = None;
    s.ssh = None;
    s.verified = None;
    s.idle_since = None;
    s.started_at = None;
    s.expires_at = None;
    let id = instance.id.clone();
    step.phase(SessionPhase::Provisioning, "InstanceCreated", format!("instance {id} on {provider} is starting"));
    step.condition(
        types::INSTANCE_RUNNING,
        false,
        "Starting",
        format!("instance {id} was created; waiting for it to run"),
    );
    for stage in [types::SSH_READY, types::CUDA_VERIFIED, types::WORKLOAD_READY] {
        step.condition(stage, false, "Waiting", "waiting for the previous stage");
    }
    step.condition(types::READY, false, "Verifying", "the machine is being proven");
}

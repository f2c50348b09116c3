//! Renting: adopt an instance already carrying our label, else shop the
//! market and create on the best offer not tried before, falling over to the
//! next one when an offer is gone, within the session's attempt budget.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::bad_host;
use super::namespace_cap::{self, Admission};
use super::requirements;
use super::secret::SessionKey;
use super::step::{NEXT_STAGE, PROVISIONING_POLL, Step, for_status};
use super::teardown;
use crate::crd::conditions::{Status, types};
use crate::crd::session::{Attempt, CreateIntent};
use crate::crd::{GpuSessionSpec, OfferRequirements, ProviderName, SessionPhase, WorkloadKind};
use crate::error::Result;
use crate::market::{self, rank};
use crate::provider::caller::{Urgency, with_urgency};
use crate::provider::{
    CreateRequest, Instance, InstanceLabel, InstanceState, NextStep, Offer, OfferQuery, ProviderError,
};

pub const DEFAULT_IMAGE: &str = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
pub const DEFAULT_DISK_GB: u32 = 40;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const WAIT_FOR_MARKET: Duration = Duration::from_secs(30);

/// Adopts a machine carrying this session's label that status does not hold (a
/// create whose answer was lost, or that landed late), from the shared
/// inventory: no marketplace is listed for it here. `true` when one was adopted.
pub async fn adopt_labelled(step: &mut Step<'_>, key: &SessionKey) -> Result<bool> {
    let uid = step.session.uid().unwrap_or_default();
    let mut found = step.ctx.inventory.labelled_for(&uid);
    found.retain(|i| matches!(i.state, InstanceState::Running | InstanceState::Provisioning));
    // Prefer a running machine; the others are strays for the sweeper.
    found.sort_by_key(|i| i.state != InstanceState::Running);
    let Some(instance) = found.into_iter().next() else { return Ok(false) };
    let provider = instance.provider;
    tracing::info!(session = %step.session.name_any(), %provider, instance = %instance.id, "adopting a labelled instance");
    // The machine is recorded whatever the key attach answers: an adopted machine bills, and
    // must be supervised (limits, loss, deletion) even while its key cannot be attached.
    if let Some(client) = step.ctx.provider(provider)
        && let Err(error) = client.ensure_ssh_key(&instance.id, &key.public_openssh).await
    {
        step.event(
            true,
            "KeyAttachFailed",
            format!("attaching the session's key to adopted instance {} failed ({error}); SSHReady will show whether it logs in", instance.id),
        );
    }
    step.event(
        false,
        "Adopted",
        format!("found instance {} on {provider} carrying this session's label; adopting it", instance.id),
    );
    // The offer is the one this marketplace's pending create asked for, if one did.
    let intent = step.status.pending_creates.iter().find(|i| i.provider == provider).cloned();
    step.status.pending_creates.retain(|intent| intent.provider != provider);
    step.status.offer_id = intent.as_ref().map(|i| i.offer_id.clone()).or_else(|| step.status.offer_id.clone());
    record_rented(step, provider, &instance, None, "adopted an instance created for this session earlier".into());
    // A marketplace that reports no price (TensorDock's instance answer) is costed at the offer's.
    if step.status.price_per_hour.is_none() {
        step.status.price_per_hour = intent.and_then(|i| i.price_per_hour);
        super::ownership::remember(step);
    }
    Ok(true)
}

/// Creates whose outcome is still unknown: each is settled by a listing of its
/// marketplace sent after it (what landed is then adopted or reaped), and a
/// refresh is asked for meanwhile. Returns the marketplaces still unsettled.
fn settle_pending_creates(step: &mut Step<'_>) -> Vec<ProviderName> {
    let inventory = &step.ctx.inventory;
    step.status.pending_creates.retain(|intent| {
        let settled = !step.ctx.providers.iter().any(|p| p.name() == intent.provider)
            || inventory.listed_since(intent.provider, intent.settled_by_listings_after());
        if settled {
            tracing::info!(provider = %intent.provider, sent_at = %intent.sent_at.0, "pending create settled by a later listing");
        } else {
            inventory.request_refresh(intent.provider);
        }
        !settled
    });
    step.status.pending_creates.iter().map(|i| i.provider).collect()
}

pub async fn step(step: &mut Step<'_>, key: &SessionKey) -> Result<Action> {
    let unsettled = settle_pending_creates(step);
    // The listing that settled a create may be newer than the one adoption looked at.
    if adopt_labelled(step, key).await? {
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

    let requirements = match requirements::effective(step).await? {
        Ok(requirements) => requirements,
        Err((reason, message)) => {
            step.phase(SessionPhase::Pending, reason, message.clone());
            step.condition(types::READY, false, reason, message);
            return Ok(Action::requeue(WAIT_FOR_MARKET));
        }
    };

    let ctx = step.ctx;
    // Each marketplace's search is bounded by one call timeout: a hung one delays no rent by more.
    let timeout = ctx.config.provider_call_timeout;
    let query = OfferQuery {
        requirements: requirements.clone(),
        limit: market::OFFERS_PER_MARKETPLACE,
        disk_gb: disk_gb(&step.session.spec),
        public_ports: !exposed_ports(&step.session.spec).is_empty(),
    };
    let view =
        with_urgency(Urgency::Search, market::search_cached(&ctx.providers, &query, timeout, Some(&ctx.offer_cache)))
            .await;
    // A marketplace whose last create may still land gets no second one until it is settled.
    let candidates: Vec<Offer> = view
        .offers
        .iter()
        .filter(|o| !tried_before(step, o) && ctx.bad_hosts.avoided(o).is_none() && !unsettled.contains(&o.provider))
        .cloned()
        .collect();
    let Some(best) = candidates.first().cloned() else {
        if !unsettled.is_empty() {
            let names: Vec<&str> = unsettled.iter().map(|p| p.as_str()).collect();
            let message = format!(
                "a create on {} may have landed; waiting for its listing to show what exists before renting there again",
                names.join(", ")
            );
            step.phase(SessionPhase::Provisioning, "CreateOutcomeUnknown", message.clone());
            step.condition(types::READY, Status::Unknown, "CreateOutcomeUnknown", message);
            return Ok(Action::requeue(PROVISIONING_POLL));
        }
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

    // Within the namespace's cap (its turn to rent is held until the rent is recorded).
    let (_turn, candidates) = match namespace_cap::admit(step, candidates).await? {
        Admission::Admitted { turn, offers } => (turn, offers),
        Admission::Refused => return Ok(Action::requeue(WAIT_FOR_MARKET)),
    };
    let best = if candidates.contains(&best) { best } else { candidates[0].clone() };
    let Some(provider) = ctx.provider(best.provider).cloned() else { return Ok(Action::requeue(PROVISIONING_POLL)) };
    let request = create_request(step, &best, key, &requirements);
    let why = rank::explain(&best, candidates.len());
    // The intent is stored before the create is sent (crossplane's create-pending):
    // a crash or a lost answer after this point is settled by a listing, never doubled.
    let sent_at = Time(jiff::Timestamp::now());
    step.status.billing_started_at.get_or_insert_with(|| sent_at.clone());
    step.status.pending_creates.push(CreateIntent {
        provider: best.provider,
        offer_id: best.id.clone(),
        sent_at: sent_at.clone(),
        price_per_hour: Some(best.price_per_hour),
    });
    step.persist().await?;
    tracing::info!(session = %step.session.name_any(), provider = %best.provider, offer = %best.id, "create intent stored; sending the create");
    let outcome = with_urgency(Urgency::Create, provider.create_instance(&request)).await;
    let landed_or_refused = !matches!(&outcome, Err(error) if error.create_may_have_landed());
    if landed_or_refused {
        step.status.pending_creates.retain(|i| !(i.provider == best.provider && i.sent_at == sent_at));
    } else {
        // Only a listing sent after the call ended can tell whether it landed.
        let ended = Time(jiff::Timestamp::now());
        if let Some(intent) =
            step.status.pending_creates.iter_mut().find(|i| i.provider == best.provider && i.sent_at == sent_at)
        {
            intent.sent_at = ended;
        }
        ctx.inventory.request_refresh(best.provider);
    }
    match outcome {
        Ok(instance) => {
            step.event(false, "Rented", format!("rented {} on {}: {why}", instance.id, best.provider));
            record_rented(step, best.provider, &instance, Some(&best), why);
            if let Some(action) = price_above_limit(step, &best, &instance, &requirements).await? {
                return Ok(action);
            }
            Ok(Action::requeue(PROVISIONING_POLL))
        }
        Err(error @ ProviderError::Unresponsive { .. }) => {
            // Held back, never sent: the offer was not tried, and its marketplace's offers
            // are not offered again until one of its searches is answered.
            ctx.offer_cache.invalidate(best.provider);
            step.phase(SessionPhase::Provisioning, error.reason(), format!("{error}; other marketplaces are tried"));
            Ok(Action::requeue(NEXT_STAGE))
        }
        Err(error) => {
            if error.next_step() == NextStep::NextOffer {
                ctx.offer_cache.invalidate(best.provider); // its listing was stale
            }
            step.status.attempts.push(Attempt {
                provider: Some(best.provider),
                offer_id: best.id.clone(),
                price_per_hour: Some(best.price_per_hour),
                cost_usd: None,
                reason: error.reason().to_string(),
                message: for_status(error.to_string()),
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
            let message = if landed_or_refused {
                format!("offer {} failed ({}); trying the next one", best.id, error.reason())
            } else {
                format!(
                    "the create on {} may have landed ({}); its listing will show it (adopted) or not, meanwhile other marketplaces are tried",
                    best.provider,
                    error.reason()
                )
            };
            step.phase(SessionPhase::Provisioning, "NextOffer", message);
            Ok(Action::requeue(NEXT_STAGE))
        }
    }
}

/// The machine is billed at the price the marketplace reports for it, which may be
/// dearer than the offer quoted (RunPod places a pod on any cloud: dstack issue
/// #1886). Above `maxPricePerHour` it is destroyed at once and the next offer is
/// tried; above the quote alone it is kept, its real price recorded and told.
async fn price_above_limit(
    step: &mut Step<'_>,
    offer: &Offer,
    instance: &Instance,
    requirements: &OfferRequirements,
) -> Result<Option<Action>> {
    let Some(price) = instance.price_per_hour else { return Ok(None) };
    // A cent's rounding is not a dearer machine.
    if price <= offer.price_per_hour * 1.01 + 0.001 {
        return Ok(None);
    }
    let quoted = offer.price_per_hour;
    match requirements.max_price_per_hour {
        Some(max) if price > max => {
            let message = format!(
                "instance {} costs ${price:.4}/h, above maxPricePerHour ${max:.4} (the offer quoted ${quoted:.4}/h); it was destroyed at once",
                instance.id
            );
            bad_host::replace(step, "PriceAboveLimit", message).await.map(Some)
        }
        _ => {
            let message = format!(
                "instance {} costs ${price:.4}/h, more than the ${quoted:.4}/h its offer quoted; the real price is what is counted",
                instance.id
            );
            step.event(true, "PricedAboveQuote", message);
            Ok(None)
        }
    }
}

fn tried_before(step: &Step<'_>, offer: &Offer) -> bool {
    step.status.attempts.iter().any(|a| a.provider == Some(offer.provider) && a.offer_id == offer.id)
}

/// The disk a rent asks for.
fn disk_gb(spec: &GpuSessionSpec) -> u32 {
    spec.disk_gb.unwrap_or(DEFAULT_DISK_GB)
}

/// Ports mapped on the machine's public address: only those `spec.ports` names. An
/// Inference session's model port stays on the machine's loopback, reached over SSH.
fn exposed_ports(spec: &GpuSessionSpec) -> Vec<u16> {
    spec.ports.clone()
}

fn create_request(step: &Step<'_>, offer: &Offer, key: &SessionKey, requirements: &OfferRequirements) -> CreateRequest {
    let spec = &step.session.spec;
    // Values from Secrets and ConfigMaps go over SSH (InputsReady), never into the marketplace's request.
    let mut env: Vec<(String, String)> =
        spec.env.iter().filter(|e| e.value_from.is_none()).map(|e| (e.name.clone(), e.value.clone())).collect();
    let ports = exposed_ports(spec);
    if spec.workload.kind == WorkloadKind::Inference
        && let Some(inference) = &spec.workload.inference
    {
        env.push(("GPU_SHOPPER_MODEL".into(), inference.model.clone()));
        env.push(("GPU_SHOPPER_MODEL_PORT".into(), inference.port_or_default().to_string()));
    }
    CreateRequest {
        offer: offer.clone(),
        label: InstanceLabel::for_session(
            &step.ctx.config.installation(),
            &step.session.uid().unwrap_or_default(),
            &step.session.namespace().unwrap_or_default(),
        ),
        ssh_public_key: key.public_openssh.clone(),
        image: spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        // The operator runs the start script itself over SSH, the same way on every marketplace.
        start_script: None,
        env,
        ports,
        disk_gb: disk_gb(spec),
        min_cuda_version: requirements.min_cuda_version.clone(),
    }
}

/// When billing is counted from: the moment the create's answer (or the adoption)
/// came, rounded up to the whole second status keeps, so status never shows more
/// than the marketplace bills (billing started at most the create call's length earlier).
fn billing_start() -> Time {
    let now = jiff::Timestamp::now();
    let whole = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    Time(if whole < now { whole + jiff::SignedDuration::from_secs(1) } else { whole })
}

fn record_rented(step: &mut Step<'_>, provider: ProviderName, instance: &Instance, offer: Option<&Offer>, why: String) {
    let now = billing_start();
    let s = &mut step.status;
    s.provider = Some(provider);
    s.instance_id = Some(instance.id.clone());
    s.offer_id = offer.map(|o| o.id.clone()).or_else(|| s.offer_id.clone());
    s.host_id = match offer {
        Some(o) => o.host_id.clone(),
        None => s.host_id.clone(),
    };
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
    super::ownership::remember(step);
    let id = instance.id.clone();
    step.phase(SessionPhase::Provisioning, "InstanceCreated", format!("instance {id} on {provider} is starting"));
    step.condition(
        types::INSTANCE_RUNNING,
        false,
        "Starting",
        format!("instance {id} was created; waiting for it to run"),
    );
    for stage in [types::SSH_READY, types::CUDA_VERIFIED, types::INPUTS_READY, types::WORKLOAD_READY] {
        step.condition(stage, Status::Unknown, "Waiting", "waiting for the previous stage");
    }
    step.condition(types::READY, Status::Unknown, "Verifying", "the machine is being proven");
}

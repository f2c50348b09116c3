//! The GpuSession reconciler: shop, rent, prove, hand over, expire, destroy.
//! One step per reconcile, each safe to repeat; status is the memory, the
//! instance label is the safety net (a crash between create and the status
//! write is healed by adopting the labelled instance).
//!
//! This file is the parent: `advance` reads as the list of steps, and every
//! module below it is a step (`rent`, `stages`, `supervise`, `running`,
//! `limits`, `teardown`) or the plumbing the steps share (`step`, `cost`,
//! `login`, `machine`, `secret`). Arrows run downward only: no module here
//! names this file, and a stage never names a sibling.

mod bad_host;
mod cost;
mod endpoint;
mod exit_watch;
mod expiry;
mod launcher;
mod limits;
mod login;
mod machine;
pub mod namespace_cap;
mod outputs;
mod ownership;
mod rekey;
mod rent;
mod requirements;
mod running;
pub mod secret;
mod sources;
mod stage;
mod stages;
mod step;
mod supervise;
mod teardown;
pub mod timeouts;

pub use rekey::REKEY_ANNOTATION;
pub use rent::DEFAULT_IMAGE;
pub use step::COST_WRITE_EVERY;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};

use super::context::Context;
use super::status;
use crate::crd::conditions::types;
use crate::crd::{GpuSession, SessionPhase};
use crate::error::{Error, Result};
use crate::provider::caller::{Urgency, calling};
use ownership::Claim;
use step::{PROVISIONING_POLL, Step};

/// Finalizer that keeps a GpuSession until its instance is confirmed destroyed.
pub const FINALIZER: &str = "gpushopper.dev/destroy-instance";

pub async fn reconcile(session: Arc<GpuSession>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let namespace = session.namespace().ok_or(Error::MissingNamespace { kind: "GpuSession" })?;
    let api: Api<GpuSession> = Api::namespaced(ctx.client.clone(), &namespace);
    // Its marketplace calls wait their turn as this namespace's (the pacer's fair share).
    let steps = finalizer(&api, FINALIZER, session.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(session) => apply(&session, &ctx).await,
            FinalizerEvent::Cleanup(session) => cleanup(&session, &api, &ctx).await,
        }
    });
    let result = calling(Urgency::Lookup, &namespace, steps).await.map_err(|e| Error::Finalizer(Box::new(e)));
    let result = match result {
        Err(error) if error.is_finalizer_of_deleted_object() => Ok(Action::await_change()),
        other => other,
    };
    ctx.metrics
        .reconcile_duration
        .get_or_create(&crate::metrics::ControllerLabels { controller: "gpusession" })
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded("gpusession", session.as_ref());
    }
    result
}

async fn apply(session: &GpuSession, ctx: &Context) -> Result<Action> {
    let mut step = Step::new(session, ctx);
    let action = advance(&mut step).await;
    // Whatever happened, keep what was learnt (an attempt, a destroyed instance) before returning.
    // Refused (409: our copy was stale): nothing is announced; the step is redone from the fresh object.
    step.store().await?;
    step.announce().await;
    track(&step);
    action
}

fn track(step: &Step<'_>) {
    let phase = step.status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into());
    let provider = step.status.provider.map(|p| p.as_str().to_string()).unwrap_or_default();
    let cost = step.status.accrued_cost_usd.unwrap_or(0.0);
    let uid = step.session.uid().unwrap_or_default();
    step.ctx.track_session(&uid, Some((phase, provider, cost)));
    track_spend(step);
}

/// What the session's machines cost so far, per marketplace: each earlier
/// attempt's settled cost, and the current machine's share of the accrued cost.
fn track_spend(step: &Step<'_>) {
    let mut per_provider: HashMap<String, f64> = HashMap::new();
    let mut earlier = 0.0;
    for attempt in &step.status.attempts {
        if let (Some(provider), Some(cost)) = (attempt.provider, attempt.cost_usd) {
            *per_provider.entry(provider.as_str().to_string()).or_default() += cost;
            earlier += cost;
        }
    }
    if let Some(provider) = step.status.provider {
        let current = (step.status.accrued_cost_usd.unwrap_or(0.0) - earlier).max(0.0);
        *per_provider.entry(provider.as_str().to_string()).or_default() += current;
    }
    let uid = step.session.uid().unwrap_or_default();
    step.ctx.track_spend(&uid, &step.session.namespace().unwrap_or_default(), per_provider);
}

/// The next step of the session's life.
async fn advance(step: &mut Step<'_>) -> Result<Action> {
    // Nothing acts on the machine status names before its marketplace shows it is this session's.
    if let Some(action) = check_ownership(step).await? {
        return Ok(action);
    }
    // An end whose status was lost after its destroy is finished as what it was.
    if teardown::resume_end(step).await? {
        return Ok(Action::await_change());
    }
    if matches!(step.status.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed)) {
        // Ended: make sure nothing bills, then wait for deletion.
        teardown::release(step).await?;
        return Ok(Action::await_change());
    }
    // Limits first: before any step that can fail or return early (a key Secret in
    // conflict, a filter gone, a marketplace down), the machine is held to them.
    if let Some(action) = limits::enforce(step).await? {
        return Ok(action);
    }
    // A replacement whose status was lost after its destroy is finished with its own reason.
    if let Some(action) = bad_host::resume(step).await? {
        return Ok(action);
    }
    // Supervision needs no key: a machine is watched whatever else is wrong.
    if step.status.instance_id.is_some()
        && let Some(action) = supervise::step(step).await?
    {
        return Ok(action);
    }
    // A session that cannot shop says why, unless a machine carrying its label waits to be adopted.
    let uid = step.session.uid().unwrap_or_default();
    if step.status.instance_id.is_none()
        && step.ctx.inventory.labelled_for(&uid).is_empty()
        && let Err((reason, message)) = requirements::effective(step).await?
    {
        step.phase(SessionPhase::Pending, reason, message.clone());
        step.condition(types::READY, false, reason, message);
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    if step.ctx.providers.is_empty() {
        let message = "no marketplace credentials are configured in the operator (VASTAI_API_KEY, TENSORDOCK_AUTH_ID + TENSORDOCK_API_TOKEN, RUNPOD_API_KEY): nothing can be rented until one is set";
        step.phase(SessionPhase::Pending, "NoProvidersConfigured", message);
        step.condition(types::READY, false, "NoProvidersConfigured", message);
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let key = match secret::ensure(step.session, step.ctx).await? {
        Ok((key, created)) => {
            if created && step.status.instance_id.is_some() && step.status.released_at.is_none() {
                secret::key_secret_recreated(step, &key).await;
            }
            key
        }
        Err(conflict) => {
            step.phase(SessionPhase::Pending, "SecretConflict", conflict.clone());
            step.condition(types::READY, false, "SecretConflict", conflict);
            return Ok(Action::requeue(limits::requeue_within(step, Duration::from_secs(60))));
        }
    };
    step.status.secret_name = Some(secret::secret_name(step.session));
    // An Inference session's Service and gateway exist before anything is rented.
    if let Some(action) = endpoint::prepare(step).await? {
        return Ok(action);
    }
    // A machine carrying this session's label that status does not hold yet is adopted first.
    if step.status.instance_id.is_none() && rent::adopt_labelled(step, &key).await? {
        return Ok(Action::requeue(PROVISIONING_POLL));
    }
    if step.status.instance_id.is_none() {
        // Secrets, ConfigMaps and inputs are checked before anything is rented.
        if let Some(action) = check_sources(step).await? {
            return Ok(action);
        }
        return rent::step(step, &key).await;
    }
    if step.condition_is_true(types::READY) {
        let key = rekey::step(step, key).await?;
        let action = running::step(step, &key).await?;
        return endpoint::observe(step, action).await;
    }
    stages::run(step, &key).await
}

/// `Some` when the recorded machine cannot be acted on yet, or is not this session's:
/// then it is dropped from status untouched and the session fails (its own machines,
/// if any, carry its label, and the sweeper destroys them).
async fn check_ownership(step: &mut Step<'_>) -> Result<Option<Action>> {
    if step.status.instance_id.is_none() || step.status.released_at.is_some() {
        return Ok(None);
    }
    match ownership::claim(step, true).await? {
        Claim::Ours => {
            ownership::follow_listed_endpoint(step);
            Ok(None)
        }
        Claim::Unseen => Ok(None),
        Claim::AwaitingListing => Ok(Some(Action::requeue(PROVISIONING_POLL))),
        Claim::NotOurs => {
            let message = ownership::disown(step);
            teardown::end(step, SessionPhase::Failed, ownership::NOT_OWNED, message).await?;
            Ok(Some(Action::await_change()))
        }
    }
}

/// `Some` when a source the session brings is missing or refused: it stays Pending, nothing rented.
async fn check_sources(step: &mut Step<'_>) -> Result<Option<Action>> {
    if !sources::to_check(step) {
        return Ok(None);
    }
    match sources::resolve(step, Duration::from_secs(60)).await? {
        Ok(_) => Ok(None),
        Err(problem) => {
            let message = format!("{}; nothing is rented until it is fixed", problem.message);
            step.condition(types::INPUTS_READY, false, problem.reason, message.clone());
            step.condition(types::READY, false, problem.reason, message.clone());
            step.phase(SessionPhase::Pending, problem.reason, message);
            Ok(Some(Action::requeue(Duration::from_secs(15))))
        }
    }
}

/// Deletion: destroy the instance (and any labelled one never recorded) before the finalizer goes.
async fn cleanup(session: &GpuSession, api: &Api<GpuSession>, ctx: &Context) -> Result<Action> {
    let mut step = Step::new(session, ctx);
    step.deleting = true;
    let destroyed = destroy_everything(&mut step).await;
    // A deletion that is done at once writes no status (the object is going); one that
    // must wait for the marketplace shows Terminating while it does.
    if destroyed.is_err() && step.status.phase != Some(SessionPhase::Terminating) {
        step.phase(SessionPhase::Terminating, "Deleting", "the session was deleted; destroying its instance");
        let _ = status::apply_at(api, &session.name_any(), None, &step.status).await;
    }
    // Deletion writes no status to wait for: a DestroyFailed is announced at once.
    step.announce().await;
    destroyed?;
    let note = match &step.status.instance_id {
        Some(id) => format!(
            "instance {id} on {} is destroyed; nothing bills any more",
            step.status.provider.map(|p| p.as_str()).unwrap_or("?")
        ),
        None => "no instance was rented for this session; nothing to destroy".to_string(),
    };
    // The status goes with the session: the Event keeps what it cost, for `gpu-shopper cost`.
    let spent = crate::controller::spend_record::SpendRecord {
        cost_usd: step.status.accrued_cost_usd.unwrap_or(0.0),
        consumer: session.spec.consumer.clone(),
    };
    step.event(false, "CleanupComplete", format!("{note}{}", spent.note_suffix()));
    step.announce().await;
    track_spend(&step);
    ctx.forget_spend(&session.uid().unwrap_or_default());
    ctx.track_session(&session.uid().unwrap_or_default(), None);
    ctx.forget_machine_checks(&session.uid().unwrap_or_default());
    ctx.exit_watches.forget(&session.uid().unwrap_or_default());
    ctx.owned_machines.forget(&session.uid().unwrap_or_default());
    tracing::info!(session = %session.name_any(), namespace = ?session.namespace(), "cleanup complete; finalizer released");
    Ok(Action::await_change())
}

async fn destroy_everything(step: &mut Step<'_>) -> Result<()> {
    teardown::release(step).await?;
    teardown::destroy_unrecorded(step).await
}

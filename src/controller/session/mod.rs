//! The GpuSession reconciler: shop, rent, prove, hand over, expire, destroy.
//! One step per reconcile, each safe to repeat; status is the memory, the
//! instance label is the safety net (a crash between create and the status
//! write is healed by adopting the labelled instance).

mod limits;
mod login;
mod rekey;
mod rent;
mod running;
pub mod secret;
mod stages;
mod supervise;
mod teardown;
pub mod timeouts;

pub use rekey::REKEY_ANNOTATION;
pub use rent::DEFAULT_IMAGE;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::status;
use crate::controller::events::{Event, EventType};
use crate::crd::conditions::{self, ConditionUpdate, Status, types};
use crate::crd::{GpuSession, GpuSessionStatus, SessionPhase};
use crate::error::{Error, Result};

/// Finalizer that keeps a GpuSession until its instance is confirmed destroyed.
pub const FINALIZER: &str = "gpushopper.dev/destroy-instance";

/// How soon to look again while a machine is being rented or proven.
const PROVISIONING_POLL: Duration = Duration::from_secs(2);

/// How often a running session's cost alone is worth a status write.
pub const COST_WRITE_EVERY: Duration = Duration::from_secs(300);

/// After a stage passes, the watch event of our own status write starts the next
/// stage with the fresh object; this requeue is only the fallback. (Requeueing at
/// once raced the watch: the next reconcile read a stale copy and its write got 409.)
const NEXT_STAGE: Duration = Duration::from_secs(1);

pub async fn reconcile(session: Arc<GpuSession>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let namespace = session.namespace().ok_or(Error::MissingNamespace { kind: "GpuSession" })?;
    let api: Api<GpuSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, session.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(session) => apply(&session, &ctx).await,
            FinalizerEvent::Cleanup(session) => cleanup(&session, &api, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
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

/// One reconcile's working state: the session, the status being built, and what
/// to announce once that status is written.
pub(crate) struct Step<'a> {
    pub session: &'a GpuSession,
    pub ctx: &'a Context,
    pub status: GpuSessionStatus,
    pub now: Timestamp,
    /// The status as last stored, and the resourceVersion that store produced.
    stored: GpuSessionStatus,
    resource_version: Option<String>,
    /// A machine was destroyed in this step: the status that says so must be stored.
    pub destroyed_a_machine: bool,
    /// The session is being deleted: its CleanupComplete Event names the destroyed machine.
    pub deleting: bool,
    /// Events and observations held until the status they describe is stored, so a
    /// step that is redone after a refused write does not announce itself twice.
    announcements: Vec<Announcement>,
}

enum Announcement {
    Event(Box<Event>),
    TimeToReady(f64),
}

impl<'a> Step<'a> {
    fn new(session: &'a GpuSession, ctx: &'a Context) -> Self {
        let stored = session.status.clone().unwrap_or_default();
        let mut status = stored.clone();
        status.observed_generation = session.meta().generation;
        Step {
            session,
            ctx,
            status,
            now: Timestamp::now(),
            stored,
            resource_version: session.resource_version(),
            destroyed_a_machine: false,
            deleting: false,
            announcements: Vec::new(),
        }
    }

    /// The status as it was last stored (before this step changed anything).
    pub fn stored_status(&self) -> &GpuSessionStatus {
        &self.stored
    }

    fn api(&self) -> Api<GpuSession> {
        Api::namespaced(self.ctx.client.clone(), &self.session.namespace().unwrap_or_default())
    }

    /// Stores the status now, before a step goes on (a create intent must be
    /// stored before the create is sent). Refused when the object changed since
    /// it was read, so nothing is sent on a stale copy.
    pub async fn persist(&mut self) -> Result<()> {
        let name = self.session.name_any();
        self.resource_version =
            status::apply_at(&self.api(), &name, self.resource_version.clone(), &self.status).await?;
        self.stored = self.status.clone();
        Ok(())
    }

    /// Nothing a user reads changed but the running cost, and it was stored less than
    /// `COST_WRITE_EVERY` ago: not worth a write (a running session would otherwise
    /// write every time it is looked at).
    fn only_cost_moved_recently(&self) -> bool {
        let mut without_cost = self.status.clone();
        without_cost.accrued_cost_usd = self.stored.accrued_cost_usd;
        without_cost.accrued_cost_at = self.stored.accrued_cost_at.clone();
        let stored_at = self.stored.accrued_cost_at.as_ref().map(|t| t.0);
        without_cost == self.stored
            && stored_at.is_some_and(|at| self.seconds_since(at) < COST_WRITE_EVERY.as_secs_f64())
    }

    /// Stores the status if it changed. After a machine was destroyed the write
    /// is retried, without the stale-copy guard if need be, until it is stored:
    /// a session must never show a machine that no longer exists as running.
    async fn store(&mut self) -> Result<()> {
        if self.status == self.stored || self.only_cost_moved_recently() {
            return Ok(());
        }
        match self.persist().await {
            Err(error) if self.destroyed_a_machine => {
                tracing::warn!(session = %self.session.name_any(), %error, "status after a destroy was refused; writing it again");
                let name = self.session.name_any();
                let mut last = error;
                for delay_ms in [0u64, 200, 1000, 3000] {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    match status::apply_at(&self.api(), &name, None, &self.status).await {
                        Ok(version) => {
                            self.resource_version = version;
                            self.stored = self.status.clone();
                            return Ok(());
                        }
                        Err(error) => last = error,
                    }
                }
                Err(last)
            }
            other => other,
        }
    }

    pub fn time(&self) -> Time {
        Time(self.now)
    }

    pub fn condition(&mut self, type_: &str, status: impl Into<Status>, reason: &str, message: impl Into<String>) {
        let generation = self.session.meta().generation;
        let update =
            ConditionUpdate { type_, status: status.into(), reason, message: limits::for_status(message.into()) };
        let now = self.time();
        conditions::set(&mut self.status.conditions, update, generation, now);
    }

    pub fn condition_is_true(&self, type_: &str) -> bool {
        conditions::is_true(&self.status.conditions, type_)
    }

    /// When `type_` last became True.
    pub fn true_since(&self, type_: &str) -> Option<Timestamp> {
        conditions::find(&self.status.conditions, type_)
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.0)
    }

    pub fn phase(&mut self, phase: SessionPhase, reason: &str, message: impl Into<String>) {
        self.status.phase = Some(phase);
        self.status.reason = Some(reason.to_string());
        self.status.message = Some(limits::for_status(message.into()));
    }

    /// Queues an Event on the session, published by `announce` once the status is stored.
    pub fn event(&mut self, warning: bool, reason: &str, note: impl Into<String>) {
        let note: String = note.into();
        self.announcements.push(Announcement::Event(Box::new(Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        })));
    }

    /// Records the time from creation to Ready, once the Ready status is stored.
    pub fn observe_time_to_ready(&mut self) {
        if let Some(created) = self.session.metadata.creation_timestamp.as_ref() {
            self.announcements.push(Announcement::TimeToReady(self.now.duration_since(created.0).as_secs_f64()));
        }
    }

    /// Publishes the queued Events and observations; a failure to record an Event is logged, not fatal.
    async fn announce(&mut self) {
        for announcement in std::mem::take(&mut self.announcements) {
            match announcement {
                Announcement::Event(event) => {
                    if let Err(error) = self.ctx.events.publish(&event, &self.session.object_ref(&())).await {
                        tracing::warn!(session = %self.session.name_any(), %error, "could not publish an event");
                    }
                }
                Announcement::TimeToReady(seconds) => self.ctx.metrics.time_to_ready.observe(seconds),
            }
        }
    }

    pub fn seconds_since(&self, then: Timestamp) -> f64 {
        self.now.duration_since(then).as_secs_f64()
    }
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
    if matches!(step.status.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed)) {
        // Ended: make sure nothing bills, then wait for deletion.
        teardown::release(step).await?;
        return Ok(Action::await_change());
    }
    // A session that cannot shop says why, unless a machine carrying its label waits to be adopted.
    let uid = step.session.uid().unwrap_or_default();
    if step.status.instance_id.is_none()
        && step.ctx.inventory.labelled_for(&uid).is_empty()
        && let Err((reason, message)) = rent::effective_requirements(step).await?
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
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    step.status.secret_name = Some(secret::secret_name(step.session));
    // A machine carrying this session's label that status does not hold yet is adopted first.
    if step.status.instance_id.is_none() && rent::adopt_labelled(step, &key).await? {
        return Ok(Action::requeue(PROVISIONING_POLL));
    }
    if let Some(action) = limits::enforce(step).await? {
        return Ok(action);
    }
    if step.status.instance_id.is_some()
        && let Some(action) = supervise::step(step).await?
    {
        return Ok(action);
    }
    if step.status.instance_id.is_none() {
        return rent::step(step, &key).await;
    }
    if step.condition_is_true(types::READY) {
        let key = rekey::step(step, key).await?;
        return running::step(step, &key).await;
    }
    stages::step(step, &key).await
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
    step.event(false, "CleanupComplete", note);
    step.announce().await;
    track_spend(&step);
    ctx.forget_spend(&session.uid().unwrap_or_default());
    ctx.track_session(&session.uid().unwrap_or_default(), None);
    ctx.forget_machine_checks(&session.uid().unwrap_or_default());
    tracing::info!(session = %session.name_any(), namespace = ?session.namespace(), "cleanup complete; finalizer released");
    Ok(Action::await_change())
}

async fn destroy_everything(step: &mut Step<'_>) -> Result<()> {
    teardown::release(step).await?;
    teardown::destroy_unrecorded(step).await
}

//! The GpuSession reconciler. This is the skeleton the lifecycle grows on: the
//! finalizer guards deletion, and status reports what the controller knows.
//! Shopping, renting and proving the machine are not built yet; a session
//! waits in Pending with a condition that says so.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::status;
use crate::crd::conditions::{self, ConditionUpdate, types};
use crate::crd::{GpuOfferFilter, GpuSession, GpuSessionStatus, SessionPhase};
use crate::error::{Error, Result};

/// Finalizer that keeps a GpuSession until its instance is confirmed destroyed.
pub const FINALIZER: &str = "gpushopper.dev/destroy-instance";

pub async fn reconcile(session: Arc<GpuSession>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let namespace = session.namespace().ok_or(Error::MissingNamespace { kind: "GpuSession" })?;
    let api: Api<GpuSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, session.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(session) => apply(&session, &api, &ctx).await,
            FinalizerEvent::Cleanup(session) => cleanup(&session, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconcile_duration
        .get_or_create(&crate::metrics::ControllerLabels { controller: "gpusession" })
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded("gpusession", session.as_ref());
    }
    result
}

/// What the session waits for, as (reason, message). `None` when nothing blocks it.
async fn blocker(session: &GpuSession, ctx: &Context) -> Result<(&'static str, String)> {
    if let Some(filter_ref) = &session.spec.offer_filter_ref {
        let namespace = session.namespace().unwrap_or_default();
        let filters: Api<GpuOfferFilter> = Api::namespaced(ctx.client.clone(), &namespace);
        if filters.get_opt(&filter_ref.name).await?.is_none() {
            return Ok((
                "OfferFilterNotFound",
                format!(
                    "GpuOfferFilter {:?} does not exist in namespace {namespace:?}: create it or fix spec.offerFilterRef.name",
                    filter_ref.name
                ),
            ));
        }
    }
    if ctx.config.credentials.configured().is_empty() {
        return Ok((
            "NoProvidersConfigured",
            "no marketplace credentials are configured in the operator (VASTAI_API_KEY, TENSORDOCK_AUTH_ID + TENSORDOCK_API_TOKEN, RUNPOD_API_KEY): nothing can be rented until one is set".into(),
        ));
    }
    Ok((
        "ProvisioningNotAvailable",
        "this build of gpu-shopper accepts sessions but cannot rent machines yet; the session waits in Pending".into(),
    ))
}

async fn apply(session: &GpuSession, api: &Api<GpuSession>, ctx: &Context) -> Result<Action> {
    let (reason, message) = blocker(session, ctx).await?;
    let generation = session.meta().generation;
    let current = session.status.clone().unwrap_or_default();
    let mut desired = GpuSessionStatus {
        phase: Some(SessionPhase::Pending),
        reason: Some(reason.to_string()),
        message: Some(message.clone()),
        observed_generation: generation,
        ..current.clone()
    };
    let now = Time(Timestamp::now());
    conditions::set(
        &mut desired.conditions,
        ConditionUpdate { type_: types::READY, status: false, reason, message },
        generation,
        now,
    );
    // `conditions::set` keeps transition times of unchanged conditions, so equal means nothing to write.
    if current != desired {
        status::apply(api, &session.name_any(), &desired).await?;
    }
    // The filter may be created later and credentials do not change at runtime; look again now and then.
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Runs before the finalizer is removed. No instance can exist yet (renting is
/// not built), so there is nothing to destroy; the Event records that the step ran.
async fn cleanup(session: &GpuSession, ctx: &Context) -> Result<Action> {
    let note = match session.status.as_ref().and_then(|s| s.instance_id.as_deref()) {
        Some(id) => format!("instance {id} is no longer tracked by this session"),
        None => "no instance was rented for this session; nothing to destroy".to_string(),
    };
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "CleanupComplete".into(),
                note: Some(note),
                action: "Cleanup".into(),
                secondary: None,
            },
            &session.object_ref(&()),
        )
        .await?;
    tracing::info!(session = %session.name_any(), namespace = ?session.namespace(), "cleanup complete; finalizer released");
    Ok(Action::await_change())
}

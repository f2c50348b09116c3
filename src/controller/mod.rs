//! The reconcilers: one controller for GpuSessions (which own the Secrets they
//! create) and one for GpuOfferFilters, run side by side.

pub mod context;
pub mod events;
pub mod identity;
pub mod kube_client;
pub mod leader;
pub mod offer_filter;
pub mod scope;
pub mod session;
pub mod spend_record;
pub mod status;
pub mod sweeper;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

pub use context::Context;
pub use scope::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, scoped, watch_scopes, watched_apis};

use crate::crd::{GpuOfferFilter, GpuSession};
use crate::http::Health;

/// Why the controllers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the {kind} CustomResourceDefinition is not installed in this cluster: install the CRDs first (kubectl apply -f crds/, or `gpu-shopper crds | kubectl apply -f -`)"
    )]
    CrdMissing { kind: &'static str },
    #[error("cannot reach the Kubernetes API server to list {kind}s: {source}")]
    Api { kind: &'static str, source: kube::Error },
    #[error("leader election failed: {0}")]
    LeaderElection(String),
    #[error("lost leadership; exiting so that only the new leader reconciles")]
    LostLeadership,
    #[error(
        "could not confirm the leader lease's renewal in time (is the API server reachable?); stopped calling marketplaces and exiting before the lease can expire"
    )]
    Fenced,
}

/// Runs both controllers until SIGTERM or Ctrl-C.
pub async fn run(ctx: Arc<Context>, health: Arc<Health>) -> Result<(), StartError> {
    let client = ctx.client.clone();
    let stopped = stop_signal().boxed().shared();
    // One set of controllers per watched namespace (each needs only that namespace's
    // Role), or one for the whole cluster.
    let namespaces = watch_scopes(&ctx.config.watch_namespaces);
    for namespace in &namespaces {
        ensure_crd_served::<GpuSession>(&client, namespace.as_deref(), "GpuSession").await?;
        ensure_crd_served::<GpuOfferFilter>(&client, namespace.as_deref(), "GpuOfferFilter").await?;
    }

    let leadership = match &ctx.config.leader_election {
        None => {
            ctx.metrics.leader.set(1);
            None
        }
        Some(election) => {
            health.standby.store(true, Ordering::Relaxed);
            let identity = ctx.config.instance_name.clone().unwrap_or_else(random_identity);
            let candidate = leader::Candidate {
                lease_name: election.lease_name.clone(),
                namespace: election.lease_namespace.clone(),
                identity,
                duration: election.lease_duration,
            };
            let acquired =
                leader::acquire(ctx.kube_config.clone(), ctx.metrics.clone(), candidate, ctx.marketplace_gate.clone());
            // A standby told to stop stops at once: it holds nothing.
            let leadership = tokio::select! {
                acquired = acquired => acquired.map_err(StartError::LeaderElection)?,
                _ = stopped.clone() => {
                    tracing::info!("stopped while waiting to lead");
                    return Ok(());
                }
            };
            health.standby.store(false, Ordering::Relaxed);
            ctx.metrics.leader.set(1);
            Some(leadership)
        }
    };

    // Sessions the inventory wants reconciled now go to their namespace's controller.
    let mut wake_routes = std::collections::HashMap::new();
    // A burst of new sessions waits in the queue as names, not as a thousand reconciles
    // each holding its working state and a request for the API server (docs/performance.md).
    let bounded = kube::runtime::controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles);
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in &namespaces {
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        wake_routes.insert(namespace.clone(), wake);
        let woken = futures::stream::unfold(woken, |mut woken| async move { Some((woken.recv().await?, woken)) });
        // The Secrets the operator made wake their session when they change (a key Secret
        // deleted, say). Only their metadata is watched and nothing is kept: private keys are
        // read when a step needs one and never cached, and a label anyone can set on their own
        // Secrets costs the operator no memory.
        let owned_secrets = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
        let scope = namespace.as_deref();
        let secret_stream =
            watcher(scoped::<PartialObjectMeta<Secret>>(&client, scope), owned_secrets).default_backoff();
        let (session_store, session_stream) = cached_watch::<GpuSession>(&client, scope, watcher::Config::default());
        let session_controller = Controller::for_stream(session_stream.applied_objects(), session_store)
            .with_config(bounded.clone())
            .owns_stream(secret_stream.touched_objects())
            .reconcile_on(woken)
            .shutdown_on_signal();
        let (filter_store, filter_stream) = cached_watch::<GpuOfferFilter>(&client, scope, watcher::Config::default());
        let filter_controller = Controller::for_stream(filter_stream.applied_objects(), filter_store)
            .with_config(bounded.clone())
            .shutdown_on_signal();
        stores.push(context::NamespaceStores {
            namespace: namespace.clone(),
            sessions: session_controller.store(),
            filters: filter_controller.store(),
        });
        controllers.push(
            session_controller
                .run(session::reconcile, context::error_policy, ctx.clone())
                .for_each(|result| async move { context::log_outcome("gpusession", result) })
                .boxed(),
        );
        controllers.push(
            filter_controller
                .run(offer_filter::reconcile, context::error_policy, ctx.clone())
                .for_each(|result| async move { context::log_outcome("gpuofferfilter", result) })
                .boxed(),
        );
    }
    ctx.set_stores(context::Stores(stores));
    let router = tokio::spawn(route_wakes(ctx.woken_sessions(), wake_routes));

    let sweeper = tokio::spawn(sweeper::run(ctx.clone()));
    let event_pruner = tokio::spawn(prune_events_on_a_clock(ctx.clone()));
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(deployment_id = %ctx.config.deployment_id, installation = %ctx.config.installation(), "controllers running");
    let mut leadership = leadership;
    let outcome = {
        let lost = async {
            match leadership.as_mut() {
                Some(leadership) => leadership.lost().await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = futures::future::join_all(controllers) => Ok(()),
            // A graceful stop waits for reconciles in flight, but not past the pod's grace period.
            _ = async { stopped.clone().await; tokio::time::sleep(GRACEFUL_STOP).await } => {
                tracing::warn!("reconciles still running {GRACEFUL_STOP:?} after the stop signal; stopping anyway");
                Ok(())
            }
            loss = lost => Err(match loss {
                leader::Loss::Lost => StartError::LostLeadership,
                leader::Loss::Fenced => StartError::Fenced,
            }),
        }
    };
    sweeper.abort();
    event_pruner.abort();
    router.abort();
    health.ready.store(false, Ordering::Relaxed);
    tracing::info!("controllers stopped");
    // A graceful stop hands the lease over at once; a lost or fenced one is not ours to release.
    if let (Ok(()), Some(leadership)) = (&outcome, leadership) {
        leadership.release().await;
    }
    outcome
}

/// How long reconciles in flight may finish after SIGTERM or Ctrl-C (the
/// kubelet waits 30 s before it kills the pod; the Lease is released after).
const GRACEFUL_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first awaited, so a signal in between is not missed.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => futures::future::pending().await,
        }
    }
}

/// Hands each session to wake to the controller of its namespace.
async fn route_wakes(
    woken: impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<GpuSession>>,
    routes: std::collections::HashMap<
        Option<String>,
        tokio::sync::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<GpuSession>>,
    >,
) {
    futures::pin_mut!(woken);
    while let Some(session) = woken.next().await {
        let route = routes.get(&None).or_else(|| routes.get(&session.namespace));
        if let Some(route) = route {
            let _ = route.send(session);
        }
    }
}

fn random_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gpu-shopper".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

async fn ensure_crd_served<K>(client: &Client, namespace: Option<&str>, kind: &'static str) -> Result<(), StartError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match scoped::<K>(client, namespace).list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartError::CrdMissing { kind }),
        Err(source) => Err(StartError::Api { kind, source }),
    }
}

/// A watch of `K` in `scope`, kept (trimmed) in the store returned beside it.
fn cached_watch<K>(
    client: &Client,
    scope: Option<&str>,
    config: watcher::Config,
) -> (reflector::Store<K>, impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    (store, reflector(writer, watcher(scoped::<K>(client, scope), config).modify(trim_for_cache::<K>)))
}

/// What the watches' caches keep of an object: all but the managed-fields bookkeeping
/// and kubectl's copy of the last applied manifest, which the operator never reads and
/// which made up most of a cached session (docs/performance.md). Nothing is ever written
/// back from a cached copy as a whole, so the trimmed fields stay as they are on the server.
fn trim_for_cache<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Prunes the Event publisher's series every minute, for as long as the controllers run.
async fn prune_events_on_a_clock(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        ctx.events.prune().await;
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    #[test]
    fn the_cache_keeps_every_annotation_but_kubectls_copy_of_the_manifest() {
        let mut session: GpuSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession",
            "metadata": {
                "name": "s",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\": {}}",
                    session::REKEY_ANNOTATION: "now",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {},
        }))
        .unwrap();
        trim_for_cache(&mut session);
        assert!(session.managed_fields().is_empty());
        assert_eq!(session.annotations().keys().collect::<Vec<_>>(), [session::REKEY_ANNOTATION]);
    }
}

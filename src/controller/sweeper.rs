//! The orphan sweeper: instances labelled with this deployment's id that no
//! live GpuSession owns are destroyed once they have been orphans for a grace
//! period. Instances of other deployments are never touched: the marketplace
//! listing is already filtered by our deployment id. When the sessions cannot
//! be listed, nothing is destroyed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::context::{CONTROLLER_NAME, Context};
use crate::crd::{GpuSession, ProviderName};
use crate::metrics::ProviderLabels;
use crate::provider::InstanceLabel;

type Seen = HashMap<(ProviderName, String), Instant>;

/// Sweeps every `ORPHAN_SWEEP_INTERVAL` until the task is aborted.
pub async fn run(ctx: Arc<Context>) {
    let mut seen = Seen::new();
    loop {
        tokio::time::sleep(ctx.config.orphan_sweep_interval).await;
        sweep(&ctx, &mut seen).await;
    }
}

/// One pass. `seen` remembers since when each orphan has been one.
pub async fn sweep(ctx: &Context, seen: &mut Seen) {
    let sessions: Api<GpuSession> = match &ctx.config.watch_namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    let live: HashSet<String> = match sessions.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items.iter().filter_map(|s| s.uid()).collect(),
        Err(error) => {
            tracing::warn!(%error, "orphan sweep skipped: cannot list GpuSessions, so nothing may be destroyed");
            return;
        }
    };
    let mut still_orphans = HashSet::new();
    for provider in &ctx.providers {
        let instances = match provider.list_instances(&ctx.config.deployment_id).await {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(provider = %provider.name(), %error, "orphan sweep could not list instances");
                continue;
            }
        };
        for instance in instances {
            let Some(label) = instance.label.clone() else { continue };
            if label.deployment_id != ctx.config.deployment_id || live.contains(&label.session_uid) {
                continue;
            }
            let key = (provider.name(), instance.id.clone());
            still_orphans.insert(key.clone());
            let first = *seen.entry(key.clone()).or_insert_with(|| {
                ctx.metrics.orphans_detected.get_or_create(&ProviderLabels { provider: provider.name().as_str() }).inc();
                tracing::warn!(provider = %provider.name(), instance = %instance.id, %label, "orphan instance detected");
                Instant::now()
            });
            if first.elapsed() < ctx.config.orphan_grace_period {
                continue;
            }
            match provider.destroy_instance(&instance.id).await {
                Ok(()) => {
                    seen.remove(&key);
                    still_orphans.remove(&key);
                    tracing::warn!(provider = %provider.name(), instance = %instance.id, "orphan instance destroyed");
                    record_event(ctx, provider.name(), &instance.id, &label).await;
                }
                Err(error) => {
                    ctx.metrics
                        .destroy_failures
                        .get_or_create(&ProviderLabels { provider: provider.name().as_str() })
                        .inc();
                    tracing::warn!(provider = %provider.name(), instance = %instance.id, %error, "could not destroy an orphan; will retry");
                }
            }
        }
    }
    seen.retain(|key, _| still_orphans.contains(key));
}

/// An Event about the destroyed orphan, on the (gone) GpuSession it belonged to.
async fn record_event(ctx: &Context, provider: ProviderName, instance_id: &str, label: &InstanceLabel) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    let namespace = ctx.config.watch_namespace.clone().unwrap_or_else(|| "default".into());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some("gpu-shopper-orphan-".into()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("gpushopper.dev/v1alpha1".into()),
            kind: Some("GpuSession".into()),
            namespace: Some(namespace.clone()),
            name: Some(label.to_string()),
            uid: Some(label.session_uid.clone()),
            ..Default::default()
        },
        reason: Some("OrphanDestroyed".into()),
        message: Some(format!(
            "instance {instance_id} on {provider} was labelled for this deployment but no live GpuSession owned it; destroyed"
        )),
        type_: Some("Warning".into()),
        source: Some(EventSource { component: Some(CONTROLLER_NAME.into()), host: None }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, "could not record the orphan event");
    }
}

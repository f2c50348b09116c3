//! What the gateway tells the cluster: a Lease it renews while it runs, whose
//! annotation names the machine it serves (the operator reads it for the
//! session's EndpointReady condition), and an Event on the session when a
//! machine presents a host key other than the pinned one.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};

use super::args::GatewayArgs;
use super::source::{Cluster, Source};

pub use crate::crd::session::{GATEWAY_RENEW_EVERY as RENEW_EVERY, GATEWAY_SERVING_ANNOTATION as SERVING_ANNOTATION};

#[derive(Clone)]
pub struct Reporter {
    cluster: Cluster,
    leases: Api<Lease>,
    lease: String,
    pod: String,
    serving: Arc<Mutex<String>>,
    recorder: Recorder,
}

impl Reporter {
    /// A reporter for a gateway in the cluster with a Lease to renew; none for a static run.
    pub fn new(source: &Source, args: &GatewayArgs) -> Option<Reporter> {
        let cluster = source.cluster.clone()?;
        let lease = args.lease.clone()?;
        let recorder = Recorder::new(
            cluster.client.clone(),
            EventReporter { controller: "gpu-shopper-gateway".into(), instance: Some(args.pod_name.clone()) },
        );
        Some(Reporter {
            leases: Api::namespaced(cluster.client.clone(), &cluster.namespace),
            cluster,
            lease,
            pod: args.pod_name.clone(),
            serving: Arc::default(),
            recorder,
        })
    }

    /// The gateway now serves `instance` (or nothing): said at once, not at the next renewal.
    pub async fn serving(&self, instance: Option<&str>) {
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = instance.unwrap_or_default().to_string();
        self.renew().await;
    }

    /// Renews the Lease every `RENEW_EVERY`.
    pub async fn renew_on_a_clock(self) {
        loop {
            self.renew().await;
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    async fn renew(&self) {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let patch = serde_json::json!({
            "metadata": {"annotations": {SERVING_ANNOTATION: serving}},
            "spec": {
                "holderIdentity": self.pod,
                "renewTime": MicroTime(jiff::Timestamp::now()),
                "leaseDurationSeconds": (RENEW_EVERY.as_secs() * 3) as i32,
            },
        });
        if let Err(error) = self.leases.patch(&self.lease, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(lease = %self.lease, %error, "cannot renew the gateway's Lease");
        }
    }

    /// A machine presented another host key than the pinned one: said on the session.
    pub async fn host_key_changed(&self, message: &str) {
        let regarding = ObjectReference {
            api_version: Some("gpushopper.dev/v1alpha1".into()),
            kind: Some("GpuSession".into()),
            name: Some(self.cluster.session.clone()),
            namespace: Some(self.cluster.namespace.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "HostKeyChanged".into(),
            note: Some(format!("the gateway refused the machine: {message}").chars().take(1000).collect()),
            action: "Connect".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &regarding).await {
            tracing::warn!(%error, "cannot record the HostKeyChanged Event");
        }
    }
}

//! A GpuSession test harness: the operator binary against a real
//! kube-apiserver and the simulated marketplaces, in a namespace of its own.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{GpuSession, SessionPhase};
use gpu_shopper::simulator::market::{Host, Market};
use gpu_shopper::simulator::{self, SimulatorHandle};

use super::*;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Harness {
    pub client: Client,
    pub ns: String,
    pub sim: SimulatorHandle,
    pub controller: ControllerProcess,
    pub sessions: Api<GpuSession>,
}

pub fn fast_market() -> Market {
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 150;
    market.inference.load_ms = 300;
    market
}

/// The fast market plus host 4199: a 4090 like 4101 that really has the CUDA 12.9 it advertises.
pub fn market_with_honest_4199(price_per_hour: f64) -> Market {
    let mut market = fast_market();
    let mut honest: Host = market.hosts.iter().find(|h| h.id == "4101").unwrap().clone();
    honest.id = "4199".into();
    honest.real_cuda = None;
    honest.price_per_hour = price_per_hour;
    market.hosts.push(honest);
    market
}

impl Harness {
    pub async fn new(prefix: &str, market: Market) -> Self {
        Self::with_env(prefix, market, &[]).await
    }

    /// Like `new`, with more environment for the controller (later entries win).
    pub async fn with_env(prefix: &str, market: Market, extra_env: &[(&str, &str)]) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = namespace(&client, prefix).await;
        let sim = simulator::start(market, 0).await.unwrap();
        let mut env: Vec<(&str, String)> = sim.env();
        env.push(("ORPHAN_SWEEP_INTERVAL", "1s".into()));
        env.push(("ORPHAN_GRACE_PERIOD", "2s".into()));
        env.push(("STRAY_GRACE_PERIOD", "2s".into()));
        env.push(("MACHINE_CHECK_INTERVAL", "1s".into()));
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let controller = ControllerProcess::start_with_env(&ns, &env_refs);
        controller.wait_ready().await;
        let sessions = Api::namespaced(client.clone(), &ns);
        Harness { client, ns, sim, controller, sessions }
    }

    pub async fn apply(&self, name: &str, spec: Value) -> GpuSession {
        let session: GpuSession = serde_json::from_value(json!({
            "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.sessions.create(&PostParams::default(), &session).await.unwrap()
    }

    pub async fn wait_until(&self, name: &str, what: &str, done: impl Fn(&GpuSession) -> bool) -> GpuSession {
        let sessions = self.sessions.clone();
        let log_path = self.controller.log_path.clone();
        let result = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(s) = sessions.get(name).await
                    && done(&s)
                {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        match result {
            Ok(session) => session,
            Err(_) => {
                let status = sessions.get(name).await.ok().and_then(|s| s.status);
                panic!(
                    "{name}: timed out waiting for {what}; status: {status:#?}; controller log: {}",
                    log_path.display()
                )
            }
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: SessionPhase) -> GpuSession {
        self.wait_until(name, &format!("phase {phase:?}"), |s| s.status.as_ref().and_then(|st| st.phase) == Some(phase))
            .await
    }

    pub async fn wait_ready(&self, name: &str) -> GpuSession {
        self.wait_until(name, "Ready", |s| {
            s.status.as_ref().and_then(|st| find(&st.conditions, types::READY)).is_some_and(|c| c.status == "True")
        })
        .await
    }

    pub async fn delete_and_wait_gone(&self, name: &str) {
        self.sessions.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for(&format!("{name} to be gone"), WAIT, || async {
            self.sessions.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }

    /// Instances of this test (labelled with its deployment id, the namespace) still alive.
    pub fn live_instances(&self) -> Vec<String> {
        let label = label_prefix(&self.ns);
        self.sim.instances().into_iter().filter(|i| !i.destroyed && i.label.starts_with(&label)).map(|i| i.id).collect()
    }

    pub async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// What the test's operator serves at /metrics.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.controller.http_port);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Waits for an Event with `reason` in the test's namespace: Events are
    /// recorded after what they report (a destroy once confirmed), not with it.
    pub async fn expect_event(&self, reason: &str) -> Vec<Event> {
        wait_for(&format!("a {reason} Event"), WAIT, || async {
            let found = self.events(reason).await;
            (!found.is_empty()).then_some(found)
        })
        .await
    }

    /// This test's installation as its operator labels instances: the deployment
    /// id (the namespace) and the cluster's short id.
    pub async fn installation(&self) -> String {
        let cluster = gpu_shopper::controller::identity::cluster_id(&self.client, None).await.unwrap();
        format!("{}-{cluster}", self.ns)
    }

    pub async fn finish(self) {
        let _ = self.sessions.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        wait_for("every session to be gone", WAIT, || async {
            self.sessions.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
        })
        .await;
        assert!(self.live_instances().is_empty(), "instances still billing: {:?}", self.live_instances());
        let log = self.controller.log();
        assert!(!log.contains("panicked"), "the controller panicked; log: {}", self.controller.log_path.display());
        drop(self.controller);
        delete_namespace(&self.client, &self.ns).await;
    }
}

pub fn rtx_4090(extra: Value) -> Value {
    let mut spec =
        json!({"requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]}, "timeouts": {"sshReady": "20s"}});
    merge(&mut spec, extra);
    spec
}

pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            match (base.get_mut(&k), v) {
                (Some(b @ Value::Object(_)), v @ Value::Object(_)) => merge(b, v),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
}

pub fn status(session: &GpuSession) -> &gpu_shopper::crd::GpuSessionStatus {
    session.status.as_ref().unwrap()
}

/// How every label of the installation with deployment id `ns` begins, whatever
/// the cluster: `gpushopper.<ns>-<cluster>.` (test namespaces never prefix each other).
pub fn label_prefix(ns: &str) -> String {
    format!("gpushopper.{ns}-")
}

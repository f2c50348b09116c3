//! Simulated marketplaces: Vast.ai, TensorDock and RunPod served on loopback
//! under their real paths and JSON shapes, so that the real clients run
//! against them unchanged. Holds a market, instances with a timed life and a
//! bill, switchable faults, and a control endpoint for tests.

pub mod inference;
pub mod market;
mod runpod;
mod sim;
pub mod ssh;
mod tensordock;
mod vastai;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;

use self::market::Market;
pub use self::sim::Sim;
use self::world::{Fate, Faults, InstanceReport, World};
use crate::crd::ProviderName;

/// A running simulator; dropping it stops the servers.
pub struct SimulatorHandle {
    pub sim: Arc<Sim>,
    pub vastai_url: String,
    pub tensordock_url: String,
    pub runpod_url: String,
    pub control_url: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimulatorHandle {
    /// Environment for `gpu-shopper controller` to use this simulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let keys = self.sim.world().market.keys.clone();
        vec![
            ("VASTAI_API_KEY", keys.vastai),
            ("VASTAI_BASE_URL", self.vastai_url.clone()),
            ("TENSORDOCK_AUTH_ID", "sim".into()),
            ("TENSORDOCK_API_TOKEN", keys.tensordock),
            ("TENSORDOCK_BASE_URL", self.tensordock_url.clone()),
            ("RUNPOD_API_KEY", keys.runpod),
            ("RUNPOD_BASE_URL", self.runpod_url.clone()),
        ]
    }

    pub fn set_faults(&self, provider: ProviderName, faults: Faults) {
        self.sim.world().faults.insert(provider, faults);
    }

    pub fn instances(&self) -> Vec<InstanceReport> {
        self.sim.world().report()
    }

    /// Makes `fate` happen to instance `id` behind the operator's back.
    pub fn befall(&self, id: &str, fate: Fate) -> bool {
        self.sim.world().befall(id, fate)
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the three marketplaces and the control endpoint on loopback ports
/// (`base_port` 0: any free ports; else base_port..base_port+3).
pub async fn start(market: Market, base_port: u16) -> std::io::Result<SimulatorHandle> {
    let sim = Arc::new(Sim { world: Mutex::new(World::new(market)?) });
    let port = |offset: u16| if base_port == 0 { 0 } else { base_port + offset };
    let routers = [
        vastai::router(sim.clone()),
        tensordock::router(sim.clone()),
        runpod::router(sim.clone()),
        control_router(sim.clone()),
    ];
    let mut urls = Vec::new();
    let mut tasks = Vec::new();
    for (offset, router) in routers.into_iter().enumerate() {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port(offset as u16)))).await?;
        urls.push(format!("http://{}", listener.local_addr()?));
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }
    Ok(SimulatorHandle {
        sim,
        vastai_url: format!("{}/api/v0", urls[0]),
        tensordock_url: format!("{}/api/v2", urls[1]),
        runpod_url: format!("{}/graphql", urls[2]),
        control_url: urls[3].clone(),
        tasks,
    })
}

fn control_router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/state", get(control_state))
        .route("/faults/{provider}", put(control_set_faults))
        .route("/instances/{id}/utilization", put(control_set_utilization))
        .route("/instances/{id}/fate", put(control_befall))
        .with_state(sim)
}

async fn control_state(State(sim): State<Arc<Sim>>) -> Response {
    let world = sim.world();
    let faults: BTreeMap<_, _> = world.faults.clone();
    axum::Json(json!({"instances": world.report(), "calls": world.calls, "faults": faults})).into_response()
}

#[derive(serde::Deserialize)]
struct Utilization {
    percent: u32,
}

async fn control_set_utilization(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Utilization>,
) -> Response {
    if sim.world().set_utilization(&id, body.percent) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no live instance with that id").into_response()
    }
}

#[derive(serde::Deserialize)]
struct FateRequest {
    fate: Fate,
}

/// Makes something happen to an instance behind the operator's back.
async fn control_befall(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<FateRequest>,
) -> Response {
    if sim.world().befall(&id, body.fate) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no live instance with that id").into_response()
    }
}

async fn control_set_faults(
    State(sim): State<Arc<Sim>>,
    Path(provider): Path<String>,
    axum::Json(faults): axum::Json<Faults>,
) -> Response {
    let Some(provider) = ProviderName::ALL.into_iter().find(|p| p.as_str() == provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    sim.world().faults.insert(provider, faults);
    StatusCode::NO_CONTENT.into_response()
}

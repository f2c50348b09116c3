//! Simulated marketplaces: Vast.ai, TensorDock and RunPod served on loopback
//! under their real paths and JSON shapes, so that the real clients run
//! against them unchanged. Holds a market, instances with a timed life and a
//! bill, switchable faults, and a control endpoint for tests.

pub mod inference;
pub mod market;
mod runpod;
pub mod ssh;
mod tensordock;
mod vastai;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;

use self::market::Market;
use self::world::{CallRecord, Fate, Faults, InstanceReport, World};
use crate::crd::ProviderName;

pub struct Sim {
    world: Mutex<World>,
}

impl Sim {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the call, checks the key, and applies the switched-on faults
    /// that any endpoint can suffer. `Err` is the response to send instead.
    pub(crate) async fn gate(
        &self,
        provider: ProviderName,
        method: &str,
        path: &str,
        presented_key: Option<&str>,
    ) -> Result<(), Response> {
        let hang = {
            let mut world = self.world();
            world.calls.push(CallRecord { provider, method: method.into(), path: path.into() });
            let expected = world.market.keys.of(provider).to_string();
            let faults = world.faults(provider);
            if faults.auth_failure || presented_key != Some(expected.as_str()) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid_api_key", "msg": "Invalid API key"})),
                )
                    .into_response());
            }
            let limited = !faults.no_rate_limits;
            if limited
                && let Some(body) =
                    world.rate_limits.over(provider, &format!("{method} {path}"), tokio::time::Instant::now())
            {
                // Vast sends no Retry-After (its docs say so); plain text, as its docs show.
                return Err((StatusCode::TOO_MANY_REQUESTS, body).into_response());
            }
            let faults = world.faults(provider);
            if faults.rate_limits > 0 {
                faults.rate_limits -= 1;
                let after = faults.retry_after_secs.to_string();
                return Err((StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)], "rate limited").into_response());
            }
            if faults.server_errors > 0 {
                faults.server_errors -= 1;
                return Err((StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response());
            }
            if faults.hangs > 0 {
                faults.hangs -= 1;
                Some(Duration::from_millis(faults.hang_ms))
            } else {
                None
            }
        };
        if let Some(hang) = hang {
            tokio::time::sleep(hang).await;
        }
        Ok(())
    }
}

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

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

//! `/healthz`, `/readyz` and `/metrics` on one HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the health endpoints report.
pub struct Health {
    /// Set once the controllers' watches are running.
    pub ready: AtomicBool,
    /// Set while waiting for the leader-election lease.
    pub standby: AtomicBool,
    /// Marketplaces with credentials, shown by /readyz so "no providers" is never silent.
    pub providers: Vec<crate::crd::ProviderName>,
    pub metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let providers = if health.providers.is_empty() {
        "providers: none configured (set VASTAI_API_KEY, TENSORDOCK_AUTH_ID+TENSORDOCK_API_TOKEN or RUNPOD_API_KEY); no session can be rented".to_string()
    } else {
        let names: Vec<_> = health.providers.iter().map(|p| p.as_str()).collect();
        format!("providers: {}", names.join(", "))
    };
    if health.standby.load(Ordering::Relaxed) {
        // A standby is healthy and ready to take over; it reconciles nothing until it leads.
        (StatusCode::OK, format!("standby: waiting for the leader-election lease\n{providers}\n"))
    } else if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready\n{providers}\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("starting: controllers not running yet\n{providers}\n"))
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.encode())
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Serves the endpoints until the process ends.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(health)).await
}

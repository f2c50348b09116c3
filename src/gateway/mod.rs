//! `gpu-shopper gateway`: the stable in-cluster address of an Inference
//! session's model. Run by the operator as a Deployment behind the session's
//! Service, it holds one SSH login to the session's machine with the session's
//! key, insists on the host key pinned in the session's status, and carries
//! each client request over SSH port forwarding to the model's port on the
//! machine's loopback (no model port is exposed at the marketplace). Clients
//! need `Authorization: Bearer <key>`; health and metrics need none. It follows
//! its session (a watch), so a replaced machine is reconnected to behind the
//! same address; while no machine answers, requests get a fast 503 with
//! Retry-After.
//!
//! Parts: `source` (where the machine is and which keys to use: the cluster,
//! or flags for a static run), `link` (the SSH login, kept and replaced),
//! `proxy` (the HTTP side), `report` (the Lease the operator reads for
//! EndpointReady, and Events), `metrics`.

pub mod args;
pub mod link;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod source;

use std::sync::Arc;

pub use args::{GatewayArgs, GatewayError};

use link::Link;
use metrics::GatewayMetrics;

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayError> {
    let metrics = Arc::new(GatewayMetrics::new());
    let source = source::Source::from_args(&args).await?;
    let reporter = report::Reporter::new(&source, &args);
    let link = Link::start(source.clone(), metrics.clone(), reporter.clone());
    if let Some(reporter) = reporter {
        tokio::spawn(reporter.renew_on_a_clock());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| GatewayError::Listen { addr: args.listen, error })?;
    tracing::info!(addr = %args.listen, model_port = args.model_port, "gateway listening");
    let app = proxy::router(proxy::Shared { link, source, metrics, model_port: args.model_port });
    axum::serve(listener, app).with_graceful_shutdown(shutdown()).await.map_err(|e| GatewayError::Setup(e.to_string()))
}

/// SIGTERM (the Deployment rolling or going) or Ctrl-C.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

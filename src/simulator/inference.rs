//! The OpenAI-compatible model server of a simulated instance: `/v1/models`
//! and `/v1/completions` on a loopback port. It answers only after its load
//! time, and when the host's real CUDA is older than the image needs, it loads
//! fine and crashes on the first real prompt, as vLLM does on such hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ModelServer {
    /// Model id served (from the instance's env `GPU_SHOPPER_MODEL`).
    pub model: String,
    pub load_time: Duration,
    /// The host's real CUDA and what the image needs, as (major, minor).
    pub host_cuda: (u32, u32),
    pub image_needs_cuda: (u32, u32),
}

struct Served {
    server: ModelServer,
    started: Instant,
    crashed: AtomicBool,
}

/// Binds a loopback port and serves until the task is aborted.
pub fn serve(server: ModelServer) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let state = Arc::new(Served { server, started: Instant::now(), crashed: AtomicBool::new(false) });
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((port, task))
}

/// "12.8" -> (12, 8).
pub fn cuda_pair(text: &str) -> (u32, u32) {
    let mut parts = text.trim().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn unavailable(state: &Served) -> Option<Response> {
    if state.crashed.load(Ordering::Relaxed) {
        return Some((StatusCode::BAD_GATEWAY, "model server exited (EngineDeadError)").into_response());
    }
    if state.started.elapsed() < state.server.load_time {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "loading model weights").into_response());
    }
    None
}

async fn health(State(state): State<Arc<Served>>) -> Response {
    unavailable(&state).unwrap_or_else(|| StatusCode::OK.into_response())
}

async fn models(State(state): State<Arc<Served>>) -> Response {
    if let Some(response) = unavailable(&state) {
        return response;
    }
    axum::Json(json!({"object": "list", "data": [{"id": state.server.model, "object": "model", "owned_by": "vllm"}]}))
        .into_response()
}

async fn completions(State(state): State<Arc<Served>>, axum::Json(body): axum::Json<Value>) -> Response {
    if let Some(response) = unavailable(&state) {
        return response;
    }
    if body["model"].as_str() != Some(state.server.model.as_str()) {
        let message = format!("The model `{}` does not exist.", body["model"].as_str().unwrap_or(""));
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": message, "type": "NotFoundError"}})))
            .into_response();
    }
    if state.server.host_cuda < state.server.image_needs_cuda {
        state.crashed.store(true, Ordering::Relaxed);
        let message =
            "CUDA error: the provided PTX was compiled with an unsupported toolchain (cudaErrorUnsupportedPtxVersion)";
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": message, "type": "InternalServerError"}})),
        )
            .into_response();
    }
    if body["stream"].as_bool() == Some(true) {
        return streamed(&state.server.model, body["max_tokens"].as_u64().unwrap_or(16));
    }
    axum::Json(json!({
        "id": "cmpl-sim",
        "object": "text_completion",
        "model": state.server.model,
        "choices": [{"index": 0, "text": " Hello! How can I help?", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11},
    }))
    .into_response()
}

/// Time between two streamed tokens, as a GPU serving one request would space them.
const TOKEN_INTERVAL: Duration = Duration::from_millis(20);

/// An OpenAI-style streamed completion: one server-sent event per token, then `[DONE]`.
fn streamed(model: &str, tokens: u64) -> Response {
    let model = model.to_string();
    let events = futures::stream::unfold(0u64, move |n| {
        let model = model.clone();
        async move {
            if n > tokens {
                return None;
            }
            tokio::time::sleep(TOKEN_INTERVAL).await;
            let line = if n == tokens {
                "data: [DONE]\n\n".to_string()
            } else {
                let chunk = json!({"id": "cmpl-sim", "object": "text_completion", "model": model,
                    "choices": [{"index": 0, "text": format!(" tok{n}"), "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            };
            Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)), n + 1))
        }
    });
    ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], axum::body::Body::from_stream(events)).into_response()
}

//! The HTTP side: health and metrics for anyone, everything else only with the
//! API key, carried as it is (streamed both ways) over a forwarded connection
//! to the model's port on the machine's loopback. With no machine behind the
//! gateway a request is answered at once: 503 with Retry-After.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::link::Link;
use super::metrics::{CodeLabels, DirectionLabels, GatewayMetrics};
use super::source::Source;

/// What every request needs.
pub struct Shared {
    pub link: Link,
    pub source: Source,
    pub metrics: Arc<GatewayMetrics>,
    pub model_port: u16,
}

/// Seconds a client is told to wait when no machine answers.
const RETRY_AFTER_SECONDS: &str = "5";

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .with_state(Arc::new(shared))
}

/// The gateway serves; the answer says whether a machine is behind it.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.link.serving() {
        Some(serving) => format!("ok: serving instance {}\n", serving.target.instance).into_response(),
        None => "ok: no machine yet (requests get 503)\n".into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.link.count_time_without_machine();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
        .into_response()
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = Instant::now();
    let response = carry(&shared, request).await;
    let metrics = &shared.metrics;
    metrics.requests.get_or_create(&CodeLabels { code: response.status().as_u16() }).inc();
    metrics.latency.observe(started.elapsed().as_secs_f64());
    response
}

async fn carry(shared: &Shared, request: Request) -> Response {
    if !authorized(request.headers(), shared.source.api_key().as_deref()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "send the session's API key: Authorization: Bearer <key> (the Secret named by the session)",
        );
    }
    let Some(serving) = shared.link.serving() else {
        return unavailable("no machine is behind the gateway right now (starting, or being replaced)");
    };
    let stream = match serving.connection.tunnel(shared.model_port).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot open a connection to the model");
            return unavailable("the machine's model port cannot be reached right now");
        }
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "upstream", &format!("the model connection failed: {e}")),
    };
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{}", shared.model_port)) {
        parts.headers.insert(header::HOST, host);
    }
    let counted = counting(shared.metrics.clone(), "request", body);
    let outgoing = hyper::Request::from_parts(parts, counted);
    match sender.send_request(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, counting(shared.metrics.clone(), "response", Body::new(body)))
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "upstream", &format!("the model did not answer: {e}")),
    }
}

/// Whether the request carries the API key (compared in constant time). No key known: nobody.
fn authorized(headers: &HeaderMap, key: Option<&str>) -> bool {
    let Some(key) = key.filter(|k| !k.is_empty()) else { return false };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else { return false };
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Headers that belong to one connection, not to the request carried.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        headers.remove(HeaderName::from_static(name));
    }
}

/// `body`, with the bytes it carries counted as they pass (streamed, never gathered).
fn counting(metrics: Arc<GatewayMetrics>, direction: &'static str, body: Body) -> Body {
    Body::new(body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            metrics.bytes.get_or_create(&DirectionLabels { direction }).inc_by(data.len() as u64);
        }
        frame
    }))
}

fn unavailable(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "no_machine", message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}

/// An OpenAI-style error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "gateway_error", "code": code}});
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_passes() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(authorized(&with("Bearer s3cret"), Some("s3cret")));
        assert!(!authorized(&with("Bearer s3cre"), Some("s3cret")));
        assert!(!authorized(&with("Bearer s3cretx"), Some("s3cret")));
        assert!(!authorized(&with("Basic s3cret"), Some("s3cret")));
        assert!(!authorized(&HeaderMap::new(), Some("s3cret")));
        assert!(!authorized(&with("Bearer "), Some("")), "no key configured refuses everyone");
        assert!(!authorized(&with("Bearer x"), None));
    }
}

//! Does a model server answer? Its listing names the model, and a first test
//! prompt is answered (a server on a host whose CUDA is too old loads fine and
//! crashes on the first real prompt). The server is reached on the machine's
//! loopback through the session's SSH login (no model port is exposed);
//! answers are read capped, so a workload cannot exhaust the operator's memory.

use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// What the model server showed.
#[derive(Debug, PartialEq)]
pub enum InferenceProbe {
    Answered(String),
    NotYet(String),
    /// The first prompt failed with a server error: the host cannot run the model.
    Crashed(String),
}

/// What to ask the server.
pub struct InferenceCheck<'a> {
    pub model: &'a str,
    /// Lists the served models; `/v1/models` unless the session says otherwise.
    pub health_path: &'a str,
    pub test_prompt: &'a str,
}

/// The most of an HTTP answer from a machine that is read.
const HTTP_READ_MAX: usize = 256 * 1024;

/// Time allowed to each request of the probe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Probes the OpenAI-compatible server that `connect` reaches (a fresh stream per request).
pub async fn probe<S, F, Fut>(connect: F, check: &InferenceCheck<'_>) -> InferenceProbe
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, String>>,
{
    let path = check.health_path;
    let listed = match exchange(&connect, hyper::Method::GET, path, None).await {
        Ok((status, body)) if status.is_success() => body,
        Ok((status, _)) => return InferenceProbe::NotYet(format!("{path} answered {status}")),
        Err(error) => return InferenceProbe::NotYet(format!("{path}: {error}")),
    };
    if !listed.contains(check.model) {
        return InferenceProbe::NotYet(format!("{path} does not list {} yet", check.model));
    }
    let body = serde_json::json!({"model": check.model, "prompt": check.test_prompt, "max_tokens": 16});
    match exchange(&connect, hyper::Method::POST, "/v1/completions", Some(body)).await {
        Ok((status, _)) if status.is_success() => {
            InferenceProbe::Answered(format!("{} is listed and answered the test prompt", check.model))
        }
        Ok((status, text)) if status.is_server_error() => {
            let text: String = text.chars().take(300).collect();
            InferenceProbe::Crashed(format!("the first prompt failed with {status}: {text}"))
        }
        Ok((status, _)) => InferenceProbe::NotYet(format!("/v1/completions answered {status}")),
        Err(error) => InferenceProbe::NotYet(format!("/v1/completions: {error}")),
    }
}

/// One HTTP/1.1 request on a fresh stream: the status and the body, read capped.
async fn exchange<S, F, Fut>(
    connect: &F,
    method: hyper::Method,
    path: &str,
    json: Option<serde_json::Value>,
) -> Result<(hyper::StatusCode, String), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, String>>,
{
    let work = async {
        let stream = connect().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let body = json.map(|j| Bytes::from(j.to_string())).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = read_capped(response.into_body()).await;
        driver.abort();
        Ok((status, text))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Reads at most `HTTP_READ_MAX` bytes of a body.
async fn read_capped(mut body: hyper::body::Incoming) -> String {
    let mut kept = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(chunk) = frame.data_ref() {
            let room = HTTP_READ_MAX - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if kept.len() >= HTTP_READ_MAX {
                break;
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

//! Does a model server answer? Its listing names the model, and a first test
//! prompt is answered (a server on a host whose CUDA is too old loads fine and
//! crashes on the first real prompt). Answers are read capped: a workload's
//! answer cannot exhaust the operator's memory.

use std::time::Duration;

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

/// Probes the OpenAI-compatible server at `base` (`http://host:port`).
pub async fn probe(base: &str, check: &InferenceCheck<'_>) -> InferenceProbe {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
    let path = check.health_path;
    let listed = match http.get(format!("{base}{path}")).send().await {
        Ok(r) if r.status().is_success() => read_capped(r).await,
        Ok(r) => return InferenceProbe::NotYet(format!("{path} answered {}", r.status())),
        Err(e) => return InferenceProbe::NotYet(format!("{path}: {}", e.without_url())),
    };
    if !listed.contains(check.model) {
        return InferenceProbe::NotYet(format!("{path} does not list {} yet", check.model));
    }
    let body = serde_json::json!({"model": check.model, "prompt": check.test_prompt, "max_tokens": 16});
    match http.post(format!("{base}/v1/completions")).json(&body).send().await {
        Ok(r) if r.status().is_success() => {
            InferenceProbe::Answered(format!("{} is listed and answered the test prompt", check.model))
        }
        Ok(r) if r.status().is_server_error() => {
            let status = r.status();
            let text: String = read_capped(r).await.chars().take(300).collect();
            InferenceProbe::Crashed(format!("the first prompt failed with {status}: {text}"))
        }
        Ok(r) => InferenceProbe::NotYet(format!("/v1/completions answered {}", r.status())),
        Err(e) => InferenceProbe::NotYet(format!("/v1/completions: {}", e.without_url())),
    }
}

/// Reads at most `HTTP_READ_MAX` bytes of a body.
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = HTTP_READ_MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= HTTP_READ_MAX {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

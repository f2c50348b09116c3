//! `gpu-shopper endpoint SESSION [--env]`: where in-cluster clients call an
//! Inference session's model, and with `--env` the two lines an OpenAI client
//! reads (the key from the session's API key Secret).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::CliError;
use crate::crd::GpuSession;
use crate::crd::conditions::{find, types};
use crate::crd::session::API_KEY_FIELD;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper endpoint llama-inference
  eval \"$(gpu-shopper endpoint llama-inference --env)\"   # OPENAI_BASE_URL and OPENAI_API_KEY for a shell")]
pub struct EndpointArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Print `OPENAI_BASE_URL=...` and `OPENAI_API_KEY=...` lines for a shell.
    #[arg(long)]
    pub env: bool,
}

pub async fn run(args: EndpointArgs) -> Result<String, CliError> {
    let namespace = super::namespace(args.namespace.clone()).await;
    let client = super::client().await?;
    let session = Api::<GpuSession>::namespaced(client.clone(), &namespace).get(&args.session).await?;
    let inference =
        session.spec.workload.inference.clone().ok_or_else(|| {
            CliError::Usage(format!("{} is not an Inference session: it has no endpoint", args.session))
        })?;
    let status = session.status.unwrap_or_default();
    let endpoint = status.endpoints.first().ok_or_else(|| {
        CliError::Usage(format!(
            "{}'s endpoint is not set up yet; see `gpu-shopper status {}`",
            args.session, args.session
        ))
    })?;
    if !args.env {
        let ready = find(&status.conditions, types::ENDPOINT_READY);
        let state = match ready {
            Some(c) if c.status == "True" => "serving".to_string(),
            Some(c) => format!("not serving yet: {}", c.message),
            None => "not serving yet".to_string(),
        };
        let public = endpoint.public_url.as_ref().map(|u| format!("\npublic: {u}")).unwrap_or_default();
        return Ok(format!("{} ({state}){public}\n", endpoint.url));
    }
    let (secret, field) = match &inference.api_key_secret_ref {
        Some(reference) => (reference.name.clone(), reference.key_or_default().to_string()),
        None => (format!("{}-api-key", args.session), API_KEY_FIELD.to_string()),
    };
    let key = Api::<Secret>::namespaced(client, &namespace)
        .get(&secret)
        .await?
        .data
        .and_then(|d| d.get(&field).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
        .ok_or_else(|| CliError::Failed(format!("Secret {secret} has no key {field}")))?;
    Ok(format!("OPENAI_BASE_URL={}/v1\nOPENAI_API_KEY={}\n", endpoint.url, key.trim()))
}

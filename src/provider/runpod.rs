//! RunPod client (GraphQL, bearer key). Quirks kept here (sources in
//! docs/providers.md): errors arrive as HTTP 200 with an `errors` array, read
//! before `data`; RunPod prices GPU types, not hosts, so an offer is a GPU type
//! x count x billing, and a type without `stockStatus` has none to rent; the
//! SSH key travels as env `PUBLIC_KEY`, which only RunPod's own images act on,
//! so any other image gets `dockerArgs` that install and start sshd and keep
//! the container alive (SkyPilot's way); `runtime` is null until the container
//! runs, and SSH is the public TCP port mapped from private 22 (a pod lists 22
//! twice, UDP first); other ports are asked for as TCP, since `/http` ports
//! are only served through RunPod's HTTPS proxy.

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::error::{NextStep, ProviderError};
use super::http::{CallPolicy, Idempotency, Transport, parse_json};
use super::json::{number, text, unsigned};
use super::pacing::Limits;
use super::types::{CreateRequest, Instance, InstanceLabel, InstanceState, Offer, SshTarget, display_gpu_model};
use super::{Gone, OfferQuery, Provider};
use crate::crd::{Billing, ProviderName};

const PROVIDER: ProviderName = ProviderName::Runpod;
const SPOT_SUFFIX: &str = ":spot";

/// RunPod publishes no API rate limit; the pacer only widens after a 429.
pub const LIMITS: Limits = Limits::NONE;

const GPU_TYPES: &str = "query GpuTypes($gpuCount: Int!) { gpuTypes { id displayName memoryInGb secureCloud communityCloud lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice stockStatus } } }";
// Non-null input, as runpod/runpodctl `CreatePod` declares it.
const DEPLOY_ON_DEMAND: &str = "mutation Deploy($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id name desiredStatus imageName machineId costPerHr } }";
const DEPLOY_SPOT: &str = "mutation DeploySpot($input: PodRentInterruptableInput!) { podRentInterruptable(input: $input) { id name desiredStatus imageName machineId costPerHr } }";
const POD_FIELDS: &str = "id name desiredStatus costPerHr machineId runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } gpus { id gpuUtilPercent memoryUtilPercent } } machine { gpuDisplayName }";
const TERMINATE: &str = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }";

pub struct RunPod {
    endpoint: String,
    transport: Transport,
}

impl RunPod {
    pub fn new(endpoint: &str, api_key: SecretString, policy: CallPolicy) -> Self {
        RunPod {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            transport: Transport::new(PROVIDER, api_key, policy, LIMITS),
        }
    }

    /// Runs one GraphQL operation; `errors` in a 200 become typed errors.
    /// Transient ones inside a 200 are retried here (the transport only sees
    /// HTTP), and only for operations that are safe to repeat.
    async fn graphql(&self, query: &str, variables: Value, idempotency: Idempotency) -> Result<Value, ProviderError> {
        let mut delays = self.transport.backoff();
        loop {
            match self.graphql_once(query, &variables, idempotency).await {
                Err(error) if idempotency == Idempotency::Safe && error.next_step() == NextStep::Retry => {
                    let Some(delay) = delays.next() else { return Err(error) };
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    async fn graphql_once(
        &self,
        query: &str,
        variables: &Value,
        idempotency: Idempotency,
    ) -> Result<Value, ProviderError> {
        let body = json!({"query": query, "variables": variables});
        let reply = self
            .transport
            .call(idempotency, "POST /graphql", || {
                self.transport.client().post(&self.endpoint).bearer_auth(self.transport.secret()).json(&body)
            })
            .await?;
        let answer: Value = parse_json(&self.transport, &reply)?;
        if let Some(message) = first_error(&answer) {
            return Err(classify_error(&self.transport.excerpt(message.as_bytes())));
        }
        if !reply.status.is_success() {
            return Err(ProviderError::BadResponse {
                provider: PROVIDER,
                status: reply.status.as_u16(),
                body: self.transport.excerpt(&reply.body),
            });
        }
        answer.get("data").cloned().filter(|d| !d.is_null()).ok_or_else(|| ProviderError::BadResponse {
            provider: PROVIDER,
            status: reply.status.as_u16(),
            body: self.transport.excerpt(&reply.body),
        })
    }
}

fn first_error(answer: &Value) -> Option<String> {
    let errors = answer.get("errors")?.as_array()?;
    let first = errors.first()?;
    Some(text(first, &["message"]).unwrap_or_else(|| first.to_string()))
}

/// RunPod's error messages, mapped to what the caller should do. The
/// capacity texts are those peers have logged; anything else stays `Rejected`
/// here, and a create decides whether it is about the request or the offer.
pub fn classify_error(message: &str) -> ProviderError {
    let lower = message.to_ascii_lowercase();
    let message = message.to_string();
    const NO_CAPACITY: &[&str] = &[
        "no longer any instances available",
        "no instances available",
        "supply_constraint",
        "unable to find a machine with capacity",
        "could not find any pods with required specifications",
        "not enough free gpus",
        "out of stock",
    ];
    if NO_CAPACITY.iter().any(|text| lower.contains(text)) {
        ProviderError::NoCapacity { provider: PROVIDER, message }
    } else if lower.contains("unauthorized") || lower.contains("not authorized") || lower.contains("api key") {
        ProviderError::AuthFailed { provider: PROVIDER, status: 200 }
    } else if lower.contains("insufficient") || lower.contains("balance") {
        ProviderError::InsufficientFunds { provider: PROVIDER, message }
    } else if lower.contains("rate limit") || lower.contains("too many requests") {
        ProviderError::RateLimited { provider: PROVIDER, retry_after: None }
    } else if lower.contains("internal") || lower.contains("timeout") || lower.contains("try again") {
        ProviderError::Unavailable { provider: PROVIDER, message }
    } else {
        ProviderError::Rejected { provider: PROVIDER, status: 200, body: message }
    }
}

/// A GraphQL error about the request's shape (our bug): retrying any offer cannot help.
fn is_request_shape_error(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["graphql_validation_failed", "cannot query field", "got invalid value", "unknown argument", "syntax error"]
        .iter()
        .any(|text| lower.contains(text))
}

/// A container start command for images other than RunPod's own: installs
/// sshd if missing, authorises `$PUBLIC_KEY` (the key travels in env, never in
/// the command), starts sshd and keeps the container alive. Base64 because
/// RunPod passes `dockerArgs` through more than one layer of quoting (SkyPilot).
pub fn ssh_bootstrap_args() -> String {
    let script = "set -e; \
        if ! command -v sshd >/dev/null 2>&1; then \
          export DEBIAN_FRONTEND=noninteractive; \
          (apt-get update && apt-get install -y openssh-server) || (apk add --no-cache openssh) || (yum install -y openssh-server); \
        fi; \
        mkdir -p /run/sshd /var/run/sshd ~/.ssh && chmod 700 ~/.ssh; \
        printf '%s\n' \"$PUBLIC_KEY\" >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys; \
        ssh-keygen -A; \
        $(command -v sshd) -o PermitRootLogin=prohibit-password; \
        exec sleep infinity";
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(script);
    format!("bash -c 'echo {encoded} | base64 -d > /tmp/gpu-shopper-init.sh && bash /tmp/gpu-shopper-init.sh'")
}

/// RunPod's own images start sshd from `PUBLIC_KEY` themselves.
fn starts_ssh_itself(image: &str) -> bool {
    image.starts_with("runpod/")
}

/// Offers from `gpuTypes`: on-demand and/or spot, for `gpu_count` GPUs.
pub fn parse_gpu_types(data: &Value, gpu_count: u32, billing: Billing) -> Option<Vec<Offer>> {
    let types = data.get("gpuTypes")?.as_array()?;
    let mut offers = Vec::new();
    for gpu in types {
        let (Some(id), Some(price)) = (text(gpu, &["id"]), gpu.get("lowestPrice").filter(|p| !p.is_null())) else {
            continue;
        };
        // No stock status: nothing of this type can be rented now (runpodctl hides these too).
        if text(price, &["stockStatus"]).is_none() {
            continue;
        }
        let base = |offer_id: String, per_gpu: f64, interruptible: bool| Offer {
            provider: PROVIDER,
            id: offer_id,
            gpu_model: display_gpu_model(&text(gpu, &["displayName"]).unwrap_or_else(|| id.clone())),
            gpu_count,
            vram_gb: unsigned::<u32>(gpu, &["memoryInGb"]).unwrap_or(0),
            cuda_version: None,
            driver_version: None,
            price_per_hour: per_gpu * f64::from(gpu_count),
            reliability: None,
            location: None,
            country: None,
            download_mbps: None,
            upload_mbps: None,
            interruptible,
            bid_per_hour: None,
            host_id: None,
        };
        if billing != Billing::Interruptible
            && let Some(p) = number(price, &["uninterruptablePrice"]).filter(|p| *p > 0.0)
        {
            offers.push(base(id.clone(), p, false));
        }
        if billing != Billing::OnDemand
            && let Some(p) = number(price, &["minimumBidPrice"]).filter(|p| *p > 0.0)
        {
            offers.push(base(format!("{id}{SPOT_SUFFIX}"), p, true));
        }
    }
    Some(offers)
}

pub fn parse_pod(v: &Value) -> Option<Instance> {
    let id = text(v, &["id"])?;
    let runtime = v.get("runtime").filter(|r| !r.is_null());
    let state = match text(v, &["desiredStatus"]).map(|s| s.to_ascii_uppercase()).as_deref() {
        Some("RUNNING") if runtime.is_some() => InstanceState::Running,
        Some("RUNNING") | Some("CREATED") | Some("RESTARTING") | None => InstanceState::Provisioning,
        // EXITED (REST v1 docs); PAUSED and DEAD (the pod schema's enum) never run by themselves.
        Some("EXITED") | Some("STOPPED") | Some("PAUSED") | Some("DEAD") => InstanceState::Stopped,
        Some("TERMINATED") => InstanceState::Destroyed,
        Some(other) => InstanceState::Unknown(other.to_string()),
    };
    // Only public TCP mappings are reachable: a pod lists 22 as UDP too, and
    // `/http` ports with a private address (served through RunPod's proxy).
    let public_ports: Vec<&Value> = runtime
        .and_then(|r| r.get("ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("isIpPublic") == Some(&Value::Bool(true)))
        .filter(|p| text(p, &["type"]).is_none_or(|t| t.eq_ignore_ascii_case("tcp")))
        .collect();
    let ssh_port = public_ports.iter().find(|p| unsigned::<u16>(p, &["privatePort"]) == Some(22));
    let endpoints = public_ports
        .iter()
        .filter_map(|p| {
            let private_port = unsigned::<u16>(p, &["privatePort"]).filter(|port| *port != 22)?;
            Some(super::PortEndpoint {
                private_port,
                host: text(p, &["ip"])?,
                port: unsigned::<u16>(p, &["publicPort"])?,
            })
        })
        .collect();
    let ssh = ssh_port.and_then(|p| {
        Some(SshTarget { host: text(p, &["ip"])?, port: unsigned::<u16>(p, &["publicPort"])?, user: "root".into() })
    });
    Some(Instance {
        provider: PROVIDER,
        id,
        label: text(v, &["name"]).as_deref().and_then(InstanceLabel::parse),
        state,
        public_ip: ssh.as_ref().map(|s| s.host.clone()),
        ssh,
        price_per_hour: number(v, &["costPerHr"]),
        gpu_model: v.get("machine").and_then(|m| text(m, &["gpuDisplayName"])),
        endpoints,
        ports_open_on_public_ip: false,
    })
}

#[async_trait]
impl Provider for RunPod {
    fn name(&self) -> ProviderName {
        PROVIDER
    }

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
        let gpu_count = query.requirements.gpu_count.unwrap_or(1);
        let data = self.graphql(GPU_TYPES, json!({"gpuCount": gpu_count}), Idempotency::Safe).await?;
        let billing = query.requirements.billing.unwrap_or_default();
        let mut offers = parse_gpu_types(&data, gpu_count, billing).ok_or_else(|| ProviderError::BadResponse {
            provider: PROVIDER,
            status: 200,
            body: "no gpuTypes in data".into(),
        })?;
        offers.truncate(query.limit as usize);
        Ok(offers)
    }

    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError> {
        let offer = &request.offer;
        let gpu_type = offer.id.strip_suffix(SPOT_SUFFIX).unwrap_or(&offer.id);
        let mut env: Vec<Value> = request.env.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        // A deploy-time PUBLIC_KEY or SSH_PUBLIC_KEY replaces the account's keys (runpod/docs PR #748,
        // RunPod's reviewer); the docs name SSH_PUBLIC_KEY as the per-pod override. Both carry the session's key.
        for name in ["PUBLIC_KEY", "SSH_PUBLIC_KEY"] {
            env.push(json!({"key": name, "value": request.ssh_public_key}));
        }
        let ports: Vec<String> =
            std::iter::once("22/tcp".to_string()).chain(request.ports.iter().map(|p| format!("{p}/tcp"))).collect();
        let mut input = json!({
            "cloudType": "ALL",
            // Without it a pod on ALL clouds may land where no TCP port is public.
            "supportPublicIp": true,
            "gpuCount": offer.gpu_count,
            "gpuTypeId": gpu_type,
            "name": request.label.to_string(),
            "imageName": request.image,
            "containerDiskInGb": request.disk_gb,
            "volumeInGb": 0,
            "ports": ports.join(","),
            "env": env,
            "startSsh": true,
        });
        if !starts_ssh_itself(&request.image) {
            input["dockerArgs"] = json!(ssh_bootstrap_args());
        }
        // A floor, as runpodctl (`--min-cuda-version`) and dstack send it: no list of versions to keep current.
        if let Some(minimum) = &request.min_cuda_version {
            input["minCudaVersion"] = json!(minimum);
        }
        let (mutation, field) = if offer.interruptible {
            input["bidPerGpu"] = json!(offer.price_per_hour / f64::from(offer.gpu_count.max(1)));
            (DEPLOY_SPOT, "podRentInterruptable")
        } else {
            (DEPLOY_ON_DEMAND, "podFindAndDeployOnDemand")
        };
        let data = match self.graphql(mutation, json!({"input": input}), Idempotency::Unsafe).await {
            // RunPod publishes no error catalogue: an error that is neither a known capacity text
            // nor a malformed request may come after the pod was made (REST v1 documents a 500
            // after the pod exists). It stays pending until a listing shows whether it landed.
            Err(ProviderError::Rejected { body, .. }) if !is_request_shape_error(&body) => {
                return Err(ProviderError::Unavailable { provider: PROVIDER, message: body });
            }
            other => other?,
        };
        let pod = data.get(field).filter(|p| !p.is_null()).ok_or_else(|| ProviderError::NoCapacity {
            provider: PROVIDER,
            message: format!("{field} returned no pod"),
        })?;
        let mut instance = parse_pod(pod).ok_or_else(|| ProviderError::BadResponse {
            provider: PROVIDER,
            status: 200,
            body: self.transport.excerpt(pod.to_string().as_bytes()),
        })?;
        instance.label.get_or_insert_with(|| request.label.clone());
        Ok(instance)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let query = format!("query Pod($input: PodFilter) {{ pod(input: $input) {{ {POD_FIELDS} }} }}");
        let data = match self.graphql(&query, json!({"input": {"podId": id}}), Idempotency::Safe).await {
            Err(ProviderError::Rejected { body, .. }) if body.to_ascii_lowercase().contains("not found") => {
                return Ok(None);
            }
            other => other?,
        };
        Ok(data.get("pod").filter(|p| !p.is_null()).and_then(parse_pod))
    }

    fn headroom(&self) -> super::pacing::Headroom {
        self.transport.headroom()
    }

    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let query = format!("query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}");
        let data = self.graphql(&query, json!({}), Idempotency::Safe).await?;
        // A listing we cannot read is an error, never "no pods".
        let pods =
            data.get("myself").and_then(|m| m.get("pods")).and_then(Value::as_array).cloned().ok_or_else(|| {
                ProviderError::BadResponse { provider: PROVIDER, status: 200, body: "myself.pods is missing".into() }
            })?;
        Ok(pods.iter().filter_map(parse_pod).filter(|i| super::labelled_for_any(i, installations)).collect())
    }

    async fn destroy_instance(&self, id: &str) -> Result<Gone, ProviderError> {
        match self.graphql(TERMINATE, json!({"input": {"podId": id}}), Idempotency::Safe).await {
            Ok(_) => Ok(Gone::Now),
            // "pod not found to terminate" (seen in public captures).
            Err(ProviderError::Rejected { body, .. }) if body.to_ascii_lowercase().contains("not found") => {
                Ok(Gone::Already)
            }
            Err(error) => Err(error),
        }
    }
}

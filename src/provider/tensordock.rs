//! TensorDock client (REST v2, JSON:API-like, bearer token). Quirks kept
//! here: inventory is stale and renting a listed GPU can fail with "No
//! available nodes found" (mapped to NoCapacity); port forwards are ignored at
//! some locations, so instances get a dedicated IP and SSH on port 22; the SSH
//! key is injected by cloud-init `runcmd` (not `write_files`) for both `root`
//! and the default user `user`.

use async_trait::async_trait;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::error::ProviderError;
use super::http::{CallPolicy, Idempotency, Reply, Transport, parse_json};
use super::json::{country_suffix, number, text, unsigned};
use super::types::{CreateRequest, Instance, InstanceLabel, InstanceState, Offer, SshTarget, display_gpu_model};
use super::{OfferQuery, Provider};
use crate::crd::ProviderName;

const PROVIDER: ProviderName = ProviderName::Tensordock;
const NO_NODES: &str = "No available nodes";

pub struct TensorDock {
    base_url: String,
    transport: Transport,
}

impl TensorDock {
    pub fn new(base_url: &str, api_token: SecretString, policy: CallPolicy) -> Self {
        TensorDock {
            base_url: base_url.trim_end_matches('/').to_string(),
            transport: Transport::new(PROVIDER, api_token, policy),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Reply, ProviderError> {
        self.transport.bearer_call(method, &format!("{}{path}", self.base_url), body, idempotency).await
    }

    fn unexpected(&self, reply: &Reply) -> ProviderError {
        self.transport.unexpected(reply)
    }
}

/// Offers from `GET /locations`: one per location and GPU type, for `gpu_count` GPUs.
pub fn parse_locations(body: &Value, gpu_count: u32) -> Option<Vec<Offer>> {
    let data = body.get("data")?;
    let locations = data.get("locations").or(Some(data)).and_then(Value::as_array)?;
    let mut offers = Vec::new();
    for location in locations {
        let Some(location_id) = text(location, &["id"]) else { continue };
        let place: Vec<String> =
            ["city", "stateprovince", "country"].iter().filter_map(|k| text(location, &[k])).collect();
        let country = text(location, &["country"]).filter(|c| c.len() == 2).map(|c| c.to_ascii_uppercase());
        let location_name = (!place.is_empty()).then(|| place.join(", "));
        for gpu in location.get("gpus").and_then(Value::as_array).into_iter().flatten() {
            let Some(v0_name) = text(gpu, &["v0Name", "v0_name"]) else { continue };
            let available = unsigned::<u32>(gpu, &["count", "max_count"]).unwrap_or(0);
            let Some(per_gpu) = number(gpu, &["price_per_hr", "pricePerHr"]).filter(|p| *p > 0.0) else { continue };
            if available < gpu_count {
                continue;
            }
            let dedicated_ip = gpu
                .get("network_features")
                .and_then(|n| n.get("dedicated_ip_available"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if !dedicated_ip {
                continue; // port forwards alone are not trusted (seen ignored)
            }
            offers.push(Offer {
                provider: PROVIDER,
                id: format!("{location_id}/{v0_name}"),
                gpu_model: display_gpu_model(
                    &text(gpu, &["displayName", "display_name"]).unwrap_or_else(|| model_from_v0_name(&v0_name)),
                ),
                gpu_count,
                vram_gb: vram_from_v0_name(&v0_name).unwrap_or(0),
                cuda_version: None, // TensorDock does not advertise it: only the box can tell
                driver_version: None,
                price_per_hour: per_gpu * f64::from(gpu_count),
                reliability: None,
                location: location_name.clone(),
                country: country.clone().or_else(|| location_name.as_deref().and_then(country_suffix)),
                download_mbps: None,
                upload_mbps: None,
                interruptible: false,
                host_id: Some(location_id.clone()),
            });
        }
    }
    Some(offers)
}

/// "geforcertx4090-pcie-24gb" -> 24.
fn vram_from_v0_name(v0: &str) -> Option<u32> {
    v0.rsplit('-').next()?.strip_suffix("gb")?.parse().ok()
}

/// "geforcertx4090-pcie-24gb" -> "geforcertx4090"; normalised comparison does the rest.
fn model_from_v0_name(v0: &str) -> String {
    v0.split('-').next().unwrap_or(v0).to_string()
}

pub fn parse_instance(v: &Value) -> Option<Instance> {
    let v = v.get("data").filter(|d| d.is_object()).unwrap_or(v);
    let v = v.get("attributes").map(|attrs| merged(v, attrs)).unwrap_or_else(|| v.clone());
    let id = text(&v, &["id"])?;
    let state = match text(&v, &["status"]).map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("running") => InstanceState::Running,
        None | Some("creating") | Some("starting") | Some("pending") | Some("provisioning") => {
            InstanceState::Provisioning
        }
        Some("stopped") | Some("stopping") => InstanceState::Stopped,
        Some("deleted") | Some("terminated") | Some("destroyed") => InstanceState::Destroyed,
        Some(other) => InstanceState::Unknown(other.to_string()),
    };
    let ip = text(&v, &["ipAddress", "ip_address", "ip"]);
    let forwards: Vec<(u16, u16)> = v
        .get("portForwards")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some((
                unsigned::<u16>(f, &["internal_port", "internalPort"])?,
                unsigned::<u16>(f, &["external_port", "externalPort"])?,
            ))
        })
        .collect();
    let forwarded_ssh = forwards.iter().find(|(internal, _)| *internal == 22).map(|(_, external)| *external);
    // With a dedicated IP every port is open as itself; a forward, when listed, wins.
    let endpoints =
        ip.iter()
            .flat_map(|host| {
                forwards.iter().filter(|(internal, _)| *internal != 22).map(|(internal, external)| {
                    super::PortEndpoint { private_port: *internal, host: host.clone(), port: *external }
                })
            })
            .collect();
    Some(Instance {
        provider: PROVIDER,
        id,
        label: text(&v, &["name"]).as_deref().and_then(InstanceLabel::parse),
        state,
        ssh: ip.clone().map(|host| SshTarget { host, port: forwarded_ssh.unwrap_or(22), user: "user".into() }),
        public_ip: ip,
        price_per_hour: number(&v, &["rateHourly", "rate_hourly"]),
        gpu_model: None,
        endpoints,
    })
}

fn merged(outer: &Value, attributes: &Value) -> Value {
    let mut merged = attributes.clone();
    if let (Some(m), Some(id)) = (merged.as_object_mut(), outer.get("id")) {
        m.insert("id".into(), id.clone());
    }
    merged
}

/// Cloud-init that installs the key for root and `user` with `runcmd` only,
/// then runs the start script.
pub fn cloud_init(public_key: &str, env: &[(String, String)], start_script: Option<&str>) -> Value {
    let key = public_key.trim().replace('\'', "");
    let mut runcmd = Vec::new();
    // A VM has no container env: export it system-wide.
    for (name, value) in env {
        runcmd.push(format!("echo '{name}={}' >> /etc/environment", value.replace('\'', "")));
    }
    for home in ["/root", "/home/user"] {
        runcmd.push(format!("mkdir -p {home}/.ssh"));
        runcmd.push(format!("echo '{key}' >> {home}/.ssh/authorized_keys"));
        runcmd.push(format!("chmod 700 {home}/.ssh && chmod 600 {home}/.ssh/authorized_keys"));
    }
    runcmd.push("chown -R user:user /home/user/.ssh || true".into());
    if let Some(script) = start_script.filter(|s| !s.trim().is_empty()) {
        runcmd.push(format!(
            "mkdir -p /var/log/gpu-shopper && bash -c {} > /var/log/gpu-shopper/start.log 2>&1 &",
            shell_quote(script)
        ));
    }
    json!({ "runcmd": runcmd })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[async_trait]
impl Provider for TensorDock {
    fn name(&self) -> ProviderName {
        PROVIDER
    }

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
        let reply = self.call(Method::GET, "/locations", None, Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        let gpu_count = query.requirements.gpu_count.unwrap_or(1);
        let mut offers = parse_locations(&body, gpu_count).ok_or_else(|| self.unexpected(&reply))?;
        offers.truncate(query.limit as usize);
        Ok(offers)
    }

    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError> {
        let (location_id, v0_name) = request.offer.id.split_once('/').ok_or_else(|| ProviderError::Rejected {
            provider: PROVIDER,
            status: 0,
            body: format!("offer id {:?} is not location/gpu", request.offer.id),
        })?;
        let count = request.offer.gpu_count;
        let body = json!({"data": {"type": "virtualmachine", "attributes": {
            "name": request.label.to_string(),
            "type": "virtualmachine",
            "image": "ubuntu2404",
            "resources": {
                "vcpu_count": 4 * count,
                "ram_gb": 16 * count,
                "storage_gb": request.disk_gb,
                "gpus": { v0_name: {"count": count} },
            },
            "location_id": location_id,
            "useDedicatedIp": true,
            "ssh_key": request.ssh_public_key,
            "cloud_init": cloud_init(&request.ssh_public_key, &request.env, request.start_script.as_deref()),
            "port_forwards": request.ports.iter().map(|p| json!({"internal_port": p, "external_port": p})).collect::<Vec<_>>(),
        }}});
        let reply = match self.call(Method::POST, "/instances", Some(&body), Idempotency::Unsafe).await {
            Err(ProviderError::Unavailable { message, .. }) if message.contains(NO_NODES) => {
                return Err(ProviderError::NoCapacity { provider: PROVIDER, message });
            }
            other => other?,
        };
        if !reply.status.is_success() {
            let message = self.transport.excerpt(&reply.body);
            return Err(if message.contains(NO_NODES) {
                ProviderError::NoCapacity { provider: PROVIDER, message }
            } else if reply.status.as_u16() == 404 {
                ProviderError::OfferGone { provider: PROVIDER, offer_id: request.offer.id.clone(), message }
            } else if message.to_ascii_lowercase().contains("insufficient") {
                ProviderError::InsufficientFunds { provider: PROVIDER, message }
            } else {
                ProviderError::Rejected { provider: PROVIDER, status: reply.status.as_u16(), body: message }
            });
        }
        let answer: Value = parse_json(&self.transport, &reply)?;
        let mut instance = parse_instance(&answer).ok_or_else(|| self.unexpected(&reply))?;
        instance.label.get_or_insert_with(|| request.label.clone());
        instance.price_per_hour.get_or_insert(request.offer.price_per_hour);
        Ok(instance)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let reply = self.call(Method::GET, &format!("/instances/{id}"), None, Idempotency::Safe).await?;
        if reply.status.as_u16() == 404 {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        parse_instance(&body).map(Some).ok_or_else(|| self.unexpected(&reply))
    }

    async fn list_instances(&self, deployment_id: &str) -> Result<Vec<Instance>, ProviderError> {
        let reply = self.call(Method::GET, "/instances", None, Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        let data = body.get("data").unwrap_or(&body);
        let items =
            data.get("instances").or(Some(data)).and_then(Value::as_array).ok_or_else(|| self.unexpected(&reply))?;
        Ok(items
            .iter()
            .filter_map(parse_instance)
            .filter(|i| i.label.as_ref().is_some_and(|l| l.deployment_id == deployment_id))
            .collect())
    }

    async fn destroy_instance(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self.call(Method::DELETE, &format!("/instances/{id}"), None, Idempotency::Safe).await?;
        match reply.status.as_u16() {
            // TensorDock answers many errors with 200 and the error in the body.
            200..=299 => match refusal_in_body(&reply.body) {
                Some(message) => {
                    Err(ProviderError::Rejected { provider: PROVIDER, status: reply.status.as_u16(), body: message })
                }
                None => Ok(()),
            },
            404 => Ok(()),
            _ => Err(self.unexpected(&reply)),
        }
    }
}

/// The error a 2xx body carries, if any: `{"status": "error"}`, `{"success": false}` or an `error` text.
fn refusal_in_body(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let status_error = answer.get("status").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("error"));
    let unsuccessful = answer.get("success") == Some(&Value::Bool(false));
    let error_text = text(&answer, &["error", "message"]);
    (status_error || unsuccessful || answer.get("error").is_some_and(|e| !e.is_null()))
        .then(|| error_text.unwrap_or_else(|| "refused".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_injects_the_key_for_root_and_user_with_runcmd_only() {
        let init = cloud_init("ssh-ed25519 AAAAC3 gpu-shopper", &[("MODEL".into(), "llama".into())], Some("echo 'hi'"));
        assert!(init.get("write_files").is_none());
        let commands: Vec<&str> = init["runcmd"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert!(commands.iter().any(|c| c.contains("/root/.ssh/authorized_keys") && c.contains("ssh-ed25519 AAAAC3")));
        assert!(commands.iter().any(|c| c.contains("/home/user/.ssh/authorized_keys")));
        assert!(commands.contains(&"echo 'MODEL=llama' >> /etc/environment"));
        assert!(commands.last().unwrap().contains(r"'echo '\''hi'\'''"));
    }

    #[test]
    fn a_refusal_inside_a_200_is_read_as_one() {
        assert_eq!(refusal_in_body(br#"{"status":"error","error":"busy"}"#).as_deref(), Some("busy"));
        assert!(refusal_in_body(br#"{"success":false}"#).is_some());
        assert_eq!(refusal_in_body(br#"{"status":"success"}"#), None);
        assert_eq!(refusal_in_body(b""), None);
    }

    #[test]
    fn v0_names() {
        assert_eq!(vram_from_v0_name("geforcertx4090-pcie-24gb"), Some(24));
        assert_eq!(vram_from_v0_name("weird"), None);
    }
}

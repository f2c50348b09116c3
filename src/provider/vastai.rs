//! Vast.ai client (REST, JSON, bearer key). Quirks kept here: the create id
//! in `new_contract` may be missing (found again by label); `GET
//! /instances/{id}/` wraps the instance in `instances`; status may be in
//! `actual_status` or `cur_state`; the address is `public_ipaddr`; SSH goes
//! through the proxy `ssh_host:ssh_port` as root unless a direct port is mapped;
//! the key is attached to the instance after create.

use async_trait::async_trait;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::error::ProviderError;
use super::http::{CallPolicy, Idempotency, Reply, Transport, parse_json};
use super::json::{boolean, country_suffix, cuda_version, number, text, unsigned};
use super::types::{CreateRequest, Instance, InstanceLabel, InstanceState, Offer, SshTarget, display_gpu_model};
use super::{OfferQuery, Provider};
use crate::crd::{Billing, ProviderName};

const PROVIDER: ProviderName = ProviderName::Vastai;

pub struct VastAi {
    base_url: String,
    transport: Transport,
}

impl VastAi {
    pub fn new(base_url: &str, api_key: SecretString, policy: CallPolicy) -> Self {
        VastAi {
            base_url: base_url.trim_end_matches('/').to_string(),
            transport: Transport::new(PROVIDER, api_key, policy),
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

    async fn find_by_label(&self, label: &InstanceLabel) -> Result<Option<Instance>, ProviderError> {
        let wanted = label.to_string();
        Ok(self
            .list_all()
            .await?
            .into_iter()
            .find(|i| i.label.as_ref().map(ToString::to_string).as_deref() == Some(&wanted)))
    }

    async fn list_all(&self) -> Result<Vec<Instance>, ProviderError> {
        let reply = self.call(Method::GET, "/instances/", None, Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        // A listing we cannot read is an error, never "no instances".
        let items = body.get("instances").and_then(Value::as_array).ok_or_else(|| self.unexpected(&reply))?;
        Ok(items.iter().filter_map(parse_instance).collect())
    }
}

/// The search query Vast's `/bundles/` understands.
pub fn search_query(query: &OfferQuery) -> Value {
    let r = &query.requirements;
    let mut q = json!({
        "rentable": {"eq": true},
        "order": [["dph_total", "asc"]],
        "type": if r.billing == Some(Billing::Interruptible) { "bid" } else { "on-demand" },
        "limit": query.limit,
    });
    if let Some(count) = r.gpu_count {
        q["num_gpus"] = json!({"eq": count});
    }
    if let Some(vram) = r.min_vram_gb {
        q["gpu_ram"] = json!({"gte": vram * 1024}); // MB
    }
    if let Some(cuda) = r.min_cuda_version.as_deref().and_then(|c| c.parse::<f64>().ok()) {
        q["cuda_max_good"] = json!({"gte": cuda});
    }
    if let Some(price) = r.max_price_per_hour {
        q["dph_total"] = json!({"lte": price});
    }
    if let Some(reliability) = r.min_reliability {
        q["reliability2"] = json!({"gte": reliability});
    }
    if let Some(down) = r.min_download_mbps {
        q["inet_down"] = json!({"gte": down});
    }
    if let Some(up) = r.min_upload_mbps {
        q["inet_up"] = json!({"gte": up});
    }
    if !r.excluded_countries.is_empty() {
        q["geolocation"] = json!({"notin": r.excluded_countries});
    }
    q
}

/// One element of `offers`; `None` when it lacks what renting needs.
pub fn parse_offer(v: &Value, interruptible: bool) -> Option<Offer> {
    let id = text(v, &["id", "ask_contract_id"])?;
    let gpu_count = unsigned::<u32>(v, &["num_gpus"]).filter(|n| *n > 0)?;
    let price_per_hour = number(v, &["dph_total", "dph"]).filter(|p| *p > 0.0)?;
    let location = text(v, &["geolocation"]);
    Some(Offer {
        provider: PROVIDER,
        id,
        gpu_model: display_gpu_model(&text(v, &["gpu_name"])?),
        gpu_count,
        vram_gb: (number(v, &["gpu_ram"]).unwrap_or(0.0) / 1024.0).round() as u32,
        cuda_version: number(v, &["cuda_max_good"]).and_then(|c| cuda_version(&format!("{c}"))),
        driver_version: text(v, &["driver_version"]),
        price_per_hour,
        reliability: number(v, &["reliability2", "reliability"]),
        country: location.as_deref().and_then(country_suffix),
        location,
        download_mbps: number(v, &["inet_down"]),
        upload_mbps: number(v, &["inet_up"]),
        interruptible,
        host_id: text(v, &["machine_id", "host_id"]),
    })
}

/// One instance, from `instances` (a list item or the wrapped object).
pub fn parse_instance(v: &Value) -> Option<Instance> {
    let id = text(v, &["id"])?;
    // `actual_status` is null while the container is created: not running yet,
    // whatever `cur_state` (the contract's state) says. When the field is
    // absent altogether (seen), `cur_state` is all there is.
    let status = match v.get("actual_status") {
        Some(Value::Null) => None,
        Some(_) => text(v, &["actual_status"]),
        None => text(v, &["cur_state"]),
    };
    let state = match status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("created") | Some("loading") | Some("scheduling") => InstanceState::Provisioning,
        Some("running") => InstanceState::Running,
        Some("exited") | Some("stopped") | Some("inactive") => InstanceState::Stopped,
        Some("destroyed") | Some("deleted") => InstanceState::Destroyed,
        Some(other) => InstanceState::Unknown(other.to_string()),
    };
    let public_ip = text(v, &["public_ipaddr", "public_ip"]);
    let public_ip_for_ports = public_ip.clone();
    let direct_port = v
        .get("ports")
        .and_then(|p| p.get("22/tcp"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|m| unsigned::<u16>(m, &["HostPort"]));
    let proxy = text(v, &["ssh_host"]).zip(unsigned::<u16>(v, &["ssh_port"]));
    let ssh = match (proxy, public_ip.clone().zip(direct_port)) {
        (Some((host, port)), _) | (None, Some((host, port))) => Some(SshTarget { host, port, user: "root".into() }),
        (None, None) => None,
    };
    Some(Instance {
        provider: PROVIDER,
        id,
        label: text(v, &["label"]).as_deref().and_then(InstanceLabel::parse),
        state,
        ssh,
        public_ip,
        price_per_hour: number(v, &["dph_total"]),
        gpu_model: text(v, &["gpu_name"]),
        endpoints: endpoints(v, public_ip_for_ports.as_deref()),
    })
}

/// `{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]}` -> endpoints (SSH excluded).
fn endpoints(v: &Value, public_ip: Option<&str>) -> Vec<super::PortEndpoint> {
    let Some(ports) = v.get("ports").and_then(Value::as_object) else { return Vec::new() };
    ports
        .iter()
        .filter_map(|(key, mappings)| {
            let private_port: u16 = key.split('/').next()?.parse().ok()?;
            let mapping = mappings.as_array()?.first()?;
            let port = unsigned::<u16>(mapping, &["HostPort"])?;
            let host =
                text(mapping, &["HostIp"]).filter(|ip| ip != "0.0.0.0").or_else(|| public_ip.map(str::to_string))?;
            (private_port != 22).then_some(super::PortEndpoint { private_port, host, port })
        })
        .collect()
}

#[async_trait]
impl Provider for VastAi {
    fn name(&self) -> ProviderName {
        PROVIDER
    }

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
        let q = search_query(query);
        let interruptible = q["type"] == "bid";
        let url = format!("{}/bundles/", self.base_url);
        let q_text = q.to_string();
        let reply = self
            .transport
            .call(Idempotency::Safe, || {
                self.transport.client().get(&url).bearer_auth(self.transport.secret()).query(&[("q", &q_text)])
            })
            .await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        let offers = body.get("offers").and_then(Value::as_array).ok_or_else(|| self.unexpected(&reply))?;
        Ok(offers
            .iter()
            .filter(|o| boolean(o, &["rentable"]).unwrap_or(true))
            .filter_map(|o| parse_offer(o, interruptible))
            .collect())
    }

    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError> {
        let mut env: serde_json::Map<String, Value> = request.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        // Vast takes port mappings as docker flags inside env.
        for port in &request.ports {
            env.insert(format!("-p {port}:{port}"), json!("1"));
        }
        let mut body = json!({
            "client_id": "me",
            "image": request.image,
            "env": env,
            "onstart": request.start_script.clone().unwrap_or_default(),
            "runtype": "ssh",
            "disk": request.disk_gb,
            "label": request.label.to_string(),
        });
        if request.offer.interruptible {
            body["price"] = json!(request.offer.price_per_hour);
        }
        let path = format!("/asks/{}/", request.offer.id);
        let reply = self.call(Method::PUT, &path, Some(&body), Idempotency::Unsafe).await?;
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if !reply.status.is_success() || answer.get("success") == Some(&Value::Bool(false)) {
            let error = text(&answer, &["error"]).unwrap_or_default();
            let message = text(&answer, &["msg", "message"]).unwrap_or_else(|| self.transport.excerpt(&reply.body));
            return Err(match error.as_str() {
                "no_such_ask" => {
                    ProviderError::OfferGone { provider: PROVIDER, offer_id: request.offer.id.clone(), message }
                }
                "insufficient_credit" | "insufficient_funds" => {
                    ProviderError::InsufficientFunds { provider: PROVIDER, message }
                }
                _ if reply.status.as_u16() == 404 => {
                    ProviderError::OfferGone { provider: PROVIDER, offer_id: request.offer.id.clone(), message }
                }
                _ => ProviderError::Rejected { provider: PROVIDER, status: reply.status.as_u16(), body: message },
            });
        }
        let id = match text(&answer, &["new_contract"]) {
            Some(id) => id,
            // Seen: success without the id. Our label finds it.
            None => match self.find_by_label(&request.label).await? {
                Some(instance) => instance.id,
                None => return Err(self.unexpected(&reply)),
            },
        };
        self.ensure_ssh_key(&id, &request.ssh_public_key).await?;
        Ok(self.get_instance(&id).await?.unwrap_or(Instance {
            provider: PROVIDER,
            id,
            label: Some(request.label.clone()),
            state: InstanceState::Provisioning,
            ssh: None,
            public_ip: None,
            price_per_hour: Some(request.offer.price_per_hour),
            gpu_model: Some(request.offer.gpu_model.clone()),
            endpoints: Vec::new(),
        }))
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let reply = self.call(Method::GET, &format!("/instances/{id}/"), None, Idempotency::Safe).await?;
        if reply.status.as_u16() == 404 {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        // Seen: wrapped as {"instances": {...}}; also accept a list or the bare object.
        let item = match body.get("instances") {
            Some(Value::Array(items)) => items.first().cloned(),
            Some(Value::Object(_)) => body.get("instances").cloned(),
            Some(Value::Null) => None,
            None if body.get("id").is_some() => Some(body.clone()),
            _ => return Err(self.unexpected(&reply)),
        };
        Ok(item.as_ref().and_then(parse_instance))
    }

    async fn list_instances(&self, deployment_id: &str) -> Result<Vec<Instance>, ProviderError> {
        let all = self.list_all().await?;
        Ok(all.into_iter().filter(|i| i.label.as_ref().is_some_and(|l| l.deployment_id == deployment_id)).collect())
    }

    async fn destroy_instance(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self.call(Method::DELETE, &format!("/instances/{id}/"), None, Idempotency::Safe).await?;
        match reply.status.as_u16() {
            // vast-ai/vast-python `destroy__instance`: a 200 may still say `success: false` with a `msg`.
            200..=299 => {
                let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                if answer.get("success") == Some(&Value::Bool(false)) {
                    let message =
                        text(&answer, &["msg", "error"]).unwrap_or_else(|| self.transport.excerpt(&reply.body));
                    return Err(ProviderError::Rejected {
                        provider: PROVIDER,
                        status: reply.status.as_u16(),
                        body: message,
                    });
                }
                Ok(())
            }
            404 => Ok(()), // already gone
            _ => Err(self.unexpected(&reply)),
        }
    }

    /// Vast attaches keys to an instance after create.
    async fn ensure_ssh_key(&self, id: &str, ssh_public_key: &str) -> Result<(), ProviderError> {
        let attach = json!({"ssh_key": ssh_public_key});
        let reply = self.call(Method::POST, &format!("/instances/{id}/ssh/"), Some(&attach), Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        Ok(())
    }
}

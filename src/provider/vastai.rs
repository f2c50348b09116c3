//! Vast.ai client (REST, JSON, bearer key). Quirks kept here (sources in
//! docs/providers.md): search is `POST /bundles/` with the query as the body and
//! memory in MB = GB x 1000 (vast-ai/vast-cli `offers_mult`), so a 24 GB card
//! that reports 24564 MB is found; the create id in `new_contract` may be
//! missing (found again by label), and a create may answer `success: false`
//! while naming an instance it made (spot), which is destroyed here; `GET
//! /instances/{id}/` wraps the instance in `instances`; the listing is the
//! paged `/api/v1/instances/` (`next_token`); status may be in `actual_status`
//! or `cur_state`; SSH goes through the proxy `ssh_host:ssh_port` as root unless
//! a direct port is mapped; the key is attached to the instance after create.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::error::ProviderError;
use super::http::{CallPolicy, Idempotency, Reply, Transport, parse_json};
use super::json::{boolean, country_suffix, cuda_version, number, text, unsigned};
use super::pacing::{Limits, Window};
use super::types::{
    CreateRequest, Instance, InstanceLabel, InstanceState, Offer, SshTarget, display_gpu_model, gpu_model_key,
};
use super::{Gone, OfferQuery, Provider};
use crate::crd::{Billing, ProviderName};

const PROVIDER: ProviderName = ProviderName::Vastai;

/// Vast limits each endpoint to a minimum interval per identity and sends no
/// Retry-After (docs.vast.ai/api-reference/rate-limits-and-errors); the interval
/// is not published (the OpenAPI's 429 examples name a per-endpoint "threshold"
/// without a unit), so this is a guess the pacer widens on a 429 and
/// `VASTAI_ENDPOINT_INTERVAL` overrides.
pub const DEFAULT_ENDPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Vast's one published limit: search, "requests: 10, per: minute", per IP
/// (vast-ai/docs `api-reference/openapi/yaml/search_offers.yaml`, `x-rate-limit`).
const SEARCH_WINDOW: &[(&str, Window)] = &[("POST /bundles/", Window { calls: 10, period: Duration::from_secs(60) })];

/// What `allocated_storage` says when the rent names no disk: vast-cli's default for pricing.
const DEFAULT_ALLOCATED_STORAGE_GB: u32 = 5;

/// Instances per page of the v1 listing: what vast-ai/vast-cli `show_instances` asks for.
const LIST_PAGE_SIZE: u32 = 25;
/// A listing longer than this many pages is refused rather than followed forever
/// (100 000 instances: 400 pages, the first cap, was exactly a 10 000-session bench).
const MAX_LIST_PAGES: usize = 4000;

pub struct VastAi {
    base_url: String,
    /// The server root, for the `/api/v1` listing (`base_url` names `/api/v0`).
    root_url: String,
    transport: Transport,
}

impl VastAi {
    pub fn new(base_url: &str, api_key: SecretString, policy: CallPolicy) -> Self {
        Self::with_endpoint_interval(base_url, api_key, policy, DEFAULT_ENDPOINT_INTERVAL)
    }

    /// A client that leaves at least `interval` between two calls to one endpoint (zero: no pacing).
    pub fn with_endpoint_interval(
        base_url: &str,
        api_key: SecretString,
        policy: CallPolicy,
        interval: Duration,
    ) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        let root_url = base_url.strip_suffix("/api/v0").unwrap_or(&base_url).to_string();
        let limits = Limits {
            per_endpoint: (!interval.is_zero()).then_some(interval),
            endpoint_windows: if interval.is_zero() { &[] } else { SEARCH_WINDOW },
            ..Limits::NONE
        };
        VastAi { base_url, root_url, transport: Transport::new(PROVIDER, api_key, policy, limits) }
    }

    /// `endpoint` names the route for the pacer ("PUT /asks/{id}/"), `path` the real one.
    async fn call(
        &self,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Reply, ProviderError> {
        self.transport.bearer_call(method, &format!("{}{path}", self.base_url), endpoint, body, idempotency).await
    }

    fn unexpected(&self, reply: &Reply) -> ProviderError {
        self.transport.unexpected(reply)
    }

    /// What a refused create means. Only an account problem or a request we
    /// built wrong stops the session; anything about this offer moves on.
    /// vast-ai/docs openapi.yaml (create instance): a taken ask is a 404 whose
    /// `error` is `invalid_args` and whose `msg` reads "error 404/3603: no_such_ask
    /// ..." (or a 410 with `error: no_such_ask`), so the message decides, not the code.
    fn create_refusal(&self, request: &CreateRequest, reply: &Reply, answer: &Value) -> ProviderError {
        let error = text(answer, &["error"]).unwrap_or_default();
        let message = text(answer, &["msg", "message"]).unwrap_or_else(|| self.transport.excerpt(&reply.body));
        let offer_gone = || ProviderError::OfferGone {
            provider: PROVIDER,
            offer_id: request.offer.id.clone(),
            message: message.clone(),
        };
        let status = reply.status.as_u16();
        if error == "no_such_ask" || message.contains("no_such_ask") || matches!(status, 404 | 410) {
            return offer_gone();
        }
        match error.as_str() {
            // No published code for a lack of credit on create: both spellings seen elsewhere are read.
            "insufficient_credit" | "insufficient_funds" | "insufficient_balance" => {
                ProviderError::InsufficientFunds { provider: PROVIDER, message }
            }
            // The price moved since the search (the docs' SLA table: re-search and rent again).
            "invalid_price" => offer_gone(),
            "invalid_args" | "invalid_request" | "bad_request" | "no_ssh_key_for_vm" => {
                ProviderError::Rejected { provider: PROVIDER, status, body: message }
            }
            // Unavailable hosts and a spot bid outbid at once: about this offer.
            _ => offer_gone(),
        }
    }

    async fn find_by_label(&self, label: &InstanceLabel) -> Result<Option<Instance>, ProviderError> {
        let wanted = label.to_string();
        Ok(self
            .list_all()
            .await?
            .into_iter()
            .find(|i| i.label.as_ref().map(ToString::to_string).as_deref() == Some(&wanted)))
    }

    /// Every instance of the account, page after page of `GET /api/v1/instances/`.
    async fn list_all(&self) -> Result<Vec<Instance>, ProviderError> {
        let url = format!("{}/api/v1/instances/", self.root_url);
        let mut instances = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            // vast-cli (`VastClient._build_url`) JSON-encodes lists, objects and numbers
            // and sends a string as it is: the cursor goes raw.
            let mut params = vec![
                ("select_filters", "{}".to_string()),
                ("order_by", json!([{"col": "id", "dir": "asc"}]).to_string()),
                ("limit", LIST_PAGE_SIZE.to_string()),
            ];
            if let Some(token) = &after {
                params.push(("after_token", token.clone()));
            }
            let reply = self
                .transport
                .call(Idempotency::Safe, "GET /api/v1/instances/", || {
                    self.transport.client().get(&url).bearer_auth(self.transport.secret()).query(&params)
                })
                .await?;
            if !reply.status.is_success() {
                return Err(self.unexpected(&reply));
            }
            let body: Value = parse_json(&self.transport, &reply)?;
            // A listing we cannot read is an error, never "no instances".
            let page = body.get("instances").and_then(Value::as_array).ok_or_else(|| self.unexpected(&reply))?;
            instances.extend(page.iter().filter_map(parse_instance));
            match text(&body, &["next_token"]) {
                Some(token) if !page.is_empty() => after = Some(token),
                _ => return Ok(instances),
            }
        }
        Err(ProviderError::BadResponse {
            provider: PROVIDER,
            status: 200,
            body: format!("the instance listing did not end after {MAX_LIST_PAGES} pages"),
        })
    }
}

/// The search query Vast's `/bundles/` understands.
pub fn search_query(query: &OfferQuery) -> Value {
    let r = &query.requirements;
    let mut q = json!({
        "rentable": {"eq": true},
        "rented": {"eq": false},
        "order": [["dph_total", "asc"]],
        "type": if r.billing == Some(Billing::Interruptible) { "bid" } else { "on-demand" },
        "limit": query.limit,
    });
    if let Some(count) = r.gpu_count {
        q["num_gpus"] = json!({"eq": count});
    }
    // Prices with the disk the rent asks for (vast-cli `search_offers` sends
    // `allocated_storage`; without it `dph_total` prices Vast's 8 GB default).
    q["allocated_storage"] = json!(if query.disk_gb == 0 { DEFAULT_ALLOCATED_STORAGE_GB } else { query.disk_gb });
    // Ports mapped on the host's public address need a host with direct ports (dstack asks the same).
    if query.public_ports {
        q["direct_port_count"] = json!({"gte": 1});
    }
    // Cards report less than their name: an L40S 46068 MB for 48 GB, below
    // even GB x 1000. dstackai/gpuhunt asks for GB x 1024 x 0.93.
    // A memory named in every requested model ("A100 80GB") bounds it too.
    let named: Option<Vec<u32>> = r.gpu_models.iter().map(|m| crate::units::requested_memory_gb(m)).collect();
    let by_name = named.filter(|n| !n.is_empty()).and_then(|n| n.into_iter().min());
    if let Some(vram) = r.min_vram_gb.max(by_name) {
        q["gpu_ram"] = json!({"gte": (f64::from(vram) * 1024.0 * crate::units::REPORTED_MEMORY_MARGIN).floor()});
    }
    // The cheapest `limit` offers come back: without a name filter an
    // expensive model is crowded out by cheap ones.
    if !r.gpu_models.is_empty() {
        q["gpu_name"] = json!({"in": vast_gpu_names(&r.gpu_models)});
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

/// The start command: puts the session's key where the container's sshd reads
/// it (dstack installs its keys the same way), so the key is on the machine
/// even when the attach call after create fails.
fn onstart(request: &CreateRequest) -> String {
    let key: String = request
        .ssh_public_key
        .split_whitespace()
        .take(2)
        .filter(|part| {
            part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '@' | '.'))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let install = format!(
        "mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/authorized_keys && (grep -qF '{key}' ~/.ssh/authorized_keys || echo '{key}' >> ~/.ssh/authorized_keys) && chmod 600 ~/.ssh/authorized_keys"
    );
    match request.start_script.as_deref().filter(|s| !s.is_empty()) {
        Some(script) => format!("{install}\n{script}"),
        None => install,
    }
}

/// `gpu_name` values Vast lists, spaces for vast-cli's underscores (a
/// published list of Vast's names; see docs/providers.md). A requested model
/// matches every form factor of it ("A100" -> "A100 PCIE", "A100 SXM4").
const VAST_GPU_NAMES: &[&str] = &[
    "A10",
    "A100 PCIE",
    "A100 SXM4",
    "A100X",
    "A40",
    "A800 PCIE",
    "B200",
    "GH200 SXM",
    "H100 NVL",
    "H100 PCIE",
    "H100 SXM",
    "H200",
    "H200 NVL",
    "L4",
    "L40",
    "L40S",
    "Q RTX 4000",
    "Q RTX 6000",
    "Q RTX 8000",
    "RTX 2080 Ti",
    "RTX 3060",
    "RTX 3070",
    "RTX 3080",
    "RTX 3080 Ti",
    "RTX 3090",
    "RTX 3090 Ti",
    "RTX 4060 Ti",
    "RTX 4070",
    "RTX 4070 Ti",
    "RTX 4080",
    "RTX 4080S",
    "RTX 4090",
    "RTX 4090D",
    "RTX 5060 Ti",
    "RTX 5070",
    "RTX 5070 Ti",
    "RTX 5080",
    "RTX 5090",
    "RTX 6000Ada",
    "RTX A2000",
    "RTX A4000",
    "RTX A4500",
    "RTX A5000",
    "RTX A6000",
    "RTX PRO 6000 WS",
    "RTX PRO 6000 S",
    "Tesla T4",
    "Tesla V100",
];

/// Vast names for the requested models: the known names of the same model,
/// and each request as written (memory dropped) for names not in the list.
pub fn vast_gpu_names(models: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for model in models {
        let as_written = display_gpu_model(model);
        let wanted = gpu_model_key(&as_written);
        let known = VAST_GPU_NAMES.iter().filter(|n| gpu_model_key(&display_gpu_model(n)) == wanted);
        for name in known.map(|n| n.to_string()).chain(std::iter::once(as_written.clone())) {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                names.push(name);
            }
        }
    }
    names
}

/// One element of `offers`; `None` when it lacks what renting needs.
pub fn parse_offer(v: &Value, interruptible: bool) -> Option<Offer> {
    let id = text(v, &["id", "ask_contract_id"])?;
    let gpu_count = unsigned::<u32>(v, &["num_gpus"]).filter(|n| *n > 0)?;
    // A bid search prices `dph_total` at the minimum bid, storage included.
    let price_per_hour = number(v, &["dph_total", "dph"]).filter(|p| *p > 0.0)?;
    let location = text(v, &["geolocation"]);
    let reported_mb = number(v, &["gpu_ram"]).unwrap_or(0.0);
    Some(Offer {
        provider: PROVIDER,
        id,
        gpu_model: display_gpu_model(&text(v, &["gpu_name"])?),
        gpu_count,
        vram_gb: crate::units::nominal_memory_gb(reported_mb),
        cuda_version: number(v, &["cuda_max_good"]).and_then(|c| cuda_version(&format!("{c}"))),
        driver_version: text(v, &["driver_version"]),
        price_per_hour,
        reliability: number(v, &["reliability2", "reliability"]),
        country: location.as_deref().and_then(country_suffix),
        location,
        download_mbps: number(v, &["inet_down"]),
        upload_mbps: number(v, &["inet_up"]),
        interruptible,
        // dstack and SkyPilot bid the offer's `min_bid` (per machine, storage apart).
        bid_per_hour: if interruptible { number(v, &["min_bid"]).filter(|b| *b > 0.0) } else { None },
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
    // docs.vast.ai show-instance: `cur_state` `unloaded` is the contract released on destroy.
    if text(v, &["cur_state"]).as_deref() == Some("unloaded") {
        return Some(Instance { state: InstanceState::Destroyed, ..parse_instance_with(v, id, None)? });
    }
    parse_instance_with(v, id, status)
}

fn parse_instance_with(v: &Value, id: String, status: Option<String>) -> Option<Instance> {
    let state = match status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        // `rebooting`: "Container is restarting (transient)".
        None | Some("created") | Some("loading") | Some("scheduling") | Some("rebooting") => {
            InstanceState::Provisioning
        }
        Some("running") => InstanceState::Running,
        // docs.vast.ai show-instances: `exited` (the container exited),
        // `frozen` (paused, still billing), `offline` (host disconnected) and
        // `unknown` (no heartbeat) never become running by themselves.
        Some("exited") | Some("stopped") | Some("inactive") | Some("frozen") | Some("offline") | Some("unknown") => {
            InstanceState::Stopped
        }
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
        ports_open_on_public_ip: false,
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
        // Every official client POSTs the query as the body (vast-cli `search_offers`).
        let reply = self.call(Method::POST, "POST /bundles/", "/bundles/", Some(&q), Idempotency::Safe).await?;
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
            "onstart": onstart(request),
            "runtype": "ssh",
            "disk": request.disk_gb,
            "label": request.label.to_string(),
        });
        if request.offer.interruptible {
            body["price"] = json!(request.offer.bid_per_hour.unwrap_or(request.offer.price_per_hour));
        }
        let path = format!("/asks/{}/", request.offer.id);
        let reply = self.call(Method::PUT, "PUT /asks/{id}/", &path, Some(&body), Idempotency::Unsafe).await?;
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let made = text(&answer, &["new_contract"]);
        if !reply.status.is_success() || answer.get("success") == Some(&Value::Bool(false)) {
            let error = self.create_refusal(request, &reply, &answer);
            // A refused spot create can still make a stopped instance and name it (dstack
            // `api_client.py`: "created despite the error"); it bills storage. It may not show in
            // lookups yet, so the destroy is sent before any lookup; if it fails, the instance
            // carries our label and the stray reaper destroys it.
            if let Some(id) = made {
                let destroyed = super::destroy_confirmed(self, &id).await;
                if let Err(destroy_error) = destroyed {
                    tracing::warn!(provider = %PROVIDER, instance = %id, error = %destroy_error, "a refused create left an instance; the stray reaper will destroy it");
                }
            }
            return Err(error);
        }
        let id = match made {
            Some(id) => id,
            // Seen: success without the id. Our label finds it.
            None => match self.find_by_label(&request.label).await? {
                Some(instance) => instance.id,
                None => return Err(self.unexpected(&reply)),
            },
        };
        // From here the machine exists and bills: nothing below may read as "not landed".
        // The key is also in `onstart`; a failed attach is retried on adoption and by SSHReady.
        if let Err(error) = self.ensure_ssh_key(&id, &request.ssh_public_key).await {
            tracing::warn!(provider = %PROVIDER, instance = %id, %error, "attaching the key failed; the start command installs it too");
        }
        let fallback = || Instance {
            provider: PROVIDER,
            id: id.clone(),
            label: Some(request.label.clone()),
            state: InstanceState::Provisioning,
            ssh: None,
            public_ip: None,
            price_per_hour: Some(request.offer.price_per_hour),
            gpu_model: Some(request.offer.gpu_model.clone()),
            endpoints: Vec::new(),
            ports_open_on_public_ip: false,
        };
        match self.get_instance(&id).await {
            Ok(Some(instance)) => Ok(instance),
            Ok(None) => Ok(fallback()),
            Err(error) => {
                tracing::debug!(provider = %PROVIDER, instance = %id, %error, "the lookup after create failed; the listing will show it");
                Ok(fallback())
            }
        }
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let reply = self
            .call(Method::GET, "GET /instances/{id}/", &format!("/instances/{id}/"), None, Idempotency::Safe)
            .await?;
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

    fn headroom(&self) -> super::pacing::Headroom {
        self.transport.headroom()
    }

    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let all = self.list_all().await?;
        Ok(all.into_iter().filter(|i| super::labelled_for_any(i, installations)).collect())
    }

    async fn destroy_instance(&self, id: &str) -> Result<Gone, ProviderError> {
        let reply = self
            .call(Method::DELETE, "DELETE /instances/{id}/", &format!("/instances/{id}/"), None, Idempotency::Safe)
            .await?;
        match reply.status.as_u16() {
            // vast-ai/vast-python `destroy__instance`: a 200 may still say `success: false` with a `msg`.
            200..=299 => {
                let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                // dstack reads `no_such_instance` as already gone; the docs' destroy 404 says `not_found`.
                if matches!(text(&answer, &["error"]).as_deref(), Some("no_such_instance" | "not_found")) {
                    return Ok(Gone::Already);
                }
                if answer.get("success") == Some(&Value::Bool(false)) {
                    let message =
                        text(&answer, &["msg", "error"]).unwrap_or_else(|| self.transport.excerpt(&reply.body));
                    return Err(ProviderError::Rejected {
                        provider: PROVIDER,
                        status: reply.status.as_u16(),
                        body: message,
                    });
                }
                Ok(Gone::Now)
            }
            404 => Ok(Gone::Already),
            _ => Err(self.unexpected(&reply)),
        }
    }

    /// Vast attaches keys to an instance after create.
    async fn ensure_ssh_key(&self, id: &str, ssh_public_key: &str) -> Result<(), ProviderError> {
        let attach = json!({"ssh_key": ssh_public_key});
        let reply = self
            .call(
                Method::POST,
                "POST /instances/{id}/ssh/",
                &format!("/instances/{id}/ssh/"),
                Some(&attach),
                Idempotency::Safe,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        Ok(())
    }
}

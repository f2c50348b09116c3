//! TensorDock client (REST v2, JSON:API-like, bearer token). Quirks kept
//! here (sources in docs/providers.md): inventory is stale and renting a
//! listed GPU fails with "No available nodes found", often inside an HTTP 200
//! (`{"status": 400, "error": ...}`): offer-specific, so the next offer is
//! tried; storage is at least 100 GB; the listed price is the GPU's alone, so
//! an offer's price adds the vCPUs, RAM and storage we rent; `country` is a
//! name; port 22 must be forwarded even with a dedicated IP; the SSH key is
//! injected by cloud-init `runcmd` for both `root` and `user`, and VMs found
//! without a working NVIDIA driver are repaired by cloud-init; the instance
//! list comes in more than one shape (the documented one nests it under
//! `data.attributes.instances`).

use async_trait::async_trait;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::error::ProviderError;
use super::http::{CallPolicy, Idempotency, Reply, Transport, parse_json};
use super::json::{country_code, country_suffix, number, text, unsigned};
use super::pacing::{Budget, Limits};
use super::types::{CreateRequest, Instance, InstanceLabel, InstanceState, Offer, SshTarget, display_gpu_model};
use super::{Gone, OfferQuery, Provider};
use crate::crd::ProviderName;

const PROVIDER: ProviderName = ProviderName::Tensordock;

/// "100 requests per minute per organization" (TensorDock API docs, getting
/// started): paced at 90 with bursts of 10, so no minute ever sees more than 100.
pub const LIMITS: Limits = Limits {
    account: Some(Budget { calls: 90, period: std::time::Duration::from_secs(60), burst: 10 }),
    ..Limits::NONE
};

/// The smallest storage TensorDock creates (cloud-gpu-shopper `defaultStorageGB`).
pub const MIN_STORAGE_GB: u32 = 100;
/// What is rented beside each GPU.
const VCPUS_PER_GPU: u32 = 4;
const RAM_GB_PER_GPU: u32 = 16;

/// Texts of a create refused for this offer, as cloud-gpu-shopper lists them
/// (`isStaleInventoryErrorMessage`, matched lower-case as a substring). Two were
/// seen live ("No available nodes found", "No available public IPs on
/// hostnode"); the rest are its authors' patterns. Moving on is the money-safe
/// reading: a refused create made nothing.
const OFFER_SPECIFIC: &[&str] = &[
    "no available nodes",
    "insufficient capacity",
    "not enough capacity",
    "resource unavailable",
    "out of stock",
    "no nodes available",
    "nodes unavailable",
    "gpu unavailable",
    "gpu not available",
    "no gpus available",
    "requested gpu",
    "gpu capacity",
    "no matching gpu",
    "gpu is not available",
    "datacenter unavailable",
    "location unavailable",
    "temporarily unavailable",
    "under maintenance",
    "region unavailable",
    "site unavailable",
    "high demand",
    "sold out",
    "fully allocated",
    "at capacity",
    "no capacity",
    "capacity limit",
    "cannot allocate",
    "allocation failed",
    "resource limit",
    "quota exceeded",
    "limit reached",
    "maximum",
    "no available public ips",
    "no available public ip",
    "no public ip",
];

pub struct TensorDock {
    base_url: String,
    transport: Transport,
}

impl TensorDock {
    pub fn new(base_url: &str, api_token: SecretString, policy: CallPolicy) -> Self {
        TensorDock {
            base_url: base_url.trim_end_matches('/').to_string(),
            transport: Transport::new(PROVIDER, api_token, policy, LIMITS),
        }
    }

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
}

/// Storage rented for a request of `disk_gb`: TensorDock's minimum at least.
pub fn storage_gb(disk_gb: u32) -> u32 {
    disk_gb.max(MIN_STORAGE_GB)
}

/// Offers from `GET /locations`: one per location and GPU type, for
/// `gpu_count` GPUs, priced for everything rented with them (GPU, vCPUs, RAM,
/// `storage_gb` of storage).
pub fn parse_locations(body: &Value, gpu_count: u32, storage_gb: u32) -> Option<Vec<Offer>> {
    let data = body.get("data")?;
    let locations = data.get("locations").or(Some(data)).and_then(Value::as_array)?;
    let mut offers = Vec::new();
    for location in locations {
        let Some(location_id) = text(location, &["id"]) else { continue };
        let place: Vec<String> =
            ["city", "stateprovince", "country"].iter().filter_map(|k| text(location, &[k])).collect();
        // The documented `country` is a name ("United States"); a code is accepted too.
        let country = text(location, &["country"]).and_then(|c| country_code(&c));
        let location_name = (!place.is_empty()).then(|| place.join(", "));
        for gpu in location.get("gpus").and_then(Value::as_array).into_iter().flatten() {
            let Some(v0_name) = text(gpu, &["v0Name", "v0_name"]) else { continue };
            let available = unsigned::<u32>(gpu, &["max_count", "count"]).unwrap_or(0);
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
            let pricing = gpu.get("pricing").unwrap_or(&Value::Null);
            let rate = |key: &str| number(pricing, &[key]).filter(|r| *r >= 0.0).unwrap_or(0.0);
            let extras = rate("per_vcpu_hr") * f64::from(VCPUS_PER_GPU * gpu_count)
                + rate("per_gb_ram_hr") * f64::from(RAM_GB_PER_GPU * gpu_count)
                + rate("per_gb_storage_hr") * f64::from(storage_gb);
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
                price_per_hour: per_gpu * f64::from(gpu_count) + extras,
                reliability: None,
                location: location_name.clone(),
                country: country.clone().or_else(|| location_name.as_deref().and_then(country_suffix)),
                download_mbps: None,
                upload_mbps: None,
                interruptible: false,
                // A location is many machines: never a host to avoid.
                bid_per_hour: None,
                host_id: None,
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
        // The docs name 'Stopped' and 'StoppedDisassociated'; terraform-provider-tensordock reads both as stopped.
        Some("stopped")
        | Some("stopping")
        | Some("stoppeddisassociated")
        | Some("stopped_disassociated")
        | Some("error") => InstanceState::Stopped,
        // Still there while it is deleted: not gone until a lookup answers 404 (as the terraform
        // provider waits for). No source says whether `deleting` bills: read as still billing.
        Some("deleting") => InstanceState::Unknown("deleting".into()),
        Some("deleted") | Some("terminated") | Some("destroyed") => InstanceState::Destroyed,
        Some(other) => InstanceState::Unknown(other.to_string()),
    };
    let ip = text(&v, &["ipAddress", "ip_address", "ip"]);
    let forwards = port_forwards(v.get("portForwards").or(v.get("port_forwards")));
    let forwarded_ssh = forwards.iter().find(|(internal, _)| *internal == 22).map(|(_, external)| *external);
    // A forward, when listed, says where a port is; with a dedicated IP every port is also open
    // as itself (cloud-gpu-shopper: "Request dedicated IP for direct port access (all ports
    // exposed)"), which is how a port is reached when the forwards are not echoed (seen: `[]`).
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
        ports_open_on_public_ip: true,
    })
}

/// Forwards as a list of `{internal_port, external_port}` (seen live by
/// cloud-gpu-shopper) or a map of internal -> external port (a published schema).
fn port_forwards(value: Option<&Value>) -> Vec<(u16, u16)> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|f| {
                Some((
                    unsigned::<u16>(f, &["internal_port", "internalPort"])?,
                    unsigned::<u16>(f, &["external_port", "externalPort"])?,
                ))
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(internal, external)| {
                let external = match external {
                    Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
                    Value::String(s) => s.parse().ok()?,
                    _ => return None,
                };
                Some((internal.parse().ok()?, external))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The instances of a listing, in any shape seen: `data` as the list,
/// `data.instances`, or the documented `data.attributes.instances`.
pub fn listed_instances(body: &Value) -> Option<&Vec<Value>> {
    let data = body.get("data").unwrap_or(body);
    data.as_array()
        .or_else(|| data.get("instances").and_then(Value::as_array))
        .or_else(|| data.get("attributes").and_then(|a| a.get("instances")).and_then(Value::as_array))
}

fn merged(outer: &Value, attributes: &Value) -> Value {
    let mut merged = attributes.clone();
    if let (Some(m), Some(id)) = (merged.as_object_mut(), outer.get("id")) {
        m.insert("id".into(), id.clone());
    }
    merged
}

/// Repairs a VM whose NVIDIA driver does not work (found on TensorDock VMs;
/// cloud-gpu-shopper's live-tested fix): rebuild the installed DKMS module, or
/// install a driver when none is.
const DRIVER_REPAIR: &str = "if ! nvidia-smi >/dev/null 2>&1; then \
    export DEBIAN_FRONTEND=noninteractive; \
    systemctl stop unattended-upgrades 2>/dev/null || true; \
    while fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; do sleep 2; done; \
    dpkg --configure -a; \
    v=$(dpkg -l 'nvidia-dkms-*' 2>/dev/null | awk '/^.i/ {print $3}' | head -1 | cut -d- -f1); \
    if [ -n \"$v\" ]; then dkms build nvidia/$v && dkms install nvidia/$v; \
    else apt-get update -o DPkg::Lock::Timeout=120 && apt-get install -y -o DPkg::Lock::Timeout=120 nvidia-driver-550; fi; \
    modprobe nvidia; \
  fi >> /var/log/gpu-shopper-driver.log 2>&1 || true";

/// Cloud-init that installs the key for root and `user` with `runcmd` only,
/// exports the env system-wide with its values intact, repairs the NVIDIA
/// driver if it does not work, then runs the start script.
pub fn cloud_init(public_key: &str, env: &[(String, String)], start_script: Option<&str>) -> Value {
    let key = shell_quote(public_key.trim());
    let mut runcmd = Vec::new();
    // A VM has no container env: export it system-wide, each value quoted
    // for /etc/environment's reader (pam_env) and for the shell that writes it.
    for (name, value) in env.iter().filter(|(name, _)| is_env_name(name)) {
        let line = format!("{name}=\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
        runcmd.push(format!("printf '%s\\n' {} >> /etc/environment", shell_quote(&line)));
    }
    for (home, owner) in [("/root", "root:root"), ("/home/user", "user:user")] {
        runcmd.push(format!("mkdir -p {home}/.ssh"));
        runcmd.push(format!("printf '%s\\n' {key} >> {home}/.ssh/authorized_keys"));
        runcmd.push(format!("chmod 700 {home}/.ssh && chmod 600 {home}/.ssh/authorized_keys"));
        runcmd.push(format!("chown -R {owner} {home}/.ssh || true"));
    }
    runcmd.push(DRIVER_REPAIR.to_string());
    if let Some(script) = start_script.filter(|s| !s.trim().is_empty()) {
        runcmd.push(format!(
            "mkdir -p /var/log/gpu-shopper && bash -c {} > /var/log/gpu-shopper/start.log 2>&1 &",
            shell_quote(script)
        ));
    }
    json!({ "runcmd": runcmd })
}

/// Names a shell and /etc/environment accept (the CRD allows these only, but
/// a name that is not one is dropped rather than written into a command).
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
        let reply = self.call(Method::GET, "GET /locations", "/locations", None, Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        let gpu_count = query.requirements.gpu_count.unwrap_or(1);
        let mut offers =
            parse_locations(&body, gpu_count, storage_gb(query.disk_gb)).ok_or_else(|| self.unexpected(&reply))?;
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
        // "SSH port (22) must be forwarded for Ubuntu VMs", dedicated IP or not.
        let mut forwards = vec![json!({"protocol": "tcp", "internal_port": 22, "external_port": 22})];
        forwards.extend(
            request
                .ports
                .iter()
                .filter(|p| **p != 22)
                .map(|p| json!({"protocol": "tcp", "internal_port": p, "external_port": p})),
        );
        let body = json!({"data": {"type": "virtualmachine", "attributes": {
            "name": request.label.to_string(),
            "type": "virtualmachine",
            // cloud-gpu-shopper moved to ubuntu2204: "ubuntu2404 is missing NVIDIA drivers".
            "image": "ubuntu2204",
            "resources": {
                "vcpu_count": VCPUS_PER_GPU * count,
                "ram_gb": RAM_GB_PER_GPU * count,
                "storage_gb": storage_gb(request.disk_gb),
                "gpus": { v0_name: {"count": count} },
            },
            "location_id": location_id,
            "useDedicatedIp": true,
            "ssh_key": request.ssh_public_key,
            "cloud_init": cloud_init(&request.ssh_public_key, &request.env, request.start_script.as_deref()),
            "port_forwards": forwards,
        }}});
        // A 5xx stays "may have landed" whatever its text: no source says a 503 made nothing.
        let reply = self.call(Method::POST, "POST /instances", "/instances", Some(&body), Idempotency::Unsafe).await?;
        // Refusals arrive inside a 200 (`{"status": 400, "error": ...}`, cloud-gpu-shopper) or as a 4xx.
        let refusal = if reply.status.is_success() { refusal_in_body(&reply.body) } else { None };
        if !reply.status.is_success() || refusal.is_some() {
            // `excerpt` bounds the text and removes the token.
            let message = refusal.unwrap_or_else(|| validation_messages(&reply.body));
            let message = self.transport.excerpt(message.as_bytes());
            let lower = message.to_ascii_lowercase();
            return Err(if is_offer_specific(&message) {
                ProviderError::NoCapacity { provider: PROVIDER, message }
            } else if lower.contains("insufficient") || lower.contains("balance") || lower.contains("funds") {
                ProviderError::InsufficientFunds { provider: PROVIDER, message }
            } else if reply.status.as_u16() == 404 {
                ProviderError::OfferGone { provider: PROVIDER, offer_id: request.offer.id.clone(), message }
            } else if reply.status.as_u16() == 400 || reply.status.as_u16() == 422 {
                // A request we built wrong: no other offer fixes it.
                ProviderError::Rejected { provider: PROVIDER, status: reply.status.as_u16(), body: message }
            } else {
                ProviderError::OfferGone { provider: PROVIDER, offer_id: request.offer.id.clone(), message }
            });
        }
        let answer: Value = parse_json(&self.transport, &reply)?;
        let mut instance = parse_instance(&answer).ok_or_else(|| self.unexpected(&reply))?;
        instance.label.get_or_insert_with(|| request.label.clone());
        instance.price_per_hour.get_or_insert(request.offer.price_per_hour);
        Ok(instance)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let path = format!("/instances/{id}");
        let reply = self.call(Method::GET, "GET /instances/{id}", &path, None, Idempotency::Safe).await?;
        if reply.status.as_u16() == 404 {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        parse_instance(&body).map(Some).ok_or_else(|| self.unexpected(&reply))
    }

    fn headroom(&self) -> super::pacing::Headroom {
        self.transport.headroom()
    }

    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let reply = self.call(Method::GET, "GET /instances", "/instances", None, Idempotency::Safe).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected(&reply));
        }
        let body: Value = parse_json(&self.transport, &reply)?;
        // A listing we cannot read is an error, never "no instances".
        let items = listed_instances(&body).ok_or_else(|| self.unexpected(&reply))?;
        Ok(items.iter().filter_map(parse_instance).filter(|i| super::labelled_for_any(i, installations)).collect())
    }

    async fn destroy_instance(&self, id: &str) -> Result<Gone, ProviderError> {
        let path = format!("/instances/{id}");
        let reply = self.call(Method::DELETE, "DELETE /instances/{id}", &path, None, Idempotency::Safe).await?;
        match reply.status.as_u16() {
            // TensorDock answers many errors with 200 and the error in the body.
            200..=299 => match refusal_in_body(&reply.body) {
                Some(message) => {
                    Err(ProviderError::Rejected { provider: PROVIDER, status: reply.status.as_u16(), body: message })
                }
                None => Ok(Gone::Now),
            },
            404 => Ok(Gone::Already),
            _ => Err(self.unexpected(&reply)),
        }
    }
}

fn is_offer_specific(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    OFFER_SPECIFIC.iter().any(|text| lower.contains(text))
}

/// The messages of a validation error list (`[{"code", "message", "path"}]`,
/// cloud-gpu-shopper `parseCreateError`), else the body as text.
fn validation_messages(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if !items.is_empty() => {
            items.iter().filter_map(|i| text(i, &["message"])).collect::<Vec<_>>().join("; ")
        }
        Ok(value) => text(&value, &["error", "message"]).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// The error a 2xx body carries, if any: `{"status": "error"}`, `{"success": false}` or an `error` text.
fn refusal_in_body(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let status_error = match answer.get("status") {
        Some(Value::String(s)) => s.eq_ignore_ascii_case("error"),
        Some(Value::Number(n)) => n.as_u64().is_some_and(|code| code >= 400),
        _ => false,
    };
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
        let env = [("MODEL".into(), "llama".into()), ("PROMPT".into(), r#"it's "quoted""#.into())];
        let init = cloud_init("ssh-ed25519 AAAAC3 gpu-shopper", &env, Some("echo 'hi'"));
        assert!(init.get("write_files").is_none());
        let commands: Vec<&str> = init["runcmd"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert!(commands.iter().any(|c| c.contains("/root/.ssh/authorized_keys") && c.contains("ssh-ed25519 AAAAC3")));
        assert!(commands.iter().any(|c| c.contains("/home/user/.ssh/authorized_keys")));
        assert!(commands.contains(&r#"printf '%s\n' 'MODEL="llama"' >> /etc/environment"#));
        // Quotes survive: the shell writes PROMPT="it's \"quoted\"" for pam_env to read back.
        assert!(commands.contains(&r#"printf '%s\n' 'PROMPT="it'\''s \"quoted\""' >> /etc/environment"#));
        assert!(commands.iter().any(|c| c.contains("nvidia-smi") && c.contains("dkms")), "the driver is repaired");
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

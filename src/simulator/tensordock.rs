//! TensorDock's REST v2 API, simulated under `/api/v2`, in the shapes of
//! docs/providers.md: countries by name, the GPU price apart from vCPU, RAM
//! and storage prices, a 100 GB storage minimum, port 22 forwarded unless the
//! IP is dedicated, stale inventory refused inside an HTTP 200, the documented
//! nested listing, and (fault `brokenDrivers`) VMs without a working driver
//! until cloud-init has repaired it, which takes minutes and may reboot.
//!
//! Answers follow TensorDock's v2 docs (dashboard.tensordock.com/api/docs) and
//! cloud-gpu-shopper's live notes; where no source gives the words, the answer
//! says "invented" beside it (docs/providers.md lists them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::market::Host;
use super::sim::{Sim, bearer};
use super::world::{CloudInit, ListingFault, NewInstance, SimInstance, SimState, World};
use crate::crd::ProviderName;

const P: ProviderName = ProviderName::Tensordock;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/api/v2/locations", get(locations))
        .route("/api/v2/instances", get(list).post(create))
        .route("/api/v2/instances/{id}", get(show).delete(destroy))
        .with_state(sim)
}

/// Per-resource prices beside the GPU's.
const PER_VCPU_HR: f64 = 0.003;
const PER_GB_RAM_HR: f64 = 0.002;
const PER_GB_STORAGE_HR: f64 = 0.0001;
/// What the listed GPU price leaves out for a typical rent (4 vCPU, 16 GB per
/// GPU, 100 GB storage), so that a client pricing all of it sees the host's price.
fn extras_per_gpu() -> f64 {
    4.0 * PER_VCPU_HR + 16.0 * PER_GB_RAM_HR + 100.0 * PER_GB_STORAGE_HR
}

/// TensorDock names countries; the market file gives codes.
fn country_name(code: &str) -> String {
    match code {
        "US" => "United States".into(),
        "CA" => "Canada".into(),
        "DE" => "Germany".into(),
        "CN" => "China".into(),
        "GB" => "United Kingdom".into(),
        "NL" => "Netherlands".into(),
        other => celes::Country::from_alpha2(other).map(|c| c.long_name.to_string()).unwrap_or_else(|_| other.into()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"status": status.as_u16(), "error": message}))).into_response()
}

/// "RTX 4090", 24 -> "geforcertx4090-pcie-24gb".
pub fn v0_name(host: &Host) -> String {
    let model: String = host
        .gpu
        .to_ascii_lowercase()
        .split_whitespace()
        .filter(|t| !["pcie", "sxm", "sxm4", "sxm5"].contains(t))
        .collect::<String>()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let prefix = if model.starts_with("rtx") { "geforce" } else { "" };
    format!("{prefix}{model}-pcie-{}gb", host.vram_gb)
}

async fn locations(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if let Err(response) = sim.gate(P, "GET", "/locations", bearer(&headers)).await {
        return response;
    }
    let world = sim.world();
    let locations: Vec<Value> = world
        .hosts(P)
        .map(|h| {
            let parts: Vec<&str> = h.location.split(',').map(str::trim).collect();
            json!({
                "id": h.id,
                "city": parts.first().copied().unwrap_or(""),
                "stateprovince": if parts.len() > 2 { parts[1] } else { "" },
                "country": country_name(parts.last().copied().unwrap_or("")),
                "tier": 3,
                "gpus": [{
                    "v0Name": v0_name(h),
                    "displayName": format!("NVIDIA {}", h.gpu),
                    "max_count": h.available,
                    "price_per_hr": (h.price_per_hour / f64::from(h.gpu_count.max(1)) - extras_per_gpu()).max(0.01),
                    "pricing": {"per_vcpu_hr": PER_VCPU_HR, "per_gb_ram_hr": PER_GB_RAM_HR, "per_gb_storage_hr": PER_GB_STORAGE_HR},
                    "resources": {"max_vcpus": 32, "max_ram_gb": 128, "max_storage_gb": 2000},
                    "network_features": {"dedicated_ip_available": true, "port_forwarding_available": true},
                }],
            })
        })
        .collect();
    axum::Json(json!({"data": {"locations": locations}})).into_response()
}

async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, axum::Json(body): axum::Json<Value>) -> Response {
    if let Err(response) = sim.gate(P, "POST", "/instances", bearer(&headers)).await {
        return response;
    }
    let attributes = &body["data"]["attributes"];
    let location = attributes["location_id"].as_str().unwrap_or_default().to_string();
    let mut world = sim.world();
    let faults = world.faults(P).clone();
    if faults.insufficient_funds {
        // Invented words: the docs say only "Minimum balance: $1".
        return error(StatusCode::PAYMENT_REQUIRED, "Insufficient balance to deploy this instance");
    }
    let Some(host) = world.host(P, &location) else {
        // Invented words.
        return error(StatusCode::NOT_FOUND, "Location not found");
    };
    let requested =
        attributes["resources"]["gpus"].as_object().and_then(|g| g.iter().next().map(|(k, v)| (k.clone(), v.clone())));
    let Some((gpu, count)) = requested.map(|(k, v)| (k, v["count"].as_u64().unwrap_or(1) as u32)) else {
        return error(StatusCode::BAD_REQUEST, "resources.gpus is required");
    };
    if gpu != v0_name(&host) {
        return error(StatusCode::BAD_REQUEST, &format!("GPU {gpu} is not offered at this location"));
    }
    let resources = &attributes["resources"];
    let storage = resources["storage_gb"].as_u64().unwrap_or(0);
    if storage < 100 {
        // The validation-list shape cloud-gpu-shopper's `parseCreateError` reads ("Minimum
        // storage: 100GB" in the docs); the code and words of this entry are invented.
        let refusal = json!([{"code": "too_small", "message": "Storage must be at least 100 GB", "path": ["data", "attributes", "resources", "storage_gb"]}]);
        return (StatusCode::BAD_REQUEST, axum::Json(refusal)).into_response();
    }
    let forwards_ssh = attributes["port_forwards"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["internal_port"].as_u64() == Some(22)));
    let dedicated_ip = attributes["useDedicatedIp"] == Value::Bool(true);
    if !forwards_ssh && !dedicated_ip {
        // cloud-gpu-shopper's live notes (without a dedicated IP).
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "SSH port (22) must be forwarded for Ubuntu VMs"})),
        )
            .into_response();
    }
    if faults.stale_inventory || faults.snatched_offers.contains(&location) || count > host.available {
        // Seen: the refusal arrives as HTTP 200 with the error in the body.
        return axum::Json(json!({"status": 400, "error": "No available nodes found"})).into_response();
    }
    if attributes["useDedicatedIp"] != Value::Bool(true) && faults.ignore_port_forwards {
        // Seen: the port forwards are accepted and ignored; SSH never answers.
        world.faults(P).unreachable_instances = true;
    }
    let key = attributes["ssh_key"].as_str().unwrap_or_default().to_string();
    let per_gpu = (host.price_per_hour / f64::from(host.gpu_count.max(1)) - extras_per_gpu()).max(0.01);
    let number = |v: &Value| v.as_f64().unwrap_or(0.0);
    let hourly = per_gpu * f64::from(count)
        + number(&resources["vcpu_count"]) * PER_VCPU_HR
        + number(&resources["ram_gb"]) * PER_GB_RAM_HR
        + storage as f64 * PER_GB_STORAGE_HR;
    let name = attributes["name"].as_str().unwrap_or_default().to_string();
    // The key reaches the machine through cloud-init runcmd (seen: the only way that works).
    let runcmd = attributes["cloud_init"]["runcmd"].as_array().cloned().unwrap_or_default();
    let injected = runcmd
        .iter()
        .filter_map(Value::as_str)
        .any(|c| !key.is_empty() && c.contains(key.trim()) && c.contains("authorized_keys"));
    let key = if injected { key } else { String::new() };
    // A VM has no container env: the client exports it from cloud-init into
    // /etc/environment; the machine gets what a shell would write there.
    let env: BTreeMap<String, String> = runcmd
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|c| c.strip_prefix("printf '%s\\n' ")?.strip_suffix(" >> /etc/environment").map(shell_unquote))
        .filter_map(|line| line.and_then(|l| environment_line(&l)))
        .collect();
    let repairs_driver =
        runcmd.iter().filter_map(Value::as_str).any(|c| c.contains("nvidia-smi") && c.contains("dkms"));
    let repair_takes =
        Duration::from_millis(if faults.driver_repair_ms == 0 { 120_000 } else { faults.driver_repair_ms });
    let reboots = faults.broken_drivers && repairs_driver && faults.driver_repair_reboots > 0;
    if reboots {
        world.faults(P).driver_repair_reboots -= 1;
    }
    // Every VM runs cloud-init; with a broken driver it runs until the repair is done.
    let cloud_init = CloudInit {
        takes: if faults.broken_drivers && repairs_driver { repair_takes } else { Duration::ZERO },
        repairs_driver: faults.broken_drivers && repairs_driver,
        reboot: reboots.then(|| Duration::from_millis(faults.reboot_ms.max(1))),
    };
    let ports: Vec<u16> = attributes["port_forwards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["internal_port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    let created = world.create(NewInstance {
        provider: P,
        host: host.clone(),
        gpu_count: count,
        price_per_hour: hourly,
        label: name,
        ssh_public_key: key,
        image: attributes["image"].as_str().unwrap_or("ubuntu2204").into(),
        env,
        ports,
        driver_broken: faults.broken_drivers && !repairs_driver,
        cloud_init: Some(cloud_init),
    });
    let Ok(instance) = created else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "could not start the simulated machine");
    };
    let faults = world.faults(P);
    if faults.lose_create_responses > 0 {
        faults.lose_create_responses -= 1;
        return (StatusCode::GATEWAY_TIMEOUT, "gateway timeout").into_response();
    }
    // The docs' example answers "running"; cloud-gpu-shopper notes the IP comes 5-30 s later.
    axum::Json(
        json!({"data": {"type": "virtualmachine", "id": instance.id, "name": instance.label, "status": "running"}}),
    )
    .into_response()
}

/// How long a delete shows `deleting` before the VM is gone (fault `slowDeletesMs`).
fn faults_slow_delete(world: &mut World) -> u64 {
    world.faults(P).slow_deletes_ms
}

fn instance_json(world: &World, i: &SimInstance, now: Instant) -> Value {
    let state = world.state_of(i, now);
    let status = match state {
        SimState::Created | SimState::Loading => "starting",
        SimState::Running => "running",
        SimState::Stopped => "stopped",
        SimState::Destroyed => "deleted",
    };
    // Invented (no source shows it): a VM being deleted says so until it is gone.
    let status = if i.deleting_until.is_some_and(|until| now < until) { "deleting" } else { status };
    let reachable = state == SimState::Running && !world.faults.get(&P).is_some_and(|f| f.unreachable_instances);
    json!({
        "type": "virtualmachine",
        "id": i.id,
        "name": i.label,
        "status": status,
        "ipAddress": "127.0.0.1",
        // The dedicated IP is loopback here, so SSH is reached through its forwarded port.
        "portForwards": if reachable {
            std::iter::once((22, i.ssh_port))
                .chain(i.port_map.iter().map(|(a, b)| (*a, *b)))
                .map(|(internal, external)| json!({"internal_port": internal, "external_port": external}))
                .collect::<Vec<_>>()
        } else {
            vec![]
        },
        "rateHourly": i.price_per_hour,
    })
}

async fn list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if let Err(response) = sim.gate(P, "GET", "/instances", bearer(&headers)).await {
        return response;
    }
    let mut world = sim.world();
    match world.listing_fault(P) {
        Some(ListingFault::Unauthorized) => return error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Some(ListingFault::Unreadable) => return (StatusCode::OK, "<html>maintenance</html>").into_response(),
        None => {}
    }
    let now = Instant::now();
    // The documented list shape (API docs, getting started): nested under data.attributes.
    let items: Vec<Value> = world
        .visible(P)
        .map(|i| {
            let mut attributes = instance_json(&world, i, now);
            let id = attributes.as_object_mut().and_then(|a| a.remove("id")).unwrap_or_default();
            json!({"type": "virtualmachine", "id": id, "attributes": attributes})
        })
        .collect();
    axum::Json(json!({"data": {"type": "list", "id": "instances", "attributes": {"instances": items}}})).into_response()
}

/// The text of one shell word quoted with single quotes (`'…'\''…'`).
fn shell_unquote(word: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = word;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("\\'") {
            out.push('\'');
            rest = after;
        } else {
            let inner = rest.strip_prefix('\'')?;
            let end = inner.find('\'')?;
            out.push_str(&inner[..end]);
            rest = &inner[end + 1..];
        }
    }
    Some(out)
}

/// `NAME="value"` as pam_env reads /etc/environment: quotes removed, `\"` and `\\` unescaped.
fn environment_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once('=')?;
    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_string(),
    };
    Some((name.to_string(), value))
}

async fn show(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = sim.gate(P, "GET", "/instances/{id}", bearer(&headers)).await {
        return response;
    }
    let world = sim.world();
    match world.find_visible(P, &id) {
        Some(i) => axum::Json(instance_json(&world, i, Instant::now())).into_response(),
        None => error(StatusCode::NOT_FOUND, "Instance not found"),
    }
}

async fn destroy(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = sim.gate(P, "DELETE", "/instances/{id}", bearer(&headers)).await {
        return response;
    }
    let mut world = sim.world();
    let faults = world.faults(P);
    if faults.destroy_failures > 0 {
        faults.destroy_failures -= 1;
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to delete instance");
    }
    if world.refuse_destroy(P) {
        // No published source shows TensorDock's refusal form; a 200 carrying an error is assumed (docs/providers.md).
        return axum::Json(json!({"status": "error", "error": "Instance is busy; try again later"})).into_response();
    }
    let slow = Duration::from_millis(faults_slow_delete(&mut world));
    let deleted = if slow.is_zero() { world.destroy(P, &id) } else { world.destroy_slowly(P, &id, slow) };
    if deleted {
        // The docs' Delete Instance example.
        axum::Json(json!({"data": {"type": "success", "attributes": {"message": "Instance deleted successfully"}}}))
            .into_response()
    } else {
        // Invented words (cloud-gpu-shopper's mock); a 404 is what the terraform provider waits for.
        error(StatusCode::NOT_FOUND, "Instance not found")
    }
}

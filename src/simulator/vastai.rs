//! Vast.ai's REST API, simulated under `/api/v0` (and the paged `/api/v1`
//! listing), in the shapes of docs/providers.md: search is a POST with the
//! query as body, priced with the storage it names; cards report a little less
//! memory than their name; a create may refuse while naming an instance it
//! made; listings come in pages of at most 25 behind an opaque cursor.
//!
//! Answers follow vast-ai/docs `api-reference/openapi.yaml` (c624622) and
//! vast-ai/vast-cli; where no source gives the words, the answer says
//! "invented" beside it (docs/providers.md lists them).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::market::Host;
use super::sim::{Sim, bearer};
use super::world::{ListingFault, NewInstance, SimInstance, SimState, World};
use crate::crd::ProviderName;

const P: ProviderName = ProviderName::Vastai;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/api/v0/bundles/", post(search))
        .route("/api/v0/asks/{id}/", put(create))
        .route("/api/v1/instances/", get(list))
        .route("/api/v0/instances/{id}/", get(show).delete(destroy))
        .route("/api/v0/instances/{id}/ssh/", post(attach_key))
        .with_state(sim)
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn fail(status: StatusCode, error: &str, msg: &str) -> Response {
    (status, axum::Json(json!({"success": false, "error": error, "msg": msg}))).into_response()
}

/// What a card of `gb` reports: 24 -> 24564 MB (seen on real RTX 4090s).
pub fn reported_vram_mb(gb: u32) -> u32 {
    gb * 1024 - gb / 2
}

/// What this host's card reports.
fn host_vram_mb(host: &Host) -> u32 {
    host.reported_vram_mb.unwrap_or_else(|| reported_vram_mb(host.vram_gb))
}

/// Storage for `gb` GB an hour: Vast prices `storage_cost` per GB and month
/// (dstackai/gpuhunt: `disk_size * storage_cost / 30 / 24`).
fn storage_per_hour(host: &Host, gb: f64) -> f64 {
    host.storage_per_gb_month * gb / 30.0 / 24.0
}

/// `allocated_storage` when a search names none: Vast's documented default (8 GB).
const DEFAULT_ALLOCATED_STORAGE_GB: f64 = 8.0;

/// `{"gte": x}`-style operator check; a missing filter passes.
fn passes(filter: Option<&Value>, value: f64) -> bool {
    let Some(filter) = filter else { return true };
    let bound = |op: &str| filter.get(op).and_then(Value::as_f64);
    bound("gte").is_none_or(|b| value >= b)
        && bound("lte").is_none_or(|b| value <= b)
        && bound("eq").is_none_or(|b| (value - b).abs() < 1e-9)
}

fn offer_json(host: &Host, bid: bool, storage_gb: f64) -> Value {
    // A bid search "uses minimum bid price" (openapi.yaml, search `type`).
    let base = if bid { host.min_bid_per_hour.unwrap_or(host.price_per_hour) } else { host.price_per_hour };
    let storage = storage_per_hour(host, storage_gb);
    json!({
        "id": host.id.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(host.id.clone())),
        "ask_contract_id": host.id,
        "machine_id": format!("m-{}", host.id),
        "host_id": 77,
        "gpu_name": host.gpu,
        "num_gpus": host.gpu_count,
        // Real cards report less than GB x 1024: a 24 GB card reports 24564 MB.
        "gpu_ram": host_vram_mb(host),
        "cuda_max_good": host.advertised_cuda.parse::<f64>().unwrap_or(0.0),
        "driver_version": host.driver,
        "dph_base": base,
        "dph_total": base + storage,
        "storage_cost": host.storage_per_gb_month,
        "min_bid": host.min_bid_per_hour,
        "direct_port_count": host.direct_ports,
        "reliability2": host.reliability,
        "geolocation": host.location,
        "inet_down": host.download_mbps,
        "inet_up": host.upload_mbps,
        "disk_space": 200.0,
        "verified": true,
        "rentable": true,
        "is_bid": bid,
    })
}

async fn search(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(response) = sim.gate(P, "POST", "/bundles/", bearer(&headers)).await {
        return response;
    }
    let q: Value = match serde_json::from_slice(&body) {
        Ok(q @ Value::Object(_)) => q,
        _ => return fail(StatusCode::BAD_REQUEST, "invalid_args", "the query must be a JSON object body"),
    };
    let names: Option<Vec<String>> = q.get("gpu_name").and_then(|n| match (n.get("in"), n.get("eq")) {
        (Some(Value::Array(list)), _) => Some(list.iter().filter_map(|v| v.as_str().map(String::from)).collect()),
        (_, Some(Value::String(one))) => Some(vec![one.clone()]),
        _ => None,
    });
    let bid = q.get("type").and_then(Value::as_str) == Some("bid");
    let excluded: Vec<String> = q
        .get("geolocation")
        .and_then(|g| g.get("notin"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(64) as usize;
    let storage_gb = q.get("allocated_storage").and_then(Value::as_f64).unwrap_or(DEFAULT_ALLOCATED_STORAGE_GB);
    let world = sim.world();
    let mut offers: Vec<Value> = world
        .hosts(P)
        .filter(|h| !bid || h.min_bid_per_hour.is_some())
        .map(|h| offer_json(h, bid, storage_gb))
        .filter(|o| {
            [
                "num_gpus",
                "gpu_ram",
                "cuda_max_good",
                "dph_total",
                "reliability2",
                "inet_down",
                "inet_up",
                "direct_port_count",
            ]
            .iter()
            .all(|field| passes(q.get(field), o[field].as_f64().unwrap_or(0.0)))
        })
        .filter(|o| !excluded.iter().any(|c| o["geolocation"].as_str().unwrap_or("").ends_with(c.as_str())))
        .filter(|o| names.as_ref().is_none_or(|names| names.iter().any(|n| o["gpu_name"].as_str() == Some(n.as_str()))))
        .collect();
    offers.sort_by(|a, b| {
        a["dph_total"].as_f64().partial_cmp(&b["dph_total"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
    });
    offers.truncate(limit);
    ok(json!({"offers": offers}))
}

async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(response) = sim.gate(P, "PUT", "/asks/{id}/", bearer(&headers)).await {
        return response;
    }
    let (response, delay) = create_now(&sim, &id, &body);
    // The instance exists while the answer is still on its way (a crash window for the caller).
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    response
}

fn create_now(sim: &Sim, id: &str, body: &Value) -> (Response, u64) {
    let id = id.to_string();
    let mut world = sim.world();
    let faults = world.faults(P).clone();
    if faults.insufficient_funds {
        // Invented: Vast documents no code for a lack of credit on create.
        return (fail(StatusCode::PAYMENT_REQUIRED, "insufficient_credit", "Your account lacks credit"), 0);
    }
    let Some(host) = world.host(P, &id).filter(|_| !faults.snatched_offers.contains(&id)) else {
        // openapi.yaml, create instance, 404 "Offer not found or not available".
        let msg = format!("error 404/3603: no_such_ask Instance type by id {id} is not available.");
        let body = json!({"success": false, "error": "invalid_args", "msg": msg, "ask_id": id.parse::<u64>().ok()});
        return ((StatusCode::NOT_FOUND, axum::Json(body)).into_response(), 0);
    };
    let env: BTreeMap<String, String> = body
        .get("env")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let bid = body.get("price").and_then(Value::as_f64);
    if let Some(bid) = bid
        && bid < host.min_bid_per_hour.unwrap_or(0.0)
    {
        // The code is in openapi.yaml's 400 enum; the words are invented.
        return (fail(StatusCode::BAD_REQUEST, "invalid_price", "Your bid is below the minimum price."), 0);
    }
    // Vast takes port mappings as docker flags in env: {"-p 8000:8000": "1"}.
    let ports: Vec<u16> =
        env.keys().filter_map(|k| k.strip_prefix("-p ")?.split(':').next_back()?.parse().ok()).collect();
    let env = env.into_iter().filter(|(k, _)| !k.starts_with('-')).collect();
    let disk = body.get("disk").and_then(Value::as_f64).unwrap_or(DEFAULT_ALLOCATED_STORAGE_GB);
    let instance = world.create(NewInstance {
        provider: P,
        host: host.clone(),
        gpu_count: host.gpu_count,
        price_per_hour: bid.unwrap_or(host.price_per_hour) + storage_per_hour(&host, disk),
        label: body.get("label").and_then(Value::as_str).unwrap_or_default().to_string(),
        ssh_public_key: String::new(), // attached afterwards through /instances/{id}/ssh/
        image: body.get("image").and_then(Value::as_str).unwrap_or_default().to_string(),
        env,
        ports,
        driver_broken: false,
        cloud_init: None,
    });
    let Ok(instance) = instance else {
        return (fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", "could not start the simulated machine"), 0);
    };
    // Vast runs `onstart` when the container starts (the operator installs its key there, as dstack does).
    if let Some(onstart) = body.get("onstart").and_then(Value::as_str).filter(|s| !s.trim().is_empty()) {
        instance.run_at_start(onstart);
    }
    let faults = world.faults(P);
    if faults.refused_creates_with_instance > 0 {
        faults.refused_creates_with_instance -= 1;
        // dstack `api_client.py`: Vast "creates spot instances in the stopped state and returns an
        // error if the bid is insufficient", naming it in `new_contract`; it shows in lookups only
        // later. The error's words are invented (no capture is published).
        world.befall(&instance.id, super::world::Fate::Stop);
        world.hide_until(&instance.id, Instant::now() + std::time::Duration::from_millis(1500));
        let id = instance.id.parse::<u64>().unwrap_or_default();
        let refusal = json!({"success": false, "error": "outbid", "msg": "The bid was outbid at once; the instance is stopped.", "new_contract": id});
        return (ok(refusal), 0);
    }
    let faults = world.faults(P);
    if faults.lose_create_responses > 0 {
        faults.lose_create_responses -= 1;
        return ((StatusCode::BAD_GATEWAY, "upstream connect error").into_response(), 0);
    }
    // vast-cli's create-instance epilog: {'success': True, 'new_contract': 7835610}.
    let response = if faults.omit_new_contract {
        ok(json!({"success": true}))
    } else {
        ok(json!({"success": true, "new_contract": instance.id.parse::<u64>().unwrap_or_default()}))
    };
    (response, faults.create_response_delay_ms)
}

fn instance_json(world: &World, i: &SimInstance, now: Instant) -> Value {
    let state = world.state_of(i, now);
    let actual = match state {
        SimState::Created => Value::Null,
        SimState::Loading => json!("loading"),
        SimState::Running => json!("running"),
        SimState::Stopped | SimState::Destroyed => json!("exited"),
    };
    let reachable = state == SimState::Running && !world.faults.get(&P).is_some_and(|f| f.unreachable_instances);
    json!({
        "id": i.id.parse::<u64>().unwrap_or_default(),
        "label": i.label,
        "actual_status": actual,
        "cur_state": if matches!(state, SimState::Created | SimState::Stopped) { "stopped" } else { "running" },
        "intended_status": if state == SimState::Stopped { "stopped" } else { "running" },
        "status_msg": format!("{state:?}"),
        "public_ipaddr": "127.0.0.1",
        "ports": if reachable { port_json(i) } else { json!({}) },
        "ssh_host": if reachable { json!("127.0.0.1") } else { Value::Null },
        "ssh_port": if reachable { json!(i.ssh_port) } else { Value::Null },
        "dph_total": i.price_per_hour,
        "gpu_name": i.host.gpu,
        "num_gpus": i.gpu_count,
        "cuda_max_good": i.host.advertised_cuda.parse::<f64>().unwrap_or(0.0),
        "driver_version": i.host.driver,
        "image_uuid": i.image,
    })
}

fn port_json(i: &SimInstance) -> Value {
    let mut ports = serde_json::Map::new();
    ports.insert("22/tcp".into(), json!([{"HostIp": "127.0.0.1", "HostPort": i.ssh_port.to_string()}]));
    for (private, public) in &i.port_map {
        ports.insert(format!("{private}/tcp"), json!([{"HostIp": "127.0.0.1", "HostPort": public.to_string()}]));
    }
    Value::Object(ports)
}

/// The cursor of the page after `id`: opaque base64, as the docs' example
/// (`eyJ2YWx1ZXMiOiB7ImlkIjogMTIzfX0=`, which reads `{"values": {"id": 123}}`).
fn cursor_after(id: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(json!({"values": {"id": id}}).to_string())
}

/// The id a cursor of ours stands for.
fn cursor_id(token: &str) -> Option<u64> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("values")?.get("id")?.as_u64()
}

/// `GET /api/v1/instances/`: pages of at most 25 ("Default 25, max 25. Values <= 0
/// are treated as 5."), ordered by id, `next_token` (null on the last page).
/// `select_filters`, `order_by` and `limit` come JSON-encoded and the cursor raw,
/// as vast-cli sends them; "An invalid token returns a 400 error".
async fn list(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(response) = sim.gate(P, "GET", "/api/v1/instances/", bearer(&headers)).await {
        return response;
    }
    let limit = match params.get("limit").map(|l| l.parse::<i64>()) {
        None => 25,
        Some(Ok(n)) if n <= 0 => 5,
        Some(Ok(n)) => n.min(25) as usize,
        // The error codes are openapi.yaml's; the words are invented.
        Some(Err(_)) => return fail(StatusCode::BAD_REQUEST, "invalid_request", "limit must be a number"),
    };
    let after: Option<u64> = match params.get("after_token") {
        None => None,
        Some(token) => match cursor_id(token) {
            Some(id) => Some(id),
            None => return fail(StatusCode::BAD_REQUEST, "invalid_token", "after_token is not valid"),
        },
    };
    let mut world = sim.world();
    match world.listing_fault(P) {
        Some(ListingFault::Unauthorized) => return fail(StatusCode::UNAUTHORIZED, "auth_error", "Invalid user key"),
        Some(ListingFault::Unreadable) => {
            return (StatusCode::OK, "<html><body>Bad gateway</body></html>").into_response();
        }
        None => {}
    }
    let now = Instant::now();
    let mut all: Vec<&SimInstance> = world.visible(P).collect();
    all.sort_by_key(|i| i.id.parse::<u64>().unwrap_or_default());
    let total = all.len();
    let rest: Vec<&SimInstance> =
        all.into_iter().filter(|i| after.is_none_or(|a| i.id.parse::<u64>().unwrap_or_default() > a)).collect();
    let page: Vec<Value> = rest.iter().take(limit).map(|i| instance_json(&world, i, now)).collect();
    let next_token = (rest.len() > limit).then(|| cursor_after(rest[limit - 1].id.parse::<u64>().unwrap_or_default()));
    ok(json!({
        "success": true,
        "instances_found": page.len(),
        "total_instances": total,
        "next_token": next_token,
        "instances": page,
    }))
}

async fn show(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = sim.gate(P, "GET", "/instances/{id}/", bearer(&headers)).await {
        return response;
    }
    let world = sim.world();
    // vast-cli `show_instance`: a gone or unknown instance is a 200 whose `instances` is null.
    match world.find_visible(P, &id) {
        Some(i) => ok(json!({"instances": instance_json(&world, i, Instant::now())})),
        None => ok(json!({"instances": null})),
    }
}

async fn attach_key(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(response) = sim.gate(P, "POST", "/instances/{id}/ssh/", bearer(&headers)).await {
        return response;
    }
    let mut world = sim.world();
    let faults = world.faults(P);
    if faults.attach_failures > 0 {
        faults.attach_failures -= 1;
        // The rate-limits page's plain-text 429.
        return (StatusCode::TOO_MANY_REQUESTS, "API requests too frequent").into_response();
    }
    let key = body.get("ssh_key").and_then(Value::as_str).unwrap_or_default().to_string();
    match world.instances.iter().find(|i| i.provider == P && i.id == id && i.destroyed.is_none()) {
        Some(instance) => match instance.authorize(&key) {
            Ok(()) => ok(json!({"success": true, "msg": "SSH key attached successfully"})),
            Err(error) => {
                fail(StatusCode::INTERNAL_SERVER_ERROR, "error", &format!("could not attach the key: {error}"))
            }
        },
        None => fail(StatusCode::NOT_FOUND, "no_such_instance", "Instance not found"),
    }
}

async fn destroy(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = sim.gate(P, "DELETE", "/instances/{id}/", bearer(&headers)).await {
        return response;
    }
    let mut world = sim.world();
    let faults = world.faults(P);
    if faults.destroy_failures > 0 {
        faults.destroy_failures -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, "destroy failed").into_response();
    }
    if world.refuse_destroy(P) {
        // The refusal form vast-cli's `destroy_instance` reads: 200 with success false and msg (words invented).
        return ok(
            json!({"success": false, "error": "destroy_failed", "msg": "Instance could not be destroyed right now."}),
        );
    }
    // openapi.yaml, destroy instance: 200 and 404 as documented.
    if world.destroy(P, &id) {
        ok(json!({"success": true, "msg": "Instance destroyed successfully"}))
    } else {
        fail(StatusCode::NOT_FOUND, "not_found", "Instance not found")
    }
}

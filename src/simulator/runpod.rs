//! RunPod's GraphQL API, simulated at `/graphql`. Operations are recognised by
//! their root field and read their arguments from `variables`, which is how
//! the real client sends them. Errors come back as HTTP 200 with `errors`.
//! As docs/providers.md records: a GPU type out of stock keeps its prices but
//! has no `stockStatus`; a pod lists 22 as UDP first, `/http` ports with a
//! private address; an image that is not RunPod's has no sshd unless
//! `dockerArgs` installs and starts one; the account's keys reach a pod only
//! when the deploy names no key of its own; a pod may land on a dearer
//! machine than `lowestPrice` quoted (dstack issue #1886).
//!
//! Answers follow runpod/runpodctl, runpod-python and RunPod's docs; where no
//! source gives the words, the answer says "invented" beside it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::sim::{Sim, bearer};
use super::world::{ListingFault, NewInstance, SimInstance, SimState, World};
use crate::crd::ProviderName;

const P: ProviderName = ProviderName::Runpod;
/// RunPod's words (its docs and peers' logs) for a create nothing can serve.
const NO_CAPACITY: &str =
    "There are no longer any instances available with the requested specifications. Please refresh and try again.";

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new().route("/graphql", post(graphql)).with_state(sim)
}

fn data(value: Value) -> Response {
    axum::Json(json!({"data": value})).into_response()
}

fn graphql_error(message: &str) -> Response {
    axum::Json(json!({"errors": [{"message": message, "path": []}], "data": null})).into_response()
}

async fn graphql(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let key = bearer(&headers).or(params.get("api_key").map(String::as_str));
    let query = body["query"].as_str().unwrap_or_default().to_string();
    let variables = body.get("variables").cloned().unwrap_or(json!({}));
    let operation = ["gpuTypes", "podFindAndDeployOnDemand", "podRentInterruptable", "podTerminate", "myself", "pod("]
        .into_iter()
        .find(|op| query.contains(op))
        .unwrap_or("unknown");
    if let Err(response) = sim.gate(P, "POST", &format!("/graphql {operation}"), key).await {
        return response;
    }
    match operation {
        "gpuTypes" => gpu_types(&sim, &variables),
        // Every official client declares the input non-null.
        "podFindAndDeployOnDemand" if !query.contains("PodFindAndDeployOnDemandInput!") => graphql_error(
            "Variable \"$input\" of type \"PodFindAndDeployOnDemandInput\" used in position expecting type \"PodFindAndDeployOnDemandInput!\". GRAPHQL_VALIDATION_FAILED",
        ),
        "podFindAndDeployOnDemand" => deploy(&sim, &variables["input"], false, "podFindAndDeployOnDemand"),
        "podRentInterruptable" => deploy(&sim, &variables["input"], true, "podRentInterruptable"),
        "podTerminate" => terminate(&sim, &variables["input"]),
        "myself" => {
            let mut world = sim.world();
            match world.listing_fault(P) {
                Some(ListingFault::Unauthorized) => return axum::http::StatusCode::UNAUTHORIZED.into_response(),
                Some(ListingFault::Unreadable) => return data(json!({"myself": null})),
                None => {}
            }
            let now = Instant::now();
            let pods: Vec<Value> = world.visible(P).map(|i| pod_json(&world, i, now)).collect();
            data(json!({"myself": {"pods": pods}}))
        }
        "pod(" => {
            let world = sim.world();
            let id = variables["input"]["podId"].as_str().unwrap_or_default();
            let pod = world.find_visible(P, id).map(|i| pod_json(&world, i, Instant::now()));
            data(json!({"pod": pod}))
        }
        _ => graphql_error("Cannot query this field"),
    }
}

fn gpu_types(sim: &Sim, variables: &Value) -> Response {
    let count = variables["gpuCount"].as_u64().unwrap_or(1) as u32;
    let world = sim.world();
    let types: Vec<Value> = world
        .hosts(P)
        .map(|h| {
            let enough = h.available >= count;
            json!({
                "id": h.id,
                "displayName": h.gpu,
                "memoryInGb": h.vram_gb,
                "secureCloud": true,
                "communityCloud": true,
                // Out of stock: prices stay, the stock status goes.
                "lowestPrice": {
                    "minimumBidPrice": h.min_bid_per_hour,
                    "uninterruptablePrice": h.price_per_hour,
                    "stockStatus": if enough { json!(if h.available >= 4 * count { "High" } else { "Low" }) } else { Value::Null },
                },
            })
        })
        .collect();
    data(json!({"gpuTypes": types}))
}

fn deploy(sim: &Sim, input: &Value, interruptible: bool, field: &str) -> Response {
    let gpu_type = input["gpuTypeId"].as_str().unwrap_or_default().to_string();
    let count = input["gpuCount"].as_u64().unwrap_or(1) as u32;
    let mut world = sim.world();
    let faults = world.faults(P).clone();
    if faults.insufficient_funds {
        // Invented words.
        return graphql_error("Your balance is too low to deploy this pod (insufficient funds).");
    }
    let Some(host) = world.host(P, &gpu_type) else {
        // Invented words.
        return graphql_error(&format!("Invalid gpuTypeId {gpu_type}"));
    };
    // `minCudaVersion` is a floor; `allowedCudaVersions` matches exactly ("a version no
    // machine reports yields a capacity error", RunPod's REST docs).
    let cuda = host.real_cuda().to_string();
    let below_floor = input["minCudaVersion"].as_str().is_some_and(|floor| !crate::units::cuda_at_least(&cuda, floor));
    let not_allowed = input["allowedCudaVersions"]
        .as_array()
        .is_some_and(|allowed| !allowed.iter().any(|v| v.as_str() == Some(cuda.as_str())));
    if faults.stale_inventory
        || count > host.available
        || faults.snatched_offers.contains(&gpu_type)
        || below_floor
        || not_allowed
    {
        return graphql_error(NO_CAPACITY);
    }
    let env: BTreeMap<String, String> = input["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["key"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    let per_gpu = if interruptible { input["bidPerGpu"].as_f64().unwrap_or(0.0) } else { host.price_per_hour };
    if interruptible && per_gpu < host.min_bid_per_hour.unwrap_or(f64::MAX) {
        // Invented words.
        return graphql_error("Your bid is below the minimum bid price for this GPU type.");
    }
    // `lowestPrice` quotes the cheapest cloud; with cloudType ALL the pod may land on a dearer
    // machine (dstack issue #1886: a $0.98 offer became a $1.52 pod).
    let per_gpu =
        if interruptible { per_gpu } else { per_gpu * (1.0 + f64::from(faults.placement_markup_percent) / 100.0) };
    let mut env = env;
    // The account's keys go in as PUBLIC_KEY when startSsh is set and the deploy names no key of
    // its own; a deploy-time PUBLIC_KEY or SSH_PUBLIC_KEY replaces them (runpod/docs PR #748).
    let own_key = env.get("PUBLIC_KEY").or(env.get("SSH_PUBLIC_KEY")).cloned();
    if own_key.is_none() && input["startSsh"] == Value::Bool(true) && !faults.account_keys.is_empty() {
        env.insert("PUBLIC_KEY".into(), faults.account_keys.join("\n"));
    }
    let image_name = input["imageName"].as_str().unwrap_or_default();
    // Only RunPod's images start sshd from PUBLIC_KEY; any other needs dockerArgs that do.
    let sshd = image_name.starts_with("runpod/") || docker_args_start_sshd(input["dockerArgs"].as_str());
    let key = if sshd { env.get("PUBLIC_KEY").cloned().unwrap_or_default() } else { String::new() };
    let name = input["name"].as_str().unwrap_or_default().to_string();
    let image = input["imageName"].as_str().unwrap_or_default().to_string();
    // "22/tcp,8000/http"
    let port_specs: Vec<(u16, String)> = input["ports"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| {
            let (port, kind) = p.trim().split_once('/')?;
            Some((port.parse().ok()?, kind.to_ascii_lowercase()))
        })
        .collect();
    let ports: Vec<u16> = port_specs.iter().map(|(p, _)| *p).collect();
    let http_ports: Vec<u16> = port_specs.iter().filter(|(_, k)| k == "http").map(|(p, _)| *p).collect();
    if !http_ports.is_empty() {
        env.insert(HTTP_PORTS_ENV.into(), http_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","));
    }
    let new = NewInstance {
        provider: P,
        host,
        gpu_count: count,
        price_per_hour: per_gpu * f64::from(count),
        label: name,
        ssh_public_key: key,
        image,
        env,
        ports,
        driver_broken: false,
        cloud_init: None,
    };
    let Ok(instance) = world.create(new) else {
        return graphql_error("Something went wrong. Please try again later or contact support.");
    };
    let faults = world.faults(P);
    if faults.lose_create_responses > 0 {
        faults.lose_create_responses -= 1;
        return (axum::http::StatusCode::BAD_GATEWAY, "bad gateway").into_response();
    }
    let pod = pod_json(&world, &instance, Instant::now());
    data(json!({ field: pod }))
}

/// Where the simulated pod remembers which ports were asked for as `/http`.
const HTTP_PORTS_ENV: &str = "RUNPOD_SIM_HTTP_PORTS";

/// Does the container start command install/start sshd and authorise the key?
/// Base64-wrapped scripts (`echo … | base64 -d`) are read through.
fn docker_args_start_sshd(args: Option<&str>) -> bool {
    use base64::Engine;
    let Some(args) = args else { return false };
    let decoded: String = args
        .split_whitespace()
        .filter_map(|word| base64::engine::general_purpose::STANDARD.decode(word.trim_matches('\'')).ok())
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .collect();
    let script = format!("{args}\n{decoded}");
    script.contains("sshd") && script.contains("authorized_keys") && script.contains("PUBLIC_KEY")
}

fn terminate(sim: &Sim, input: &Value) -> Response {
    let id = input["podId"].as_str().unwrap_or_default();
    let mut world = sim.world();
    let faults = world.faults(P);
    if faults.destroy_failures > 0 {
        faults.destroy_failures -= 1;
        return graphql_error("Something went wrong. Please try again later or contact support (internal error).");
    }
    if world.refuse_destroy(P) {
        return data(json!({"podTerminate": null})); // answered like a success, nothing done
    }
    // `{"podTerminate": null}` on success; "pod not found to terminate" for an unknown pod (public captures).
    if world.destroy(P, id) { data(json!({"podTerminate": null})) } else { graphql_error("pod not found to terminate") }
}

fn pod_json(world: &World, i: &SimInstance, now: Instant) -> Value {
    let state = world.state_of(i, now);
    let reachable = !world.faults.get(&P).is_some_and(|f| f.unreachable_instances);
    let http_ports: Vec<u16> =
        i.env.get(HTTP_PORTS_ENV).map(|p| p.split(',').filter_map(|p| p.parse().ok()).collect()).unwrap_or_default();
    let runtime = (state == SimState::Running).then(|| {
        // As a real pod lists them: 22 as UDP first, then the private and public TCP mappings.
        let mut ports = vec![
            json!({"ip": "127.0.0.1", "isIpPublic": true, "privatePort": 22, "publicPort": 1, "type": "udp"}),
            json!({"ip": "100.65.13.7", "isIpPublic": false, "privatePort": 22, "publicPort": 22, "type": "tcp"}),
        ];
        if reachable {
            ports.push(json!({"ip": "127.0.0.1", "isIpPublic": true, "privatePort": 22, "publicPort": i.ssh_port, "type": "tcp"}));
        }
        for (private, public) in &i.port_map {
            if http_ports.contains(private) {
                // Served only through https://{pod}-{port}.proxy.runpod.net: no public address.
                ports.push(json!({"ip": "100.65.13.7", "isIpPublic": false, "privatePort": private, "publicPort": private, "type": "http"}));
            } else {
                ports.push(json!({"ip": "127.0.0.1", "isIpPublic": true, "privatePort": private, "publicPort": public, "type": "tcp"}));
            }
        }
        json!({
            "uptimeInSeconds": now.duration_since(i.created).as_secs(),
            "ports": ports,
            "gpus": (0..i.gpu_count).map(|n| json!({"id": format!("GPU-{n}"), "gpuUtilPercent": i.gpu_utilization.load(std::sync::atomic::Ordering::Relaxed), "memoryUtilPercent": 0})).collect::<Vec<_>>(),
        })
    });
    json!({
        "id": i.id,
        "name": i.label,
        "desiredStatus": match state {
            SimState::Destroyed => "TERMINATED",
            SimState::Stopped => "EXITED",
            _ => "RUNNING",
        },
        "imageName": i.image,
        "machineId": format!("m-{}", i.host.id.len()),
        "costPerHr": i.price_per_hour,
        "runtime": runtime,
        "machine": {"gpuDisplayName": i.host.gpu},
    })
}

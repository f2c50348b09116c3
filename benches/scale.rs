//! Scale benchmark (`make bench`): N GpuSessions applied at once against the
//! real API server and the simulated marketplaces (instances boot at once),
//! compared with the floor: the same API server doing only the minimum API
//! work a session needs, with the same concurrency. Prints a table and writes
//! bench/results/<date>.json. Needs the control plane (`make bench` starts it).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/ranking_input.rs"]
mod ranking_input;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use gpu_shopper::crd::conditions::types;
use gpu_shopper::crd::{GpuSession, ProviderName};
use gpu_shopper::simulator;
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::Faults;
use support::*;

const CONCURRENCY: usize = 32;

/// Every other session has an idle timeout, so the steady phase also measures the SSH checks.
fn session(name: &str, idle_checked: bool) -> GpuSession {
    let mut spec = json!({"requirements": {"gpuModels": ["RTX 4090"]}});
    if idle_checked {
        spec["lifetime"] = json!({"idleTimeout": "10h"});
    }
    serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// How long the steady phase watches N running sessions (BENCH_STEADY_SECONDS, default 360: one
/// cost write of every running session falls inside, and a whole number of the controller's
/// one-minute machine checks, so logins per machine are not rounded up or down by where in a
/// machine's check interval the window happens to start).
fn steady_window() -> Duration {
    Duration::from_secs(std::env::var("BENCH_STEADY_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(360))
}

/// Whether the simulated marketplaces enforce their rate limits and the Vast client
/// paces itself to its 100 ms guess (BENCH_MARKETPLACE_LIMITS=on). Off by default: the
/// API floor has no marketplace in it, so the ratio compares the operator's own work
/// with it; with the limits on, the marketplaces' pacing bounds time to Ready instead.
fn marketplace_limits() -> bool {
    std::env::var("BENCH_MARKETPLACE_LIMITS").is_ok_and(|v| v == "on")
}

async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

/// Runs `work(i)` for i in 0..n with CONCURRENCY in flight.
async fn each<F, Fut>(n: usize, work: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures::stream::iter(0..n).map(work).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await;
}

/// How far along the sessions are, kept from their watch events.
#[derive(Default)]
struct Watched {
    /// Every session that exists, and whether it is Ready.
    ready: std::collections::HashMap<String, bool>,
    /// Seconds from creation to each stage, for each session when it first turned Ready.
    stages: Vec<[f64; 3]>,
}

impl Watched {
    fn saw(&mut self, session: &GpuSession) {
        let name = session.metadata.name.clone().unwrap_or_default();
        let conditions = session.status.as_ref().map(|st| st.conditions.as_slice()).unwrap_or_default();
        let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let since_created = |at: jiff::Timestamp| Some(at.duration_since(created?).as_secs_f64());
        let became_true = |type_: &str| {
            let condition = gpu_shopper::crd::conditions::find(conditions, type_).filter(|c| c.status == "True")?;
            since_created(condition.last_transition_time.0)
        };
        let ready_at = became_true(types::READY);
        let was_ready = self.ready.insert(name, ready_at.is_some()).unwrap_or(false);
        if let Some(ready) = ready_at
            && !was_ready
        {
            let rented = session.status.as_ref().and_then(|st| since_created(st.rented_at.as_ref()?.0));
            if let (Some(rented), Some(running)) = (rented, became_true(types::INSTANCE_RUNNING)) {
                self.stages.push([rented, running, ready]);
            }
        }
    }
}

/// Follows the sessions with a watch until `done` holds (a list of every session each
/// poll was itself load on the API server the controller shares: 1000 sessions four
/// times a second).
async fn watch_until(
    sessions: &Api<GpuSession>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Watched) -> bool,
) -> Watched {
    use kube::runtime::{WatchStreamExt, watcher};
    let mut watched = Watched::default();
    let mut listed = false;
    let stream = watcher(sessions.clone(), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next()).await;
        let event = event.unwrap_or_else(|_| panic!("bench: timed out waiting for {what}"));
        match event.expect("the watch ended") {
            Ok(watcher::Event::Init) => watched.ready.clear(),
            Ok(watcher::Event::InitApply(session) | watcher::Event::Apply(session)) => watched.saw(&session),
            Ok(watcher::Event::Delete(session)) => {
                watched.ready.remove(&session.metadata.name.clone().unwrap_or_default());
            }
            Ok(watcher::Event::InitDone) => listed = true,
            Err(error) => eprintln!("bench: watch error (retried): {error}"),
        }
        if listed && done(&watched) {
            return watched;
        }
    }
}

/// Median and 90th percentile of each stage's seconds since creation.
fn stage_breakdown(stages: &[[f64; 3]]) -> Value {
    let quantiles = |index: usize| {
        let mut values: Vec<f64> = stages.iter().map(|s| s[index]).collect();
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        json!({"median": at(0.5), "p90": at(0.9)})
    };
    json!({"rented": quantiles(0), "instanceRunning": quantiles(1), "ready": quantiles(2)})
}

fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Marketplace calls by operation up to now: how many, and their mean duration (a
/// listing is every page of it).
fn marketplace_calls(text: &str) -> Value {
    let calls: serde_json::Map<String, Value> = ["search", "create", "ensure_ssh_key", "get", "list", "destroy"]
        .iter()
        .map(|operation| {
            let filter = format!("operation=\"{operation}\"");
            let count = metric_sum(text, "gpu_shopper_provider_call_duration_seconds_count", &filter);
            let seconds = metric_sum(text, "gpu_shopper_provider_call_duration_seconds_sum", &filter);
            let mean = if count > 0.0 { seconds / count } else { 0.0 };
            (operation.to_string(), json!({"count": count, "meanSeconds": mean}))
        })
        .collect();
    Value::Object(calls)
}

/// API writes per session, by the kind of object written (sessions, secrets, events, ...), leases aside.
fn writes_by_resource(text: &str, n: usize) -> Value {
    let mut by = serde_json::Map::new();
    for resource in ["gpusessions", "secrets", "events", "other"] {
        let filter = format!("kind=\"write\",resource=\"{resource}\"");
        by.insert(resource.into(), json!(metric_sum(text, "gpu_shopper_kube_requests_total", &filter) / n as f64));
    }
    Value::Object(by)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory now (VmRSS), MiB.
fn rss_now(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn proc_figures(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kib / 1024.0, ticks / 100.0)
}

/// What the sessions of a run do once Ready.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// Every other session has an idle timeout (checked over SSH); steady window `steady_window()`.
    Mixed,
    /// Interactive sessions without an idle timeout: nothing to do but run; a 60 s window.
    Idle,
}

async fn controller_run(client: &Client, n: usize, load: Load) -> Value {
    let ns = namespace(client, &format!("bench{n}")).await;
    let mut market = Market::builtin();
    market.timings.created_ms = 0;
    market.timings.loading_ms = 0;
    let sim = simulator::start(market, 0).await.unwrap();
    let mut env: Vec<(&str, String)> = sim.env();
    // BENCH_LOG_LEVEL: the controller's log (target/tmp/controller-logs/bench<N>-*.log), warn unless told.
    env.push(("LOG_LEVEL", std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into())));
    // The chart's lease, not the tests' short one: a starved 3 s lease fences the leader.
    // BENCH_LEASE_DURATION: a 10 000-session ramp on two shared cores delays renewals past 15 s.
    env.push(("LEASE_DURATION", std::env::var("BENCH_LEASE_DURATION").unwrap_or_else(|_| "15s".into())));
    // MAX_CONCURRENT_RECONCILES: the controller's bound on reconciles in flight (its default unless set).
    if let Ok(bound) = std::env::var("MAX_CONCURRENT_RECONCILES") {
        env.push(("MAX_CONCURRENT_RECONCILES", bound));
    }
    if std::env::var_os("GPU_SHOPPER_CONTROLLER_BIN").is_some() {
        // A heap-profiled build runs too slowly to renew a lease in time: it would fence itself.
        env.push(("LEADER_ELECTION", "false".into()));
    }
    if !marketplace_limits() {
        for provider in [ProviderName::Vastai, ProviderName::Tensordock, ProviderName::Runpod] {
            sim.set_faults(provider, Faults { no_rate_limits: true, ..Default::default() });
        }
        env.push(("VASTAI_ENDPOINT_INTERVAL", "0s".into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut controller = ControllerProcess::start_with_env_named(&ns, "bench", &env);
    controller.wait_ready().await;
    let pid = controller.pid().unwrap();
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);

    let started = Instant::now();
    each(n, |i| {
        let sessions = sessions.clone();
        async move {
            let idle_checked = load == Load::Mixed && i % 2 == 1;
            sessions.create(&PostParams::default(), &session(&format!("s{i}"), idle_checked)).await.unwrap();
        }
    })
    .await;
    let watched = watch_until(&sessions, "every session Ready", Duration::from_secs(1800), |w| {
        w.ready.values().filter(|ready| **ready).count() == n
    })
    .await;
    let ready = started.elapsed();
    let metrics_at_ready = metrics_text(controller.http_port).await;
    let rss_at_ready = proc_figures(pid).0;

    // Steady state: the sessions just run. Everything the controller does now is overhead.
    tokio::time::sleep(Duration::from_secs(10)).await; // the last Ready writes and their watch events
    let window = if load == Load::Idle { Duration::from_secs(60) } else { steady_window() };
    let before = metrics_text(controller.http_port).await;
    let logins_before = sim.sim.world().ssh_logins.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let after = metrics_text(controller.http_port).await;
    if std::env::var_os("BENCH_HEAP_SNAPSHOT").is_some() {
        // A heap-profiled build (GPU_SHOPPER_CONTROLLER_BIN) writes the heap as it is now,
        // with every session running, to its dhat-heap.json.
        controller.signal("USR1");
    }
    let logins = sim.sim.world().ssh_logins.load(std::sync::atomic::Ordering::Relaxed) - logins_before;
    let hours = window.as_secs_f64() / 3600.0;
    let delta = |name: &str, filter: &str| metric_sum(&after, name, filter) - metric_sum(&before, name, filter);
    let per_session_hour = |total: f64| total / n as f64 / hours;
    let steady = json!({
        "windowSeconds": window.as_secs(),
        // Leader-election traffic (leases) is the replica's, not the sessions': reported apart.
        "apiWritesPerSessionHour": per_session_hour(
            delta("gpu_shopper_kube_requests_total", "kind=\"write\"")
                - delta("gpu_shopper_kube_requests_total", "kind=\"write\",resource=\"leases\""),
        ),
        "apiReadsPerSessionHour": per_session_hour(
            delta("gpu_shopper_kube_requests_total", "kind=\"read\"")
                - delta("gpu_shopper_kube_requests_total", "kind=\"read\",resource=\"leases\""),
        ),
        "leaseRequestsPerHour": (delta("gpu_shopper_kube_requests_total", "resource=\"leases\"")) / hours,
        // Half the sessions have an idle timeout (checked over SSH); the others need no login at all.
        "sshLoginsPerIdleCheckedMachineHour": logins as f64 / (n / 2).max(1) as f64 / hours,
        "sshLogins": logins,
        "providerCallsPerInventoryInterval": delta("gpu_shopper_provider_call_duration_seconds_count", "") / (window.as_secs_f64() / 30.0),
        "providerCallsPerSessionHour": per_session_hour(delta("gpu_shopper_provider_call_duration_seconds_count", "")),
        "reconcilesPerSessionHour": per_session_hour(delta("gpu_shopper_reconciliations_total", "controller=\"gpusession\"")),
        "rssMiB": proc_figures(pid).0,
        "rssNowMiB": rss_now(pid),
        // The allocator's view at the window's end: memory in use, and pages it holds.
        "heapAllocatedMiB": metric_sum(&after, "gpu_shopper_heap_allocated_bytes", "") / MIB,
        "heapResidentMiB": metric_sum(&after, "gpu_shopper_heap_resident_bytes", "") / MIB,
    });

    let deleting = Instant::now();
    // One delete per session, as users delete them (a single delete-collection of 1000
    // objects with finalizers outlives the API server's request timeout).
    each(n, |i| {
        let sessions = sessions.clone();
        async move {
            let _ = sessions.delete(&format!("s{i}"), &DeleteParams::default()).await;
        }
    })
    .await;
    watch_until(&sessions, "every session gone", Duration::from_secs(1800), |w| w.ready.is_empty()).await;
    while !sim.instances().iter().all(|i| i.destroyed) {
        assert!(deleting.elapsed() < Duration::from_secs(1800), "bench: timed out waiting for no live instance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deleted = deleting.elapsed();
    let metrics = metrics_text(controller.http_port).await;
    let (rss_mib, cpu_seconds) = proc_figures(pid);
    // A graceful stop, so a heap-profiled build writes its profile.
    controller.terminate();
    let _ = controller.exited_within(Duration::from_secs(120)).await;
    drop(controller);
    delete_namespace(client, &ns).await;
    let per = |total: f64| total / n as f64;
    json!({
        "readySeconds": ready.as_secs_f64(),
        "deleteSeconds": deleted.as_secs_f64(),
        "apiWritesPerSessionToReady": per(metric_sum(&metrics_at_ready, "gpu_shopper_kube_requests_total", "kind=\"write\"")),
        "apiWritesPerSessionToReadyByResource": writes_by_resource(&metrics_at_ready, n),
        "apiWritesPerSessionByResource": writes_by_resource(&metrics, n),
        "apiWritesPerSession": per(metric_sum(&metrics, "gpu_shopper_kube_requests_total", "kind=\"write\"")),
        "apiReadsPerSession": per(metric_sum(&metrics, "gpu_shopper_kube_requests_total", "kind=\"read\"")),
        "apiWatchRequests": metric_sum(&metrics, "gpu_shopper_kube_requests_total", "kind=\"watch\""),
        "providerCallsPerSession": per(metric_sum(&metrics, "gpu_shopper_provider_call_duration_seconds_count", "")),
        "reconcilesPerSession": per(metric_sum(&metrics, "gpu_shopper_reconciliations_total", "controller=\"gpusession\"")),
        "peakRssMiB": rss_mib,
        "rssAtReadyMiB": rss_at_ready,
        // Whole seconds: a condition's transition time keeps seconds.
        "secondsSinceCreatedAtStage": stage_breakdown(&watched.stages),
        "marketplaceCallsToReady": marketplace_calls(&metrics_at_ready),
        "cpuSeconds": cpu_seconds,
        "steady": steady,
    })
}

/// The minimum API work per session, by a tight client loop: create the session, create its
/// Secret, add the finalizer, two status writes (rented, Ready); then delete and drop the finalizer.
async fn floor_run(client: &Client, n: usize) -> Value {
    let ns = namespace(client, &format!("floor{n}")).await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    each(n, |i| {
        let (sessions, secrets) = (sessions.clone(), secrets.clone());
        async move {
            let name = format!("s{i}");
            sessions.create(&PostParams::default(), &session(&name, false)).await.unwrap();
            let secret = Secret {
                metadata: kube::api::ObjectMeta { name: Some(format!("{name}-ssh")), ..Default::default() },
                data: Some(BTreeMap::from([("ssh-privatekey".to_string(), ByteString(vec![b'k'; 400]))])),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &secret).await.unwrap();
            let finalizer = json!({"metadata": {"finalizers": ["gpushopper.dev/destroy-instance"]}});
            sessions.patch(&name, &PatchParams::default(), &Patch::Merge(&finalizer)).await.unwrap();
            for phase in ["Provisioning", "Running"] {
                let status = json!({"status": {"phase": phase, "observedGeneration": 1}});
                sessions.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
            }
        }
    })
    .await;
    let ready = started.elapsed();
    let deleting = Instant::now();
    each(n, |i| {
        let sessions = sessions.clone();
        async move {
            let name = format!("s{i}");
            sessions.delete(&name, &DeleteParams::default()).await.unwrap();
            let clear = json!({"metadata": {"finalizers": null}});
            sessions.patch(&name, &PatchParams::default(), &Patch::Merge(&clear)).await.unwrap();
        }
    })
    .await;
    let deleted = deleting.elapsed();
    delete_namespace(client, &ns).await;
    json!({"readySeconds": ready.as_secs_f64(), "deleteSeconds": deleted.as_secs_f64(), "apiWritesPerSession": 6.0})
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too (without --bench): this one takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: not run under `cargo test`; run it with `make bench` (cargo bench --bench scale)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "100,500,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let client = client().await;
    install_crds(&client).await;
    // Before any run: afterwards the API server is still clearing the deleted sessions for
    // minutes, and the ranking figure measured the machine's load more than the code.
    let ranking_ms = ranking_milliseconds(100_000);
    let mut runs = Vec::new();
    println!(
        "{:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>11} {:>11} {:>9} {:>8} {:>8}",
        "N",
        "ready s",
        "floor s",
        "ratio",
        "delete s",
        "floor s",
        "writes/ses",
        "reads/ses",
        "prov/ses",
        "RSS MiB",
        "CPU s"
    );
    for n in sizes {
        let floor = floor_run(&client, n).await;
        let controller = controller_run(&client, n, Load::Mixed).await;
        let ratio = controller["readySeconds"].as_f64().unwrap() / floor["readySeconds"].as_f64().unwrap();
        println!(
            "{n:>6} {:>9.1} {:>9.1} {ratio:>7.1} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>9.1} {:>8.1} {:>8.1}",
            controller["readySeconds"].as_f64().unwrap(),
            floor["readySeconds"].as_f64().unwrap(),
            controller["deleteSeconds"].as_f64().unwrap(),
            floor["deleteSeconds"].as_f64().unwrap(),
            controller["apiWritesPerSession"].as_f64().unwrap(),
            controller["apiReadsPerSession"].as_f64().unwrap(),
            controller["providerCallsPerSession"].as_f64().unwrap(),
            controller["peakRssMiB"].as_f64().unwrap(),
            controller["cpuSeconds"].as_f64().unwrap(),
        );
        let steady = &controller["steady"];
        println!(
            "{n:>6} steady {}s: writes/session/h {:.1}, reads/session/h {:.1}, SSH logins/idle-checked machine/h {:.1}, marketplace calls/interval {:.1} ({:.2}/session/h), reconciles/session/h {:.1}, RSS {:.1} MiB (peak {:.1} MiB; heap allocated {:.1} MiB, allocator resident {:.1} MiB)",
            steady["windowSeconds"],
            steady["apiWritesPerSessionHour"].as_f64().unwrap(),
            steady["apiReadsPerSessionHour"].as_f64().unwrap(),
            steady["sshLoginsPerIdleCheckedMachineHour"].as_f64().unwrap(),
            steady["providerCallsPerInventoryInterval"].as_f64().unwrap(),
            steady["providerCallsPerSessionHour"].as_f64().unwrap(),
            steady["reconcilesPerSessionHour"].as_f64().unwrap(),
            steady["rssNowMiB"].as_f64().unwrap(),
            steady["rssMiB"].as_f64().unwrap(),
            steady["heapAllocatedMiB"].as_f64().unwrap(),
            steady["heapResidentMiB"].as_f64().unwrap(),
        );
        let stages = &controller["secondsSinceCreatedAtStage"];
        let at = |stage: &str| format!("{}/{}", stages[stage]["median"], stages[stage]["p90"]);
        println!(
            "{n:>6} seconds from a session's creation (median/p90): rented {}, instance running {}, Ready {}",
            at("rented"),
            at("instanceRunning"),
            at("ready"),
        );
        runs.push(json!({"sessions": n, "controller": controller, "floor": floor, "readyRatio": ratio}));
        // Written after every size, so a later failure keeps what was measured.
        write_results(&runs);
    }
    // BENCH_IDLE_SESSIONS (make bench: 10000): that many sessions Ready and simply running.
    let idle: usize = std::env::var("BENCH_IDLE_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if idle > 0 {
        let run = controller_run(&client, idle, Load::Idle).await;
        let steady = &run["steady"];
        println!(
            "{idle:>6} idle sessions: to Ready {:.0} s, RSS while they run {:.1} MiB (peak {:.1} MiB; heap allocated {:.1} MiB, allocator resident {:.1} MiB), writes/session/h {:.1}, reads/session/h {:.1}, delete {:.0} s",
            run["readySeconds"].as_f64().unwrap(),
            steady["rssNowMiB"].as_f64().unwrap(),
            run["peakRssMiB"].as_f64().unwrap(),
            steady["heapAllocatedMiB"].as_f64().unwrap(),
            steady["heapResidentMiB"].as_f64().unwrap(),
            steady["apiWritesPerSessionHour"].as_f64().unwrap(),
            steady["apiReadsPerSessionHour"].as_f64().unwrap(),
            run["deleteSeconds"].as_f64().unwrap(),
        );
        runs.push(json!({"sessions": idle, "idle": true, "controller": run}));
        write_results(&runs);
    }
    // BENCH_RATE_LIMITED_SESSIONS (make bench: 20): sessions on a Vast that allows 2 calls a
    // second per endpoint and answers 429 past it; the client keeps its own 100 ms guess.
    let limited: usize = std::env::var("BENCH_RATE_LIMITED_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if limited > 0 {
        let run = rate_limited_run(&client, limited).await;
        println!(
            "{limited:>6} sessions under Vast's 2 calls/s per endpoint: all Ready in {:.1} s; after deleting them all, the last machine died at {:.1} s and every finalizer was gone at {:.1} s; 429s answered {}",
            run["readySeconds"].as_f64().unwrap(),
            run["lastMachineDiedSeconds"].as_f64().unwrap(),
            run["sessionsGoneSeconds"].as_f64().unwrap(),
            run["refused429"],
        );
        runs.push(json!({"sessions": limited, "rateLimited": true, "controller": run}));
        write_results(&runs);
    }
    // BENCH_OUTPUT_GIB (make bench: 1): a Job writes that many GiB and saves it to a bucket.
    let gib: u64 = std::env::var("BENCH_OUTPUT_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if gib > 0 {
        let run = output_run(&client, gib).await;
        println!(
            "a {gib} GiB output saved from a simulated machine to the store: {:.1} s ({:.0} MiB/s), confirmed {} bytes; operator RSS before {:.1} MiB, peak {:.1} MiB (the bytes never pass through it)",
            run["savedSeconds"].as_f64().unwrap(),
            run["mibPerSecond"].as_f64().unwrap(),
            run["confirmedBytes"],
            run["rssBeforeMiB"].as_f64().unwrap(),
            run["peakRssMiB"].as_f64().unwrap(),
        );
        runs.push(json!({"outputGib": gib, "controller": run}));
        write_results(&runs);
    }
    print_targets(&runs, ranking_ms);
}

/// A Job that writes `gib` GiB and saves it to an S3-compatible store: how long the
/// save takes and what the operator's memory does meanwhile.
async fn output_run(client: &Client, gib: u64) -> Value {
    use k8s_openapi::api::core::v1::Secret;
    let ns = namespace(client, "bench-output").await;
    let store = support::s3::ObjectStore::start(&["results"]).await;
    let mut market = Market::builtin();
    market.timings.created_ms = 0;
    market.timings.loading_ms = 0;
    let sim = simulator::start(market, 0).await.unwrap();
    let mut env: Vec<(&str, String)> = sim.env();
    env.push(("LOG_LEVEL", "warn".into()));
    env.push(("MACHINE_CHECK_INTERVAL", "60s".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = ControllerProcess::start_with_env_named(&ns, "bench-output", &env);
    controller.wait_ready().await;
    let pid = controller.pid().unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let keys: Secret = serde_json::from_value(json!({"metadata": {"name": "bucket-keys"}, "stringData": {
        "AWS_ACCESS_KEY_ID": support::s3::ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": support::s3::SECRET_KEY}}))
    .unwrap();
    secrets.create(&PostParams::default(), &keys).await.unwrap();
    let session: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "big"},
        "spec": {
            "requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]},
            "workload": {"kind": "Job", "command": format!("mkdir -p out && head -c {} /dev/zero > out/weights.bin", gib << 30),
                "outputs": [{"path": "out", "s3": {"bucket": "results", "prefix": "bench/", "endpoint": store.endpoint,
                    "credentialsSecretRef": {"name": "bucket-keys"}}}]},
            "timeouts": {"outputs": "30m"},
        },
    }))
    .unwrap();
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let rss_before = rss_now(pid);
    sessions.create(&PostParams::default(), &session).await.unwrap();
    // From the moment the operator starts saving (the job has exited) to the session's end.
    let mut saving_since = None;
    let done = loop {
        let s = sessions.get("big").await.unwrap();
        let st = s.status.clone().unwrap_or_default();
        if saving_since.is_none()
            && gpu_shopper::crd::conditions::find(&st.conditions, types::OUTPUTS_SAVED)
                .is_some_and(|c| c.status == "Unknown")
        {
            saving_since = Some(Instant::now());
        }
        if matches!(st.phase, Some(gpu_shopper::crd::SessionPhase::Succeeded | gpu_shopper::crd::SessionPhase::Failed))
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = saving_since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    let st = done.status.clone().unwrap();
    let confirmed: u64 = st.job.as_ref().map(|j| j.outputs.iter().map(|o| o.bytes).sum()).unwrap_or(0);
    let (peak, _) = proc_figures(pid);
    sessions.delete("big", &DeleteParams::default()).await.unwrap();
    drop(controller);
    delete_namespace(client, &ns).await;
    json!({
        "savedSeconds": seconds,
        "mibPerSecond": (gib as f64 * 1024.0) / seconds.max(0.001),
        "confirmedBytes": confirmed,
        "rssBeforeMiB": rss_before,
        "peakRssMiB": peak,
        "outcome": st.reason,
    })
}

/// `n` sessions on Vast alone, with Vast limiting each endpoint to 2 calls a second (429
/// with its documented text past it): how long until all are Ready, and after they are
/// all deleted at once, how long until no machine is alive at the marketplace.
async fn rate_limited_run(client: &Client, n: usize) -> Value {
    let ns = namespace(client, &format!("bench-limited{n}")).await;
    let mut market = Market::builtin();
    market.timings.created_ms = 0;
    market.timings.loading_ms = 0;
    let sim = simulator::start(market, 0).await.unwrap();
    sim.set_faults(ProviderName::Vastai, Faults { endpoint_interval_ms: 500, ..Default::default() });
    let mut env: Vec<(&str, String)> = sim.env();
    env.push(("LOG_LEVEL", std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = ControllerProcess::start_with_env_named(&ns, "bench-limited", &env);
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    for i in 0..n {
        let mut session = session(&format!("l{i}"), false);
        session.spec.requirements.get_or_insert_default().providers = vec![ProviderName::Vastai];
        sessions.create(&PostParams::default(), &session).await.unwrap();
    }
    watch_until(&sessions, "every rate-limited session Ready", Duration::from_secs(600), |w| {
        w.ready.values().filter(|ready| **ready).count() == n
    })
    .await;
    let ready = started.elapsed();
    let deleting = Instant::now();
    sessions.delete_collection(&DeleteParams::default(), &Default::default()).await.unwrap();
    let alive = || sim.instances().into_iter().filter(|i| !i.destroyed).count();
    let mut last_died = None;
    let mut gone = None;
    while gone.is_none() || last_died.is_none() {
        if last_died.is_none() && alive() == 0 {
            last_died = Some(deleting.elapsed());
        }
        if gone.is_none() && sessions.list(&Default::default()).await.unwrap().items.is_empty() {
            gone = Some(deleting.elapsed());
        }
        assert!(deleting.elapsed() < Duration::from_secs(600), "bench: rate-limited deletion did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = sim.sim.world().rate_limits.refused.get(&ProviderName::Vastai).copied().unwrap_or(0);
    drop(controller);
    delete_namespace(client, &ns).await;
    json!({
        "readySeconds": ready.as_secs_f64(),
        "lastMachineDiedSeconds": last_died.unwrap().as_secs_f64(),
        "sessionsGoneSeconds": gone.unwrap().as_secs_f64(),
        "refused429": refused,
    })
}

/// Filtering and ranking `n` offers, the median of 21 runs in milliseconds (the
/// criterion bench measures it more carefully; this puts the figure in the table).
fn ranking_milliseconds(n: usize) -> f64 {
    let all = ranking_input::offers(n);
    let requirements = ranking_input::requirements();
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(ranking_input::filter_and_rank(&all, &requirements));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The targets beside this run's figures: the steady state and ramp of the
/// largest mixed run (1000 in `make bench`), the idle run's resident set.
fn print_targets(runs: &[Value], ranking_ms: f64) {
    let mixed =
        runs.iter().filter(|r| r["idle"] != true && r["rateLimited"] != true).max_by_key(|r| r["sessions"].as_u64());
    let idle = runs.iter().find(|r| r["idle"] == true);
    let limited = runs.iter().find(|r| r["rateLimited"] == true);
    let mixed = mixed.filter(|r| r.get("outputGib").is_none());
    let mut rows: Vec<(String, String, &str, bool)> = Vec::new();
    if let Some(run) = mixed {
        let n = run["sessions"].as_u64().unwrap_or(0);
        let c = &run["controller"];
        let s = &c["steady"];
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let writes_h = f(&s["apiWritesPerSessionHour"]);
        let reads_h = f(&s["apiReadsPerSessionHour"]);
        let logins_h = f(&s["sshLoginsPerIdleCheckedMachineHour"]);
        let calls = f(&s["providerCallsPerInventoryInterval"]);
        let ratio = f(&run["readyRatio"]);
        let (to_ready, in_all) = (f(&c["apiWritesPerSessionToReady"]), f(&c["apiWritesPerSession"]));
        let peak = f(&c["peakRssMiB"]);
        rows.push((
            format!("API writes per running session per hour (N={n})"),
            format!("{writes_h:.1}"),
            "<= 12",
            writes_h <= 12.0,
        ));
        rows.push((
            format!("API reads per running session per hour (N={n})"),
            format!("{reads_h:.1}"),
            "<= 12",
            reads_h <= 12.0,
        ));
        rows.push((
            "SSH logins per idle-checked machine per hour".into(),
            format!("{logins_h:.1}"),
            "<= 60",
            logins_h <= 60.0,
        ));
        rows.push((
            format!("marketplace calls per 30 s interval, {n} running"),
            format!("{calls:.1}"),
            "<= 3 (one listing per marketplace)",
            calls <= 3.0,
        ));
        rows.push((
            format!("{n} sessions to Ready, ratio to the floor"),
            format!("{ratio:.1}x"),
            "<= 3x",
            ratio <= 3.0,
        ));
        rows.push((
            "API writes per session to Ready / in all".into(),
            format!("{to_ready:.1} / {in_all:.1}"),
            "<= 12 / <= 16",
            to_ready <= 12.0 && in_all <= 16.0,
        ));
        rows.push((format!("peak RSS, {n} sessions to Ready"), format!("{peak:.1} MiB"), "< 64 MiB", peak < 64.0));
    }
    if let Some(run) = limited {
        let n = run["sessions"].as_u64().unwrap_or(0);
        let c = &run["controller"];
        let ready = c["readySeconds"].as_f64().unwrap_or(f64::NAN);
        let died = c["lastMachineDiedSeconds"].as_f64().unwrap_or(f64::NAN);
        rows.push((
            format!("{n} sessions to Ready, Vast at 2 calls/s per endpoint"),
            format!("{ready:.1} s"),
            "<= 60 s",
            ready <= 60.0,
        ));
        rows.push((
            format!("last of {n} machines dead after deleting all, same limit"),
            format!("{died:.1} s"),
            "<= 60 s",
            died <= 60.0,
        ));
    }
    if let Some(run) = idle {
        let n = run["sessions"].as_u64().unwrap_or(0);
        let s = &run["controller"]["steady"];
        let rss = s["rssNowMiB"].as_f64().unwrap_or(f64::NAN);
        let logins = s["sshLogins"].as_u64().unwrap_or(u64::MAX);
        rows.push((format!("SSH logins, {n} Interactive without idle timeout"), logins.to_string(), "0", logins == 0));
        rows.push((
            format!("RSS, {n} sessions running (idle, steady)"),
            format!("{rss:.1} MiB"),
            "< 128 MiB",
            rss < 128.0,
        ));
    }
    rows.push((
        "ranking 100k offers (median of 21)".into(),
        format!("{ranking_ms:.2} ms"),
        "<= 10 ms",
        ranking_ms <= 10.0,
    ));
    println!();
    println!("{:<58} {:>16} {:>36}  verdict", "figure (this run)", "measured", "target");
    for (figure, measured, target, met) in rows {
        println!("{figure:<58} {measured:>16} {target:>36}  {}", if met { "met" } else { "MISSED" });
    }
}

fn write_results(runs: &[Value]) {
    let date = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let dir = format!("{}/bench/results", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let suffix = if marketplace_limits() { "-marketplace-limits" } else { "" };
    let path = format!("{dir}/{date}{suffix}.json");
    // Keep today's figures for sizes not measured in this invocation.
    let mut all: Vec<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["runs"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|old| runs.iter().all(|new| new["sessions"] != old["sessions"]))
        .collect();
    all.extend(runs.iter().cloned());
    all.sort_by_key(|r| r["sessions"].as_u64());
    let limits = if marketplace_limits() { "on" } else { "off" };
    let results = json!({"date": date, "machine": "2 cores", "concurrency": CONCURRENCY, "marketplaceLimits": limits, "runs": all});
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("figures written to {path}");
}

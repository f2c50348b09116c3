//! Two operator replicas against the real API server: only the lease holder
//! reconciles; when it is killed, the standby takes over within the lease
//! duration and carries on with the same sessions.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use gpu_shopper::crd::GpuSession;
use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::simulator;
use gpu_shopper::simulator::market::Market;
use support::*;

const LEASE_SECONDS: u64 = 4;

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get(name).await.ok()?.spec?.holder_identity
}

fn session(name: &str) -> GpuSession {
    serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": name},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]}},
    }))
    .unwrap()
}

async fn wait_ready(sessions: &Api<GpuSession>, name: &str) -> GpuSession {
    wait_for(&format!("{name} Ready"), Duration::from_secs(60), || async {
        let s = sessions.get(name).await.ok()?;
        find(&s.status.as_ref()?.conditions, types::READY).is_some_and(|c| c.status == "True").then_some(s)
    })
    .await
}

async fn fast_sim() -> simulator::SimulatorHandle {
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 100;
    simulator::start(market, 0).await.unwrap()
}

/// One operator replica named `identity` in `ns`, on the simulated marketplaces, with
/// a lease of `lease` and, when given, its own kubeconfig.
fn replica(
    ns: &str,
    sim: &simulator::SimulatorHandle,
    identity: &str,
    lease: &str,
    kubeconfig: Option<&std::path::Path>,
) -> ControllerProcess {
    let mut env: Vec<(&str, String)> = sim.env();
    env.push(("POD_NAME", identity.into()));
    env.push(("LEASE_DURATION", lease.into()));
    if let Some(path) = kubeconfig {
        env.push(("KUBECONFIG", path.to_string_lossy().into_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ControllerProcess::start_with_env_named(ns, identity, &env)
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "leader").await;
    let sim = fast_sim().await;
    let lease_duration = format!("{LEASE_SECONDS}s");
    let start = |identity: &'static str| replica(&ns, &sim, identity, &lease_duration, None);
    let mut a = start("replica-a");
    let mut b = start("replica-b");
    a.wait_ready().await;
    b.wait_ready().await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = format!("gpu-shopper-{ns}");
    let leader = wait_for("a leader", Duration::from_secs(30), || async { holder(&leases, &lease).await }).await;
    let (leader_proc, standby_proc) = if leader == "replica-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };

    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &session("first")).await.unwrap();
    let first = wait_ready(&sessions, "first").await;
    let first_instance = first.status.unwrap().instance_id;
    assert!(!standby_proc.log().contains("\"reconciled\""), "the standby reconciled while another replica led");

    // The leader dies; the standby takes the lease and carries on.
    leader_proc.kill();
    let killed = Instant::now();
    let new_leader = wait_for("the standby to take the lease", Duration::from_secs(LEASE_SECONDS * 5), || async {
        holder(&leases, &lease).await.filter(|h| *h != leader)
    })
    .await;
    let takeover = killed.elapsed();
    println!("takeover after {takeover:?} (lease duration {LEASE_SECONDS}s)");
    assert!(takeover <= Duration::from_secs(LEASE_SECONDS * 3), "took {takeover:?}");
    assert_ne!(new_leader, leader);

    sessions.create(&PostParams::default(), &session("second")).await.unwrap();
    wait_ready(&sessions, "second").await;
    let first = sessions.get("first").await.unwrap();
    assert_eq!(first.status.unwrap().instance_id, first_instance, "the running session was taken over, not re-rented");
    let live = sim.instances().into_iter().filter(|i| !i.destroyed).count();
    assert_eq!(live, 2, "one instance per session, none doubled");

    drop(a);
    drop(b);
    let survivor = start("replica-c");
    survivor.wait_ready().await;
    delete_all_and_check_nothing_bills(&sessions, &sim).await;
    drop(survivor);
    delete_namespace(&client, &ns).await;
}

async fn wait_to_lead(leases: &Api<Lease>, lease: &str, identity: &str) {
    wait_for(&format!("{identity} to lead"), Duration::from_secs(30), || async {
        holder(leases, lease).await.filter(|h| h == identity)
    })
    .await;
}

/// Deletes every session and checks that each one's machine was destroyed.
async fn delete_all_and_check_nothing_bills(sessions: &Api<GpuSession>, sim: &simulator::SimulatorHandle) {
    sessions.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    wait_for("sessions gone", Duration::from_secs(60), || async {
        sessions.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(sim.instances().iter().all(|i| i.destroyed));
}

/// The leader's own view of its lease: when it was last renewed.
async fn renewed_at(leases: &Api<Lease>, name: &str) -> jiff::Timestamp {
    leases.get(name).await.unwrap().spec.unwrap().renew_time.unwrap().0
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_leader_cut_off_from_the_api_server_stops_before_its_lease_can_expire() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "fenced").await;
    let sim = fast_sim().await;
    let proxy = support::proxy::CuttableProxy::start(&ns).await;
    let lease_duration = format!("{LEASE_SECONDS}s");
    let mut leader = replica(&ns, &sim, "replica-a", &lease_duration, Some(&proxy.kubeconfig));
    leader.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = format!("gpu-shopper-{ns}");
    wait_to_lead(&leases, &lease, "replica-a").await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &session("before")).await.unwrap();
    wait_ready(&sessions, "before").await;

    // A partition: the leader cannot renew. It must be gone before its lease can expire.
    proxy.cut();
    let cut = jiff::Timestamp::now();
    let expires = renewed_at(&leases, &lease).await + jiff::SignedDuration::from_secs(LEASE_SECONDS as i64);
    let status = leader.exited_within(Duration::from_secs(LEASE_SECONDS * 3)).await;
    let exited = jiff::Timestamp::now();
    assert!(status.is_some_and(|s| !s.success()), "the cut-off leader exits with an error: {status:?}");
    println!("cut at {cut}, exited at {exited}, the lease could expire at {expires}");
    assert!(exited < expires, "exited at {exited}, after the lease could expire at {expires}");
    let log = leader.log();
    assert!(log.contains("no longer sure to lead"), "the reason is logged");

    // A standby takes over only after that, and carries on.
    let standby = replica(&ns, &sim, "replica-b", &lease_duration, None);
    standby.wait_ready().await;
    sessions.create(&PostParams::default(), &session("after")).await.unwrap();
    wait_ready(&sessions, "after").await;
    delete_all_and_check_nothing_bills(&sessions, &sim).await;
    drop(standby);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_leader_stopped_by_sigterm_releases_its_lease() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "sigterm").await;
    let sim = fast_sim().await;
    // A long lease: only a release, not its expiry, frees it within the test's wait.
    let mut leader = replica(&ns, &sim, "replica-a", "60s", None);
    leader.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = format!("gpu-shopper-{ns}");
    wait_to_lead(&leases, &lease, "replica-a").await;
    // A standby told to stop stops at once: it holds nothing.
    let mut standby = replica(&ns, &sim, "replica-b", "60s", None);
    standby.wait_ready().await;
    standby.terminate();
    let status = standby.exited_within(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "a standby stops on SIGTERM: {status:?}");
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("replica-a"));

    leader.terminate();
    let status = leader.exited_within(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "a graceful stop exits 0: {status:?}");
    let held_by = holder(&leases, &lease).await;
    assert_eq!(held_by, None, "the lease is released, not left to expire");
    delete_namespace(&client, &ns).await;
}

/// Takes the lease `name` in this test process, as replica-a, through the API server
/// `kubeconfig` reaches; the gate is the one it closes when fenced.
async fn lead_in_process(
    ns: &str,
    name: &str,
    kubeconfig: &std::path::Path,
    seconds: u64,
) -> (gpu_shopper::controller::leader::Leadership, std::sync::Arc<gpu_shopper::provider::gate::Gate>) {
    use gpu_shopper::controller::leader::{self, Candidate};
    let gate = std::sync::Arc::new(gpu_shopper::provider::gate::Gate::default());
    let candidate = Candidate {
        lease_name: name.into(),
        namespace: ns.into(),
        identity: "replica-a".into(),
        duration: Duration::from_secs(seconds),
    };
    let metrics = std::sync::Arc::new(gpu_shopper::metrics::Metrics::default());
    let leadership = leader::acquire(config_from(kubeconfig).await, metrics, candidate, gate.clone()).await.unwrap();
    (leadership, gate)
}

/// The leader's runtime starved (every worker busy: thousands of reconciles on two
/// cores, a CPU limit throttling the pod) for longer than the lease: the lease is
/// held on its own thread, so it is renewed meanwhile and the leader is not fenced.
/// (`#[tokio::test]` runs on one thread: blocking it blocks this whole runtime.)
#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_leader_whose_runtime_is_starved_keeps_its_lease_and_is_not_fenced() {
    let client = client().await;
    let ns = namespace(&client, "starved").await;
    let (mut leadership, gate) = lead_in_process(&ns, "starved", &kubeconfig_path(), LEASE_SECONDS).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let before = renewed_at(&leases, "starved").await;

    std::thread::sleep(Duration::from_secs(LEASE_SECONDS + 2));

    let after = renewed_at(&leases, "starved").await;
    assert!(
        after.duration_since(before) >= jiff::SignedDuration::from_secs(1),
        "renewed while this runtime was blocked: {before} then {after}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(2), leadership.lost()).await;
    assert!(outcome.is_err(), "still leading, not fenced: {outcome:?}");
    assert!(!gate.is_closed(), "marketplace calls still allowed");
    assert_eq!(holder(&leases, "starved").await.as_deref(), Some("replica-a"));

    leadership.release().await;
    assert_eq!(holder(&leases, "starved").await, None, "released on a graceful stop");
    delete_namespace(&client, &ns).await;
}

/// An API server that answers every request a second late (as one saturated by
/// thousands of sessions does): the leader renews early enough, and accepts a
/// late answer, to see each renewal before its deadline, and is not fenced.
/// (Renewing at half the lease, as before, left a read-back one second to land:
/// a leader fenced itself within a few renewals.)
#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_leader_behind_a_slow_api_server_confirms_its_renewals_and_is_not_fenced() {
    const SLOW_LEASE_SECONDS: u64 = 8;
    let latency = Duration::from_secs(1);
    let client = client().await;
    let ns = namespace(&client, "slow").await;
    let proxy = support::proxy::CuttableProxy::start(&ns).await;
    let (mut leadership, gate) = lead_in_process(&ns, "slow", &proxy.kubeconfig, SLOW_LEASE_SECONDS).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let before = renewed_at(&leases, "slow").await;

    proxy.slow_down(latency);
    let outcome = tokio::time::timeout(Duration::from_secs(SLOW_LEASE_SECONDS * 3), leadership.lost()).await;
    assert!(outcome.is_err(), "still leading through slow answers, not fenced: {outcome:?}");
    assert!(!gate.is_closed(), "marketplace calls still allowed");
    let after = renewed_at(&leases, "slow").await;
    assert!(
        after.duration_since(before) >= jiff::SignedDuration::from_secs(SLOW_LEASE_SECONDS as i64),
        "renewed meanwhile"
    );

    proxy.slow_down(Duration::ZERO);
    leadership.release().await;
    delete_namespace(&client, &ns).await;
}

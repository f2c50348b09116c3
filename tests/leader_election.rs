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

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "leader").await;
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 100;
    let sim = simulator::start(market, 0).await.unwrap();
    let lease_duration = format!("{LEASE_SECONDS}s");
    let start = |identity: &'static str| {
        let mut env: Vec<(&str, String)> = sim.env();
        env.push(("POD_NAME", identity.into()));
        env.push(("LEASE_DURATION", lease_duration.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ControllerProcess::start_with_env_named(&ns, identity, &env)
    };
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
    sessions.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    wait_for("sessions gone", Duration::from_secs(60), || async {
        sessions.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(sim.instances().iter().all(|i| i.destroyed));
    drop(survivor);
    delete_namespace(&client, &ns).await;
}

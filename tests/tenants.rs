//! Many tenants on one operator: status is not an authority over machines, a
//! namespace taken out of the watch keeps its machines, and a namespace's cap
//! holds however many sessions it creates. The operator binary against a real
//! kube-apiserver and the simulated marketplaces.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use gpu_shopper::crd::SessionPhase;
use gpu_shopper::crd::conditions::{find, types};
use support::sessions::*;
use support::*;

fn on_vast() -> serde_json::Value {
    json!({"requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]}, "timeouts": {"sshReady": "20s"}})
}

fn reason(session: &gpu_shopper::crd::GpuSession) -> Option<String> {
    session.status.as_ref()?.reason.clone()
}

fn alive(h: &Harness, id: &str) -> bool {
    h.sim.instances().iter().any(|i| i.id == id && !i.destroyed)
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_status_naming_a_machine_that_is_not_the_sessions_destroys_nothing_and_is_dropped() {
    let mut h = Harness::new("not-owned", fast_market()).await;
    h.apply("victim", on_vast()).await;
    h.apply("tenant", on_vast()).await;
    let victim = h.wait_ready("victim").await;
    let tenant = h.wait_ready("tenant").await;
    let victim_id = status(&victim).instance_id.clone().unwrap();
    let own_id = status(&tenant).instance_id.clone().unwrap();

    // The tenant, who may patch its own session's status, points it at the victim's machine.
    let patch = json!({"status": {"instanceId": victim_id}});
    h.sessions.patch_status("tenant", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let dropped =
        h.wait_until("tenant", "InstanceNotOwned", |s| reason(s).as_deref() == Some("InstanceNotOwned")).await;
    assert_eq!(status(&dropped).phase, Some(SessionPhase::Failed));
    assert_eq!(status(&dropped).instance_id, None, "the foreign machine is forgotten");
    h.expect_event("InstanceNotOwned").await;
    // Its own machine, no longer recorded, is reaped as a stray; the victim's is untouched.
    wait_for("the tenant's own machine to be destroyed", WAIT, || async { (!alive(&h, &own_id)).then_some(()) }).await;
    h.delete_and_wait_gone("tenant").await;
    assert!(alive(&h, &victim_id), "the victim's machine still runs");
    let victim = h.sessions.get("victim").await.unwrap();
    assert_eq!(status(&victim).instance_id.as_deref(), Some(victim_id.as_str()));
    assert_eq!(find(&status(&victim).conditions, types::READY).unwrap().status, "True");

    // A restarted operator knows no machine yet: a status pointing at another
    // installation's machine is checked against the marketplace's label before the destroy.
    use gpu_shopper::provider::{CreateRequest, InstanceLabel, OfferQuery, Provider};
    let keys = h.sim.sim.world().market.keys.clone();
    let vast = gpu_shopper::provider::vastai::VastAi::new(
        &h.sim.vastai_url,
        secrecy::SecretString::from(keys.vastai),
        Default::default(),
    );
    let query = OfferQuery { requirements: Default::default(), limit: 10, disk_gb: 0, public_ports: false };
    let offer = vast.search_offers(&query).await.unwrap().remove(0);
    let foreign = vast
        .create_instance(&CreateRequest {
            offer,
            label: InstanceLabel::new("another-team", "some-uid"),
            ssh_public_key: String::new(),
            image: "x".into(),
            start_script: None,
            env: vec![],
            ports: vec![],
            disk_gb: 10,
            min_cuda_version: None,
        })
        .await
        .unwrap();
    h.controller.restart();
    h.controller.wait_ready().await;
    let patch = json!({"status": {"instanceId": foreign.id}});
    h.sessions.patch_status("victim", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    h.delete_and_wait_gone("victim").await;
    assert!(alive(&h, &foreign.id), "another installation's machine is never destroyed");
    assert!(!alive(&h, &victim_id), "the victim's own machine went with its session (it carries its label)");
    vast.destroy_instance(&foreign.id).await.unwrap();
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_namespace_taken_out_of_the_watch_keeps_its_machines_and_they_are_reported() {
    let mut h = Harness::new("unwatched", fast_market()).await;
    h.apply("s", on_vast()).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();

    // The operator is reinstalled watching only another namespace.
    let elsewhere = namespace(&h.client, "watched-now").await;
    let mut env: Vec<(&str, String)> = h.sim.env();
    env.extend([
        ("WATCH_NAMESPACE", elsewhere.clone()),
        ("ORPHAN_SWEEP_INTERVAL", "1s".into()),
        ("ORPHAN_GRACE_PERIOD", "1s".into()),
        ("STRAY_GRACE_PERIOD", "1s".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.controller.kill();
    let mut narrowed = ControllerProcess::start_with_env_named(&h.ns, "narrowed", &env);
    narrowed.wait_ready().await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(h.client.clone(), &elsewhere);
    wait_for("an UnwatchedInstance event", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("UnwatchedInstance")).then_some(())
    })
    .await;
    // Many sweeps and grace periods later, it still runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(alive(&h, &id), "a machine of a namespace out of the watch is never destroyed by the sweeper");
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", narrowed.http_port)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gpu_shopper_unwatched_instances{provider=\"vastai\"} 1"), "{metrics}");
    narrowed.kill();

    // Watched again, the session carries on with its machine.
    h.controller.restart();
    h.controller.wait_ready().await;
    let again = h.wait_ready("s").await;
    assert_eq!(status(&again).instance_id.as_deref(), Some(id.as_str()));
    delete_namespace(&h.client, &elsewhere).await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_namespaces_cap_refuses_rents_past_it_and_lets_them_through_when_there_is_room() {
    let h = Harness::new("capped", fast_market()).await;
    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    let annotate = |pairs: serde_json::Value| {
        let namespaces = namespaces.clone();
        let ns = h.ns.clone();
        async move {
            let patch = json!({"metadata": {"annotations": pairs}});
            namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    };
    annotate(json!({"gpushopper.dev/max-concurrent-sessions": "1"})).await;
    // Applied together: only one may take the namespace's one place.
    h.apply("a", on_vast()).await;
    h.apply("b", on_vast()).await;
    let capped = |s: &gpu_shopper::crd::GpuSession| reason(s).as_deref() == Some("NamespaceCapReached");
    let first = wait_for("one Ready and one capped", WAIT, || async {
        let a = h.sessions.get("a").await.ok()?;
        let b = h.sessions.get("b").await.ok()?;
        let ready = |s: &gpu_shopper::crd::GpuSession| {
            s.status.as_ref().and_then(|st| find(&st.conditions, types::READY)).is_some_and(|c| c.status == "True")
        };
        match (ready(&a), ready(&b), capped(&a), capped(&b)) {
            (true, false, _, true) => Some(("a", "b")),
            (false, true, true, _) => Some(("b", "a")),
            _ => None,
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.live_instances().len(), 1, "nothing rented past the cap");
    let waiting = h.sessions.get(first.1).await.unwrap();
    assert_eq!(status(&waiting).phase, Some(SessionPhase::Pending));
    assert!(status(&waiting).message.as_deref().unwrap().contains("max-concurrent-sessions"));
    h.expect_event("NamespaceCapReached").await;
    h.delete_and_wait_gone(first.0).await;
    let second = h.wait_ready(first.1).await;

    // A money cap: the running machine's rate fills it, so the next session waits.
    let price = status(&second).price_per_hour.unwrap();
    annotate(json!({"gpushopper.dev/max-concurrent-sessions": null, "gpushopper.dev/max-usd-per-day": format!("{:.4}", price * 24.0 + 0.001)}))
        .await;
    h.apply("c", on_vast()).await;
    let refused = h.wait_until("c", "NamespaceCapReached", capped).await;
    assert!(status(&refused).message.as_deref().unwrap().contains("/day"), "{:?}", status(&refused).message);
    assert_eq!(h.live_instances().len(), 1);
    let metrics = h.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("gpu_shopper_namespace_cap_refusals_total{{namespace=\"{}\"}}", h.ns))),
        "{metrics}"
    );
    h.delete_and_wait_gone(first.1).await;
    h.wait_ready("c").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_machine_whose_key_secret_is_taken_over_is_still_held_to_its_lifetime() {
    use k8s_openapi::api::core::v1::Secret;
    let h = Harness::new("limits-first", fast_market()).await;
    let mut spec = on_vast();
    merge(&mut spec, json!({"lifetime": {"maxDuration": "12s"}}));
    h.apply("s", spec).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();
    // The tenant swaps the key Secret for one the session does not own.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    secrets.delete("s-ssh", &Default::default()).await.unwrap();
    let theirs: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s-ssh"}, "stringData": {"x": "y"}})).unwrap();
    secrets.create(&Default::default(), &theirs).await.unwrap();
    let ended = h.wait_phase("s", SessionPhase::Succeeded).await;
    assert_eq!(reason(&ended).as_deref(), Some("Expired"), "{:?}", status(&ended).message);
    assert!(!alive(&h, &id), "the machine was destroyed at its lifetime");
    assert!(status(&ended).released_at.is_some());
    assert!(secrets.get("s-ssh").await.unwrap().owner_references().is_empty(), "their Secret was not taken");
    secrets.delete("s-ssh", &Default::default()).await.unwrap();
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn an_end_whose_status_was_lost_after_its_destroy_is_finished_as_what_it_was() {
    let h = Harness::new("lost-end", fast_market()).await;
    h.apply("s", on_vast()).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();
    // As if the operator stored its end, destroyed the machine and lost the write after:
    // the intent is in status, the machine gone.
    assert!(h.sim.befall(&id, gpu_shopper::simulator::world::Fate::Vanish));
    let ending = json!({"status": {"ending": {"instanceId": id, "phase": "Succeeded", "reason": "Expired", "message": "the lifetime ended"}}});
    h.sessions.patch_status("s", &PatchParams::default(), &Patch::Merge(&ending)).await.unwrap();
    let ended = h
        .wait_until("s", "an end", |s| {
            matches!(s.status.as_ref().and_then(|st| st.phase), Some(SessionPhase::Succeeded | SessionPhase::Failed))
        })
        .await;
    assert_eq!(status(&ended).phase, Some(SessionPhase::Succeeded));
    assert_eq!(reason(&ended).as_deref(), Some("Expired"), "never read as a lost machine");
    assert!(status(&ended).ending.is_none());
    assert!(h.events("InstanceLost").await.is_empty());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn what_a_tenant_creates_does_not_grow_the_operators_memory() {
    use k8s_openapi::api::core::v1::Secret;
    let h = Harness::new("big-objects", fast_market()).await;
    // Lists and strings are bounded at apply.
    let too_many: Vec<serde_json::Value> = (0..129).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect();
    let mut spec = on_vast();
    merge(&mut spec, json!({"env": too_many}));
    let session: gpu_shopper::crd::GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "big"}, "spec": spec,
    }))
    .unwrap();
    let refused = h.sessions.create(&Default::default(), &session).await.unwrap_err();
    assert!(refused.to_string().contains("must have at most 128 items"), "{refused}");
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    let pid = h.controller.pid().unwrap();
    let before = rss(pid);
    // Forty 900 KiB Secrets carrying the label the operator's key Secrets carry.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let blob = "x".repeat(900 << 10);
    for i in 0..40 {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("bait-{i}"), "labels": {"app.kubernetes.io/managed-by": "gpu-shopper"}},
            "stringData": {"blob": blob},
        }))
        .unwrap();
        secrets.create(&Default::default(), &secret).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(pid);
    println!("operator RSS before {before} MiB, after 35 MiB of labelled Secrets {after} MiB");
    assert!(after < before + 18, "the Secrets were cached: {before} -> {after} MiB");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_hundred_filters_in_one_namespace_do_not_hold_back_anothers_destroy() {
    use gpu_shopper::crd::GpuOfferFilter;
    let mut h = Harness::new("fair-share", fast_market()).await;
    let noisy = namespace(&h.client, "noisy").await;
    let mut env: Vec<(&str, String)> = h.sim.env();
    env.extend([
        ("WATCH_NAMESPACE", format!("{},{noisy}", h.ns)),
        ("ORPHAN_SWEEP_INTERVAL", "1s".into()),
        ("STRAY_GRACE_PERIOD", "2s".into()),
        ("MACHINE_CHECK_INTERVAL", "1s".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.controller.kill();
    h.controller = ControllerProcess::start_with_env_named(&h.ns, "two-namespaces", &env);
    h.controller.wait_ready().await;
    h.apply("s", on_vast()).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();

    // The other tenant: a hundred filters, each a search of its own on the same marketplace.
    let filters: Api<GpuOfferFilter> = Api::namespaced(h.client.clone(), &noisy);
    for i in 0..100 {
        let filter: GpuOfferFilter = serde_json::from_value(json!({
            "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuOfferFilter", "metadata": {"name": format!("f{i}")},
            "spec": {"gpuModels": ["RTX 4090"], "providers": ["vastai"], "maxPricePerHour": 1.0 + f64::from(i) / 100.0},
        }))
        .unwrap();
        filters.create(&Default::default(), &filter).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // their searches are queued now
    let deleted = std::time::Instant::now();
    h.sessions.delete("s", &Default::default()).await.unwrap();
    wait_for("the destroy", WAIT, || async { (!alive(&h, &id)).then_some(()) }).await;
    let took = deleted.elapsed();
    println!("destroy sent and confirmed {took:?} after the delete, behind a hundred filters' searches");
    // Destroys go before every search: the wait is the destroy's own calls, not the queue.
    assert!(took < Duration::from_secs(15), "the destroy waited {took:?}");
    delete_namespace(&h.client, &noisy).await;
    h.finish().await;
}

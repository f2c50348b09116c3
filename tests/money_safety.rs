//! Money safety under the faults a real marketplace has: a hung API, a
//! machine that dies after Ready, a destroy refused inside a 200, a create
//! that lands late, a listing that fails, limits reached before Ready, a
//! machine that never stops talking, a Secret that is not ours. The operator
//! binary against a real kube-apiserver and the simulated marketplaces.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{ProviderName, SessionPhase};
use gpu_shopper::simulator::world::{Fate, Faults};
use support::sessions::*;
use support::*;

fn on(provider: &str) -> serde_json::Value {
    json!({"requirements": {"gpuModels": ["RTX 4090"], "providers": [provider]}, "timeouts": {"sshReady": "20s"}})
}

fn condition_reason(session: &gpu_shopper::crd::GpuSession, type_: &str) -> Option<String> {
    find(&session.status.as_ref()?.conditions, type_).map(|c| c.reason.clone())
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_hung_marketplace_does_not_stall_a_session_another_can_serve() {
    let h = Harness::with_env("hung", fast_market(), &[("PROVIDER_CALL_TIMEOUT", "2s")]).await;
    // RunPod answers nothing for a minute, every call, listings included.
    h.sim.set_faults(ProviderName::Runpod, Faults { hangs: 100_000, hang_ms: 60_000, ..Default::default() });
    h.apply("s", json!({"requirements": {"gpuModels": ["RTX 4090"]}, "timeouts": {"sshReady": "20s"}})).await;
    let ready = h.wait_ready("s").await;
    assert_ne!(status(&ready).provider, Some(ProviderName::Runpod));
    h.sim.set_faults(ProviderName::Runpod, Faults::default());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn sessions_waiting_on_a_hung_marketplace_do_not_take_every_reconcile_slot() {
    // Two reconciles at a time, and four sessions whose machines are on RunPod.
    let env = [("PROVIDER_CALL_TIMEOUT", "3s"), ("MAX_CONCURRENT_RECONCILES", "2")];
    let h = Harness::with_env("hungslots", fast_market(), &env).await;
    let doomed = ["r0", "r1", "r2", "r3"];
    for name in doomed {
        h.apply(name, on("runpod")).await;
    }
    for name in doomed {
        h.wait_ready(name).await;
    }
    // RunPod stops answering; the four are deleted, and each deletion needs RunPod to
    // destroy and confirm. Every lookup there would wait out its timeout and retries.
    h.sim.set_faults(ProviderName::Runpod, Faults { hangs: 100_000, hang_ms: 60_000, ..Default::default() });
    for name in doomed {
        h.sessions.delete(name, &Default::default()).await.unwrap();
    }
    // A session Vast can serve still gets its turns.
    let started = std::time::Instant::now();
    h.apply("v", on("vastai")).await;
    h.wait_ready("v").await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "a session on a healthy marketplace waited {waited:?} for a reconcile slot"
    );
    // The deletions say why they wait, and nothing of theirs is forgotten.
    let terminating = h.sessions.get("r0").await.unwrap();
    assert_eq!(status(&terminating).phase, Some(SessionPhase::Terminating));
    assert_eq!(h.live_instances().len(), 5, "RunPod's four still run until it answers, and Vast's");
    h.sim.set_faults(ProviderName::Runpod, Faults::default());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_machine_destroyed_behind_the_operators_back_fails_the_session_and_its_cost_stops() {
    let h = Harness::new("vanish", fast_market()).await;
    h.apply("s", on("vastai")).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();
    assert!(h.sim.befall(&id, Fate::Vanish));
    let failed = h.wait_phase("s", SessionPhase::Failed).await;
    let st = status(&failed);
    assert_eq!(st.reason.as_deref(), Some("InstanceLost"), "{:?}", st.message);
    assert_eq!(condition_reason(&failed, types::INSTANCE_RUNNING).as_deref(), Some("InstanceLost"));
    assert_eq!(condition_reason(&failed, types::READY).as_deref(), Some("InstanceLost"));
    // Cost stops at the last time the machine was seen alive: never above the marketplace's bill.
    let bill: f64 = h.sim.instances().iter().filter(|i| i.id == id).map(|i| i.cost_usd).sum();
    let shown = st.accrued_cost_usd.unwrap();
    assert!(shown <= bill + 0.0001, "status says ${shown}, the marketplace billed ${bill}");
    h.expect_event("InstanceLost").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_lost_machine_is_replaced_when_on_instance_loss_says_replace() {
    let h = Harness::new("replace", fast_market()).await;
    let mut spec = on("vastai");
    merge(&mut spec, json!({"onInstanceLoss": "Replace"}));
    h.apply("s", spec).await;
    let first = h.wait_ready("s").await;
    let first_id = status(&first).instance_id.clone().unwrap();
    // It runs a few seconds, so what it cost is measurable at the status's cent-hundredths.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.sim.befall(&first_id, Fate::Vanish));
    let again = h
        .wait_until("s", "Ready on another machine", |s| {
            let st = s.status.as_ref();
            st.and_then(|st| st.instance_id.clone()).is_some_and(|id| id != first_id)
                && st.and_then(|st| find(&st.conditions, types::READY)).is_some_and(|c| c.status == "True")
        })
        .await;
    let st = status(&again);
    let lost = st.attempts.iter().find(|a| a.reason == "InstanceLost").expect("the loss is an attempt");
    assert!(lost.cost_usd.is_some_and(|c| c > 0.0), "the lost machine's cost is kept: {lost:?}");
    assert!(st.ssh.as_ref().and_then(|s| s.host_key_fingerprint.as_ref()).is_some(), "the new host key is pinned");
    assert_eq!(h.live_instances(), vec![st.instance_id.clone().unwrap()]);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_stopped_machine_is_reported_and_destroyed_because_it_still_bills() {
    let h = Harness::new("stopped", fast_market()).await;
    h.apply("s", on("tensordock")).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();
    assert!(h.sim.befall(&id, Fate::Stop));
    let failed = h.wait_phase("s", SessionPhase::Failed).await;
    assert_eq!(status(&failed).reason.as_deref(), Some("Stopped"));
    assert!(h.live_instances().is_empty(), "the stopped machine was destroyed");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_destroy_refused_inside_a_success_keeps_the_finalizer_until_the_machine_is_really_gone() {
    let h = Harness::new("refused", fast_market()).await;
    let providers = [ProviderName::Vastai, ProviderName::Tensordock, ProviderName::Runpod];
    for provider in providers {
        h.apply(provider.as_str(), on(provider.as_str())).await;
    }
    for provider in providers {
        h.wait_ready(provider.as_str()).await;
        h.sim.set_faults(provider, Faults { destroy_refusals: 100_000, ..Default::default() });
        h.sessions.delete(provider.as_str(), &Default::default()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for provider in providers {
        let session = h.sessions.get_opt(provider.as_str()).await.unwrap();
        assert!(session.is_some(), "{provider}: the finalizer went while the machine still exists");
    }
    assert_eq!(h.live_instances().len(), 3, "every refused machine is still there");
    h.expect_event("DestroyFailed").await;
    for provider in providers {
        h.sim.set_faults(provider, Faults::default());
    }
    for provider in providers {
        wait_for(&format!("{provider} to be gone"), WAIT, || async {
            h.sessions.get_opt(provider.as_str()).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    assert!(h.live_instances().is_empty());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_create_that_lands_late_is_destroyed_as_a_stray_not_kept_beside_the_session() {
    let h = Harness::new("late", fast_market()).await;
    // The first create's answer is lost and the machine shows up in listings only 4 s later.
    let late = Faults { lose_create_responses: 1, late_creates: 1, late_by_ms: 4_000, ..Default::default() };
    h.sim.set_faults(ProviderName::Vastai, late);
    h.apply("s", on("vastai")).await;
    let ready = h.wait_ready("s").await;
    let kept = status(&ready).instance_id.clone().unwrap();
    h.sim.set_faults(ProviderName::Vastai, Faults::default());
    wait_for("the late machine to be destroyed as a stray", WAIT, || async {
        (h.live_instances() == vec![kept.clone()] && h.sim.instances().len() == 2).then_some(())
    })
    .await;
    // The Event follows the destroy once the marketplace confirms the machine gone.
    h.expect_event("StrayDestroyed").await;
    let still = h.sessions.get("s").await.unwrap();
    assert_eq!(status(&still).instance_id.as_deref(), Some(kept.as_str()), "the session kept its own machine");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_failing_listing_never_reads_as_nothing_there() {
    let h = Harness::new("listing", fast_market()).await;
    // A create whose answer is lost, and listings that fail in every way for a while.
    let faults =
        Faults { lose_create_responses: 1, list_auth_failures: 3, unreadable_listings: 3, ..Default::default() };
    h.sim.set_faults(ProviderName::Vastai, faults);
    h.apply("s", on("vastai")).await;
    h.wait_ready("s").await;
    assert_eq!(h.sim.instances().len(), 1, "no second machine was rented while listings failed");
    h.expect_event("Adopted").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn the_hard_maximum_and_the_budget_hold_before_ready() {
    let h = Harness::with_env("limits", fast_market(), &[("MAX_SESSION_DURATION", "8s")]).await;
    // Machines that never answer SSH: the stage timeout (60 s) would bill far longer than the limits.
    h.sim.set_faults(ProviderName::Vastai, Faults { unreachable_instances: true, ..Default::default() });
    let slow = json!({"requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]}, "timeouts": {"instanceRunning": "60s"}});
    h.apply("max", slow.clone()).await;
    let mut budgeted = slow;
    merge(&mut budgeted, json!({"budget": {"maxCostUsd": 0.0002}}));
    h.apply("budget", budgeted).await;
    let over_budget = h.wait_phase("budget", SessionPhase::Failed).await;
    assert_eq!(status(&over_budget).reason.as_deref(), Some("BudgetReached"), "{:?}", status(&over_budget).message);
    assert!(status(&over_budget).accrued_cost_usd.unwrap() >= 0.0002);
    let too_long = h.wait_phase("max", SessionPhase::Failed).await;
    assert_eq!(status(&too_long).reason.as_deref(), Some("MaxDurationReached"), "{:?}", status(&too_long).message);
    assert!(h.live_instances().is_empty(), "both machines were destroyed");
    h.finish().await;
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_machine_that_never_stops_talking_does_not_exhaust_the_operator() {
    let h = Harness::new("talk", fast_market()).await;
    // Every command on the machine prints 96 MiB after its real output.
    h.sim.set_faults(ProviderName::Vastai, Faults { endless_output_bytes: 96 << 20, ..Default::default() });
    let mut spec = on("vastai");
    merge(&mut spec, json!({"timeouts": {"sshReady": "60s", "cudaVerified": "60s"}}));
    h.apply("s", spec).await;
    h.wait_ready("s").await;
    let peak = peak_rss_mib(h.controller.pid().unwrap());
    assert!(peak < 150, "the operator's peak memory grew to {peak} MiB reading a machine's output");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_key_secret_owned_by_something_else_is_never_used_or_overwritten() {
    let h = Harness::new("secret", fast_market()).await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let theirs = Secret {
        metadata: kube::api::ObjectMeta { name: Some("s-ssh".into()), ..Default::default() },
        data: Some(BTreeMap::from([("ssh-privatekey".to_string(), ByteString(b"someone else's".to_vec()))])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &theirs).await.unwrap();
    h.apply("s", on("vastai")).await;
    let blocked = h
        .wait_until("s", "SecretConflict", |s| {
            s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("SecretConflict")
        })
        .await;
    assert_eq!(condition_reason(&blocked, types::READY).as_deref(), Some("SecretConflict"));
    let after = secrets.get("s-ssh").await.unwrap();
    assert_eq!(after.data, theirs.data, "the Secret was left as it was");
    assert!(after.owner_references().is_empty());
    assert!(h.sim.instances().is_empty(), "nothing was rented");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn numbers_past_the_caps_are_refused_at_apply_and_any_accepted_one_is_handled() {
    let h = Harness::new("caps", fast_market()).await;
    let too_big = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "big"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"]}, "budget": {"maxCostUsd": 2_000_000.0}},
    }))
    .unwrap();
    let refused = h.sessions.create(&PostParams::default(), &too_big).await.unwrap_err();
    assert!(refused.to_string().contains("at most 1000000"), "{refused}");
    // The largest values the schema accepts: the controller neither panics nor overflows.
    let mut spec = on("vastai");
    merge(
        &mut spec,
        json!({"budget": {"maxCostUsd": 1_000_000.0}, "lifetime": {"maxDuration": "99999999999999999999h", "idleTimeout": "99999999999999999999h"}}),
    );
    h.apply("huge", spec).await;
    let ready = h.wait_ready("huge").await;
    assert!(status(&ready).expires_at.is_some());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_key_secret_deleted_while_the_machine_runs_is_reported_and_healed_where_the_marketplace_can() {
    let h = Harness::new("rekeyed", fast_market()).await;
    h.apply("s", on("vastai")).await;
    let ready = h.wait_ready("s").await;
    let id = status(&ready).instance_id.clone().unwrap();
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let old = secrets.get("s-ssh").await.unwrap();
    secrets.delete("s-ssh", &Default::default()).await.unwrap();
    wait_for("a KeySecretRecreated event", WAIT, || async {
        (!h.events("KeySecretRecreated").await.is_empty()).then_some(())
    })
    .await;
    let new = secrets.get("s-ssh").await.unwrap();
    let public = |s: &Secret| String::from_utf8_lossy(&s.data.as_ref().unwrap()["ssh-publickey"].0).trim().to_string();
    assert_ne!(public(&new), public(&old), "a fresh pair was stored");
    let on_machine = h.sim.sim.world().find(ProviderName::Vastai, &id).unwrap().authorized_keys();
    assert!(on_machine.iter().any(|k| k.trim() == public(&new)), "Vast attached the new key: {on_machine:?}");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_session_deleted_while_its_lost_create_is_still_landing_goes_only_after_that_machine_is_destroyed() {
    // A machine may land up to the stray grace late; this one lands 3 s late, within 5 s.
    let h = Harness::with_env("landing", fast_market(), &[("STRAY_GRACE_PERIOD", "5s")]).await;
    // The create's answer is lost and the machine appears in listings only 3 s later.
    let late = Faults { lose_create_responses: 1, late_creates: 1, late_by_ms: 3_000, ..Default::default() };
    h.sim.set_faults(ProviderName::Vastai, late);
    h.apply("s", on("vastai")).await;
    wait_for("the first create to be sent", WAIT, || async { (!h.sim.instances().is_empty()).then_some(()) }).await;
    h.sessions.delete("s", &Default::default()).await.unwrap();
    wait_for("the session to be gone", WAIT, || async {
        h.sessions.get_opt("s").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        h.live_instances().is_empty(),
        "the session went while a machine of it still bills: {:?}",
        h.live_instances()
    );
    h.finish().await;
}

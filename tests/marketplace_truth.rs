//! What the real marketplaces do that cost money on day one, end to end: the
//! operator against a real API server and simulators that follow the
//! published evidence (docs/providers.md).

mod support;

use std::time::Duration;

use serde_json::json;

use gpu_shopper::crd::ProviderName;
use gpu_shopper::simulator::world::Faults;
use support::sessions::*;
use support::wait_for;

fn on(provider: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec =
        json!({"requirements": {"gpuModels": ["RTX 4090"], "providers": [provider]}, "timeouts": {"sshReady": "30s"}});
    merge(&mut spec, extra);
    spec
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_tensordock_vm_whose_driver_cloud_init_repairs_over_time_and_a_reboot_is_verified_not_failed() {
    let h = Harness::new("td-repair", fast_market()).await;
    h.sim.set_faults(
        ProviderName::Tensordock,
        Faults {
            broken_drivers: true,
            driver_repair_ms: 4000,
            driver_repair_reboots: 1,
            reboot_ms: 1500,
            ..Default::default()
        },
    );
    h.apply("repaired", on("tensordock", json!({}))).await;
    let ready = h.wait_ready("repaired").await;
    let st = status(&ready);
    assert!(st.attempts.is_empty(), "the host was not failed while its driver was repaired: {:?}", st.attempts);
    assert_eq!(st.verified.as_ref().map(|v| v.gpu_count), Some(1));
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_tensordock_vm_whose_driver_never_works_and_nothing_repairs_it_fails_at_once() {
    let h = Harness::new("td-broken", fast_market()).await;
    h.sim.set_faults(ProviderName::Tensordock, Faults { driver_missing: true, ..Default::default() });
    h.apply("broken", on("tensordock", json!({"maxAttempts": 1}))).await;
    let failed = h.wait_phase("broken", gpu_shopper::crd::SessionPhase::Failed).await;
    let st = status(&failed);
    assert_eq!(st.attempts.first().map(|a| a.reason.as_str()), Some("DriverMissing"), "{:?}", st.attempts);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_runpod_pod_placed_above_the_max_price_is_destroyed_at_once_and_the_next_offer_tried() {
    let h = Harness::new("rp-dearer", fast_market()).await;
    // The 4090 is quoted at $0.44/h; the pod lands on a machine 50% dearer.
    h.sim.set_faults(ProviderName::Runpod, Faults { placement_markup_percent: 50, ..Default::default() });
    h.apply("capped", on("runpod", json!({"requirements": {"maxPricePerHour": 0.5}}))).await;
    let pending = h
        .wait_until("capped", "the dear pod tried and destroyed", |s| {
            s.status.as_ref().is_some_and(|st| st.attempts.iter().any(|a| a.reason == "PriceAboveLimit"))
        })
        .await;
    let attempt = status(&pending).attempts.iter().find(|a| a.reason == "PriceAboveLimit").unwrap().clone();
    assert!(attempt.message.contains("0.66"), "the real price is named: {}", attempt.message);
    wait_for("the dear pod to be destroyed", WAIT, || async { h.live_instances().is_empty().then_some(()) }).await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_runpod_pod_dearer_than_quoted_within_the_max_is_kept_at_its_real_price() {
    let h = Harness::new("rp-quote", fast_market()).await;
    h.sim.set_faults(ProviderName::Runpod, Faults { placement_markup_percent: 50, ..Default::default() });
    h.apply("kept", on("runpod", json!({}))).await;
    let ready = h.wait_ready("kept").await;
    let price = status(&ready).price_per_hour.unwrap();
    assert!((price - 0.66).abs() < 1e-6, "the price counted is the pod's, not the quote: {price}");
    h.expect_event("PricedAboveQuote").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn runpod_account_keys_do_not_take_the_place_of_the_sessions_key() {
    let h = Harness::new("rp-keys", fast_market()).await;
    let foreign = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO9dlX1b9mZy8l2mJ9Y4yPqH0n8o0aVQeWg8nQz6C0cT someone@laptop";
    h.sim.set_faults(ProviderName::Runpod, Faults { account_keys: vec![foreign.into()], ..Default::default() });
    h.apply("mine", on("runpod", json!({}))).await;
    let ready = h.wait_ready("mine").await;
    let id = status(&ready).instance_id.clone().unwrap();
    let keys = h.sim.sim.world().find(ProviderName::Runpod, &id).unwrap().authorized_keys();
    assert!(!keys.iter().any(|k| k.contains("someone@laptop")), "the account's key is not on the pod: {keys:?}");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_taken_vast_ask_answered_as_the_docs_show_moves_to_the_next_offer() {
    let h = Harness::new("vast-ask", fast_market()).await;
    h.sim.set_faults(ProviderName::Vastai, Faults { snatched_offers: vec!["4101".into()], ..Default::default() });
    h.apply("s", rtx_4090(json!({}))).await;
    let ready = h.wait_ready("s").await;
    let attempt = &status(&ready).attempts[0];
    assert_eq!(attempt.reason, "OfferGone");
    assert!(attempt.message.contains("no_such_ask"), "{}", attempt.message);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_session_deleted_while_tensordock_is_still_deleting_its_vm_keeps_its_finalizer_until_the_vm_is_gone() {
    let h = Harness::new("td-deleting", fast_market()).await;
    h.apply("slow", on("tensordock", json!({}))).await;
    h.wait_ready("slow").await;
    h.sim.set_faults(ProviderName::Tensordock, Faults { slow_deletes_ms: 3000, ..Default::default() });
    let deleted = std::time::Instant::now();
    h.delete_and_wait_gone("slow").await;
    assert!(deleted.elapsed() >= Duration::from_millis(2500), "gone only once the VM was: {:?}", deleted.elapsed());
    assert!(h.live_instances().is_empty());
    h.finish().await;
}

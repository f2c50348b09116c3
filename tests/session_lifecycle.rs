//! The GpuSession lifecycle end to end: the operator binary against a real
//! kube-apiserver and the simulated marketplaces. Every test ends by asking
//! the simulator that no instance of this test is still alive.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{ProviderName, SessionPhase};
use gpu_shopper::simulator::world::Faults;
use support::sessions::*;
use support::*;

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn interactive_session_reaches_ready_and_its_secret_key_logs_in() {
    let h = Harness::new("interactive", fast_market()).await;
    h.apply("box", rtx_4090(json!({"consumer": "team-vision"}))).await;
    let ready = h.wait_ready("box").await;
    // SSHReady, CUDAVerified and WorkloadReady share one login (each is a key exchange on both ends).
    let logins = h.sim.sim.world().ssh_logins.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(logins, 1, "the machine was proven with one SSH login");
    let st = status(&ready);
    assert_eq!(st.phase, Some(SessionPhase::Running));
    assert_eq!(st.provider, Some(ProviderName::Vastai));
    assert_eq!(st.gpu.as_deref(), Some("1x RTX 4090"));
    assert_eq!(st.price_per_hour, Some(0.29), "the cheapest matching offer");
    assert!(st.selection.as_deref().unwrap().starts_with("cheapest of"), "{:?}", st.selection);
    for stage in [types::INSTANCE_RUNNING, types::SSH_READY, types::CUDA_VERIFIED, types::WORKLOAD_READY] {
        assert_eq!(find(&st.conditions, stage).unwrap().status, "True", "{stage}");
    }
    let verified = st.verified.clone().unwrap();
    assert_eq!(verified.cuda_version, "12.8", "the real CUDA, not the advertised 12.9");
    let ssh = st.ssh.clone().unwrap();
    assert!(ssh.host_key_fingerprint.as_deref().unwrap().starts_with("SHA256:"));
    assert!(st.expires_at.is_some() && st.started_at.is_some());

    // The key in the Secret logs in, as a user would with `gpu-shopper ssh`.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let secret = secrets.get("box-ssh").await.unwrap();
    assert_eq!(secret.owner_references()[0].name, "box");
    let data = secret.data.unwrap();
    let private = String::from_utf8(data["ssh-privatekey"].0.clone()).unwrap();
    assert_eq!(String::from_utf8(data["port"].0.clone()).unwrap(), ssh.port.to_string());
    let out = run_with(&ssh, &private, "nvidia-smi").await.unwrap();
    assert!(out.stdout.contains("CUDA Version: 12.8"));
    h.expect_event("Rented").await;
    assert_eq!(h.live_instances().len(), 1);

    // Observability, and no key material anywhere but the Secret.
    let metrics = h.metrics().await;
    for expected in [
        "gpu_shopper_sessions_active{phase=\"Running\",provider=\"vastai\"} 1",
        "gpu_sessions_active{phase=\"Running\",provider=\"vastai\"} 1",
        "gpu_shopper_session_time_to_ready_seconds_count 1",
        "gpu_shopper_provider_call_duration_seconds_count{provider=\"vastai\",operation=\"create\"} 1",
        "gpu_shopper_accrued_cost_usd",
        "gpu_shopper_leader 1",
        "gpu_shopper_build{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(expected), "{expected} in {metrics}");
    }
    let key_body: String = private.lines().nth(1).unwrap().to_string();
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(h.client.clone(), &h.ns).list(&ListParams::default()).await.unwrap().items,
    )
    .unwrap();
    let status_text = serde_json::to_string(&ready.status).unwrap();
    for (place, text) in
        [("events", events), ("status", status_text), ("controller log", h.controller.log()), ("metrics", metrics)]
    {
        assert!(!text.contains(&key_body), "the private key leaked into the {place}");
    }

    h.delete_and_wait_gone("box").await;
    assert!(h.live_instances().is_empty(), "deleting the session destroyed its instance");
    h.finish().await;
}

/// The Secret's key pair, as a user reads it.
async fn secret_keys(h: &Harness, name: &str) -> (String, String, Vec<String>) {
    let secret = Api::<Secret>::namespaced(h.client.clone(), &h.ns).get(&format!("{name}-ssh")).await.unwrap();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    (text("ssh-privatekey"), text("ssh-publickey"), data.keys().cloned().collect())
}

/// Logs in to the session's machine with `private`, checking the pinned host key, and runs `command`.
async fn run_with(
    ssh: &gpu_shopper::crd::session::SshEndpoint,
    private: &str,
    command: &str,
) -> Result<gpu_shopper::probe::ssh::CommandOutput, String> {
    let key = gpu_shopper::keys::parse_private(&secrecy::SecretString::from(private.to_string())).unwrap();
    let target = gpu_shopper::probe::ssh::Target {
        host: &ssh.host,
        port: ssh.port,
        user: &ssh.user,
        pinned_fingerprint: ssh.host_key_fingerprint.as_deref(),
    };
    gpu_shopper::probe::ssh::run(&target, Arc::new(key), command, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())
}

async fn login_with(ssh: &gpu_shopper::crd::session::SshEndpoint, private: &str) -> Result<(), String> {
    run_with(ssh, private, "true").await.map(|_| ())
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn the_rekey_annotation_puts_a_fresh_key_on_the_machine_and_the_old_one_stops_working() {
    let h = Harness::new("rekey", fast_market()).await;
    h.apply("box", rtx_4090(json!({}))).await;
    let ready = h.wait_ready("box").await;
    let ssh = status(&ready).ssh.clone().unwrap();
    let (first_private, _, _) = secret_keys(&h, "box").await;
    login_with(&ssh, &first_private).await.expect("the first key logs in");

    let mut seen_private = vec![first_private];
    for request in ["2026-11-23", "again"] {
        let annotate =
            json!({"metadata": {"annotations": {gpu_shopper::controller::session::REKEY_ANNOTATION: request}}});
        h.sessions.patch("box", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
        let rekeyed = h
            .wait_until("box", &format!("re-key {request}"), |s| {
                s.status.as_ref().and_then(|st| st.rekey.as_ref()).is_some_and(|r| r.done && r.request == request)
            })
            .await;
        let (private, public, keys) = secret_keys(&h, "box").await;
        assert!(!seen_private.contains(&private), "the Secret holds a new private key after {request}");
        assert!(!keys.iter().any(|k| k.ends_with("-next")), "no half-done re-key left in the Secret: {keys:?}");
        let fingerprint = gpu_shopper::keys::fingerprint(&gpu_shopper::keys::parse_public(&public).unwrap());
        assert_eq!(status(&rekeyed).rekey.as_ref().unwrap().key_fingerprint.as_deref(), Some(fingerprint.as_str()));
        login_with(&ssh, &private).await.expect("the new key logs in");
        let old = seen_private.last().unwrap();
        let refused = login_with(&ssh, old).await.expect_err("the old key must no longer log in");
        assert!(refused.contains("refused the session's key"), "{refused}");
        assert_eq!(status(&rekeyed).phase, Some(SessionPhase::Running), "re-keying does not interrupt the session");
        seen_private.push(private);
    }
    // Events follow the status write that they describe; a repeated reason is one Event with a series count.
    wait_for("two Rekeyed events", WAIT, || async {
        let count: i32 =
            h.events("Rekeyed").await.iter().map(|e| e.series.as_ref().and_then(|s| s.count).unwrap_or(1)).sum();
        (count == 2).then_some(())
    })
    .await;
    let machine = h.sim.sim.world().instances.iter().find(|i| i.destroyed.is_none()).unwrap().authorized_keys();
    assert_eq!(machine.len(), 1, "only the newest key is on the machine: {machine:?}");
    assert_eq!(h.live_instances().len(), 1, "the same machine, not a new one");
    let log = h.controller.log();
    for private in &seen_private {
        let body = private.lines().nth(1).unwrap();
        assert!(!log.contains(body), "a private key leaked into the controller log");
    }
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_rekey_cut_short_after_the_old_key_was_removed_finishes_with_the_stored_new_key() {
    let h = Harness::new("rekey-crash", fast_market()).await;
    h.apply("box", rtx_4090(json!({}))).await;
    let ssh = status(&h.wait_ready("box").await).ssh.clone().unwrap();
    let (old_private, _, _) = secret_keys(&h, "box").await;
    // The state a controller killed mid re-key leaves: the new pair stored in the
    // Secret as pending, already the only key on the machine, not yet promoted.
    let pending = gpu_shopper::keys::generate("pending").unwrap();
    let pending_private = secrecy::ExposeSecret::expose_secret(&pending.private_openssh).to_string();
    let stored =
        json!({"stringData": {"ssh-privatekey-next": pending_private, "ssh-publickey-next": pending.public_openssh}});
    Api::<Secret>::namespaced(h.client.clone(), &h.ns)
        .patch("box-ssh", &PatchParams::default(), &Patch::Merge(&stored))
        .await
        .unwrap();
    {
        let world = h.sim.sim.world();
        let machine = world.instances.iter().find(|i| i.destroyed.is_none()).unwrap();
        let keys_file = machine.home.join(".ssh/authorized_keys");
        std::fs::write(keys_file, format!("{}\n", pending.public_openssh)).unwrap();
    }
    assert!(login_with(&ssh, &old_private).await.is_err(), "the Secret's main key is locked out, as after the crash");

    let annotate = json!({"metadata": {"annotations": {gpu_shopper::controller::session::REKEY_ANNOTATION: "1"}}});
    h.sessions.patch("box", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
    h.wait_until("box", "the re-key to finish", |s| {
        s.status.as_ref().and_then(|st| st.rekey.as_ref()).is_some_and(|r| r.done && r.request == "1")
    })
    .await;
    let (private, _, keys) = secret_keys(&h, "box").await;
    assert_eq!(private, pending_private, "the stored pending key was promoted, not replaced by another");
    assert!(!keys.iter().any(|k| k.ends_with("-next")), "{keys:?}");
    login_with(&ssh, &private).await.expect("the session's key logs in again");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn inference_session_is_ready_only_when_the_model_answers() {
    let h = Harness::new("inference", fast_market()).await;
    let spec = rtx_4090(json!({
        "image": "vllm/vllm-openai:v0.6.4",
        "workload": {"kind": "Inference", "command": "vllm serve llama", "inference": {"model": "llama-3-8b", "port": 8000}},
    }));
    h.apply("llm", spec).await;
    let ready = h.wait_ready("llm").await;
    let workload = find(&status(&ready).conditions, types::WORKLOAD_READY).unwrap().clone();
    assert_eq!(workload.reason, "ModelAnswered", "{}", workload.message);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_job_that_succeeds_or_fails_lands_in_status_and_destroys_its_instance() {
    let h = Harness::new("job", fast_market()).await;
    let ok = rtx_4090(
        json!({"workload": {"kind": "Job", "command": "echo training on $GPU_SHOPPER_RUN; sleep 3; echo done"}, "env": [{"name": "GPU_SHOPPER_RUN", "value": "run-7"}]}),
    );
    let bad = rtx_4090(json!({"workload": {"kind": "Job", "command": "echo boom >&2; exit 3"}}));
    h.apply("train-ok", ok).await;
    h.apply("train-bad", bad).await;
    let done = h.wait_phase("train-ok", SessionPhase::Succeeded).await;
    let job = status(&done).job.clone().unwrap();
    assert_eq!(job.exit_code, 0);
    assert!(job.log_tail.contains("training on run-7"), "{}", job.log_tail);
    assert_eq!(status(&done).reason.as_deref(), Some("JobSucceeded"));
    assert!(status(&done).released_at.is_some());
    // A terminal condition tools can wait on, as for a Kubernetes Job.
    let complete = find(&status(&done).conditions, types::COMPLETE).expect("a Complete condition");
    assert_eq!((complete.status.as_str(), complete.reason.as_str()), ("True", "JobSucceeded"));
    assert!(find(&status(&done).conditions, types::FAILED).is_none());

    let failed = h.wait_phase("train-bad", SessionPhase::Failed).await;
    let job = status(&failed).job.clone().unwrap();
    assert_eq!(job.exit_code, 3);
    assert!(job.log_tail.contains("boom"));
    assert!(status(&failed).released_at.is_some(), "a failed job must not keep billing");
    let spent_by_sessions: f64 = [&done, &failed].iter().map(|s| status(s).accrued_cost_usd.unwrap_or_default()).sum();
    let terminal = find(&status(&failed).conditions, types::FAILED).expect("a Failed condition");
    assert_eq!((terminal.status.as_str(), terminal.reason.as_str()), ("True", "JobFailed"));
    assert_eq!(find(&status(&failed).conditions, types::READY).unwrap().status, "False", "failed: Ready is False");
    assert!(h.live_instances().is_empty());
    h.expect_event("JobFailed").await;
    // What they spent outlives them: the spend counter keeps it after the sessions are deleted.
    h.sessions.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    wait_for("both sessions to go", WAIT, || async {
        h.sessions.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let metrics = h.metrics().await;
    let series = format!("gpu_shopper_spend_usd_total{{provider=\"vastai\",session_namespace=\"{}\"}} ", h.ns);
    let counted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| {
            panic!(
                "no {series}(the sessions spent {spent_by_sessions}) in {}",
                metrics.lines().filter(|l| l.contains("spend")).collect::<Vec<_>>().join("\n")
            )
        })
        .parse()
        .unwrap();
    assert!(spent_by_sessions > 0.0);
    assert!((counted - spent_by_sessions).abs() < 1e-6, "counted ${counted}, the sessions said ${spent_by_sessions}");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn snatched_offer_falls_over_to_the_next_best() {
    let h = Harness::new("snatched", fast_market()).await;
    h.sim.set_faults(ProviderName::Vastai, Faults { snatched_offers: vec!["4101".into()], ..Default::default() });
    h.apply("s", rtx_4090(json!({}))).await;
    let ready = h.wait_ready("s").await;
    let st = status(&ready);
    assert_eq!(st.attempts.len(), 1);
    assert_eq!((st.attempts[0].offer_id.as_str(), st.attempts[0].reason.as_str()), ("4101", "OfferGone"));
    assert_eq!(st.offer_id.as_deref(), Some("4102"));
    h.expect_event("AttemptFailed").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn cuda_mismatch_is_caught_the_host_avoided_and_the_session_re_provisioned() {
    let h = Harness::new("cuda", market_with_honest_4199(0.31)).await;
    let spec = rtx_4090(json!({"requirements": {"minCudaVersion": "12.9"}}));
    h.apply("first", spec.clone()).await;
    let ready = h.wait_ready("first").await;
    let st = status(&ready);
    assert_eq!(st.attempts.len(), 1, "{:?}", st.attempts);
    assert_eq!((st.attempts[0].offer_id.as_str(), st.attempts[0].reason.as_str()), ("4101", "CUDAMismatch"));
    assert!(st.attempts[0].message.contains("CUDA 12.8"), "{}", st.attempts[0].message);
    assert_eq!(st.offer_id.as_deref(), Some("4199"));
    assert_eq!(st.verified.as_ref().unwrap().cuda_version, "12.9");
    let lying = h.sim.instances().into_iter().find(|i| i.offer_id == "4101").unwrap();
    assert!(lying.destroyed, "the lying host's instance was destroyed");

    // The bad host is remembered: the next session does not try it.
    h.apply("second", spec).await;
    let ready = h.wait_ready("second").await;
    assert!(status(&ready).attempts.is_empty(), "{:?}", status(&ready).attempts);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_lost_create_response_is_adopted_not_doubled() {
    let h = Harness::new("lost", fast_market()).await;
    h.sim.set_faults(ProviderName::Vastai, Faults { lose_create_responses: 1, ..Default::default() });
    h.apply("s", rtx_4090(json!({}))).await;
    h.wait_ready("s").await;
    assert_eq!(h.live_instances().len(), 1, "exactly one instance");
    assert_eq!(h.sim.instances().len(), 1, "no second instance was ever created");
    h.expect_event("Adopted").await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_controller_killed_between_create_and_status_write_leaves_exactly_one_instance() {
    let mut h = Harness::new("crash", fast_market()).await;
    h.sim.set_faults(ProviderName::Vastai, Faults { create_response_delay_ms: 5_000, ..Default::default() });
    h.apply("s", rtx_4090(json!({}))).await;
    wait_for("the instance to exist at the marketplace", WAIT, || async {
        (!h.live_instances().is_empty()).then_some(())
    })
    .await;
    h.controller.kill(); // before the create call returned, so before any status write
    let before = h.sessions.get("s").await.unwrap();
    assert!(
        before.status.as_ref().and_then(|s| s.instance_id.clone()).is_none(),
        "the status never heard of the instance"
    );
    h.sim.set_faults(ProviderName::Vastai, Faults::default());
    h.controller.restart();
    h.wait_ready("s").await;
    assert_eq!(h.sim.instances().len(), 1, "adopted, not doubled");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn ssh_that_never_works_times_out_and_destroys_the_instance() {
    let h = Harness::new("nossh", fast_market()).await;
    h.sim.set_faults(ProviderName::Vastai, Faults { key_delay_ms: 3_600_000, ..Default::default() });
    h.apply("s", rtx_4090(json!({"timeouts": {"sshReady": "3s"}, "maxAttempts": 1}))).await;
    // While the machine is being proven, readiness is not known yet: neither True nor False.
    let proving = h
        .wait_until("s", "the machine being proven", |s| {
            s.status.as_ref().is_some_and(|st| st.phase == Some(SessionPhase::Verifying))
        })
        .await;
    let ready = find(&status(&proving).conditions, types::READY).expect("a Ready condition");
    assert_eq!(ready.status, "Unknown", "progressing is Unknown, not False: {ready:?}");
    let failed = h.wait_phase("s", SessionPhase::Failed).await;
    let st = status(&failed);
    assert_eq!(st.reason.as_deref(), Some("AttemptsExhausted"));
    assert_eq!(st.attempts[0].reason, "SSHUnreachable");
    assert!(h.sim.instances().iter().all(|i| i.destroyed));
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn expiry_idle_and_budget_each_end_a_session_and_destroy_its_instance() {
    let h = Harness::new("limits", fast_market()).await;
    h.apply("expiring", rtx_4090(json!({"lifetime": {"maxDuration": "3s"}}))).await;
    h.apply("idle", rtx_4090(json!({"lifetime": {"idleTimeout": "2s"}}))).await;
    h.apply("budget", rtx_4090(json!({"budget": {"maxCostUsd": 0.0003}}))).await;
    for (name, reason) in [("expiring", "Expired"), ("idle", "Idle"), ("budget", "BudgetReached")] {
        let ended = h.wait_phase(name, SessionPhase::Succeeded).await;
        assert_eq!(status(&ended).reason.as_deref(), Some(reason), "{name}");
        assert!(status(&ended).released_at.is_some(), "{name}: instance destroyed");
    }
    let budget = h.sessions.get("budget").await.unwrap();
    assert!(status(&budget).accrued_cost_usd.unwrap() >= 0.0003);
    assert!(h.live_instances().is_empty());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn deletion_while_provisioning_destroys_what_was_rented() {
    let mut market = fast_market();
    market.timings.loading_ms = 60_000; // never gets to running during this test
    let h = Harness::new("early-delete", market).await;
    h.apply("s", rtx_4090(json!({}))).await;
    h.wait_until("s", "an instance", |s| s.status.as_ref().is_some_and(|st| st.instance_id.is_some())).await;
    h.delete_and_wait_gone("s").await;
    assert!(h.live_instances().is_empty());
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn provider_down_during_deletion_holds_the_finalizer_until_it_is_back() {
    let h = Harness::new("down", fast_market()).await;
    h.apply("s", rtx_4090(json!({}))).await;
    h.wait_ready("s").await;
    h.sim.set_faults(ProviderName::Vastai, Faults { destroy_failures: 1_000, ..Default::default() });
    h.sessions.delete("s", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = h.sessions.get("s").await.expect("the finalizer holds the session");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(status(&held).phase, Some(SessionPhase::Terminating), "a deletion that waits says so");
    assert_eq!(h.live_instances().len(), 1, "still there, and still tracked");
    h.expect_event("DestroyFailed").await;
    h.sim.set_faults(ProviderName::Vastai, Faults::default());
    wait_for("the session to go once the marketplace is back", WAIT, || async {
        h.sessions.get_opt("s").await.unwrap().is_none().then_some(())
    })
    .await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn an_orphan_from_a_crashed_run_is_destroyed_and_other_installations_instances_are_left_alone() {
    use gpu_shopper::provider::{CreateRequest, InstanceLabel, OfferQuery, Provider};
    let h = Harness::new("orphans", fast_market()).await;
    let keys = h.sim.sim.world().market.keys.clone();
    let vast = gpu_shopper::provider::vastai::VastAi::new(
        &h.sim.vastai_url,
        secrecy::SecretString::from(keys.vastai),
        Default::default(),
    );
    let offer = vast
        .search_offers(&OfferQuery { requirements: Default::default(), limit: 10, disk_gb: 0, public_ports: false })
        .await
        .unwrap()
        .remove(0);
    let request = |deployment: &str| CreateRequest {
        offer: offer.clone(),
        label: InstanceLabel::new(deployment, "uid-of-a-session-that-no-longer-exists"),
        ssh_public_key: String::new(),
        image: "x".into(),
        start_script: None,
        env: vec![],
        ports: vec![],
        disk_gb: 10,
        min_cuda_version: None,
    };
    // Labelled as this operator labels a session of its namespace.
    let mut orphan_request = request(&h.installation().await);
    orphan_request.label =
        InstanceLabel::for_session(&h.installation().await, "uid-of-a-session-that-no-longer-exists", &h.ns);
    let orphan = vast.create_instance(&orphan_request).await.unwrap();
    let foreign = vast.create_instance(&request("another-deployment")).await.unwrap();
    // The same deployment id in another cluster: the cluster id tells it apart.
    let other_cluster = vast.create_instance(&request(&format!("{}-0ther0ne", h.ns))).await.unwrap();
    // Labelled the old way (deployment id alone), of no session here: possibly another cluster's.
    let unlabelled_cluster = vast.create_instance(&request(&h.ns)).await.unwrap();
    wait_for("the orphan to be destroyed", WAIT, || async {
        h.sim.instances().iter().find(|i| i.id == orphan.id).is_some_and(|i| i.destroyed).then_some(())
    })
    .await;
    // Another sweep or two passes (interval 1s in these tests) without touching the others.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, whose) in [
        (&foreign.id, "another deployment's"),
        (&other_cluster.id, "another cluster's"),
        (&unlabelled_cluster.id, "an old-style label's of no session here"),
    ] {
        let state = h.sim.instances().into_iter().find(|i| &i.id == id).unwrap();
        assert!(!state.destroyed, "{whose} instance is never touched");
    }
    h.expect_event("OrphanDestroyed").await;
    let metrics = h.metrics().await;
    assert!(metrics.contains("gpu_shopper_orphans_detected_total{provider=\"vastai\"} 1"), "{metrics}");
    for id in [&foreign.id, &other_cluster.id, &unlabelled_cluster.id] {
        vast.destroy_instance(id).await.unwrap();
    }
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_model_that_crashes_on_its_first_prompt_re_provisions_on_another_host() {
    let h = Harness::new("crash-prompt", market_with_honest_4199(0.36)).await;
    // No CUDA requirement in the spec: only the workload reveals that 12.8 (4101) and 12.4 (4102) are too old for this image.
    let spec = rtx_4090(json!({
        "image": "vllm/vllm-openai:v0.10.1",
        "workload": {"kind": "Inference", "command": "vllm serve m", "inference": {"model": "m"}},
    }));
    h.apply("llm", spec).await;
    let ready = h.wait_ready("llm").await;
    let st = status(&ready);
    let reasons: Vec<_> = st.attempts.iter().map(|a| (a.offer_id.as_str(), a.reason.as_str())).collect();
    assert_eq!(reasons, [("4101", "WorkloadCrashed"), ("4102", "WorkloadCrashed")]);
    assert!(st.attempts[0].message.contains("CUDA error"), "{}", st.attempts[0].message);
    assert_eq!(st.offer_id.as_deref(), Some("4199"));
    assert_eq!(h.live_instances().len(), 1, "the crashed hosts' instances were destroyed");
    h.finish().await;
}

/// How many calls of `operation` the controller made to `provider`, from its metrics.
fn provider_calls(metrics: &str, provider: &str, operation: &str) -> u64 {
    let series = format!(
        "gpu_shopper_provider_call_duration_seconds_count{{provider=\"{provider}\",operation=\"{operation}\"}} "
    );
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn starting_machines_are_watched_through_the_shared_listing_not_looked_up_one_by_one() {
    const SESSIONS: usize = 6;
    // Machines that take seconds to boot; the listing's own interval (60 s) is far longer.
    let mut market = fast_market();
    market.timings.created_ms = 1500;
    market.timings.loading_ms = 3000;
    let h = Harness::with_env("shared-listing", market, &[("ORPHAN_SWEEP_INTERVAL", "60s")]).await;
    for i in 0..SESSIONS {
        h.apply(&format!("s{i}"), rtx_4090(json!({}))).await;
    }
    for i in 0..SESSIONS {
        let ready = h.wait_ready(&format!("s{i}")).await;
        let st = status(&ready);
        let running = find(&st.conditions, types::INSTANCE_RUNNING).unwrap().last_transition_time.0;
        let waited = running.duration_since(st.rented_at.as_ref().unwrap().0).as_secs_f64();
        assert!(
            waited < 30.0,
            "a starting session asks for a listing instead of waiting for the next interval ({waited} s)"
        );
    }
    let metrics = h.metrics().await;
    let lookups = provider_calls(&metrics, "vastai", "get");
    assert!(
        lookups < SESSIONS as u64,
        "{lookups} instance lookups for {SESSIONS} booting machines: readiness must come from the shared listing ({} listings)",
        provider_calls(&metrics, "vastai", "list")
    );

    // When every listing fails, starting machines are still seen, one lookup at a time.
    h.sim.set_faults(ProviderName::Vastai, Faults { list_auth_failures: 10_000, ..Default::default() });
    h.apply("unlisted", rtx_4090(json!({}))).await;
    h.wait_ready("unlisted").await;
    assert!(provider_calls(&h.metrics().await, "vastai", "get") > lookups, "the fallback looked the machine up");
    h.sim.set_faults(ProviderName::Vastai, Faults::default());
    h.finish().await;
}

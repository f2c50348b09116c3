//! The operator's foundation against a real kube-apiserver: CRDs served,
//! schema validation at apply time, finalizer and status, deletion that waits
//! for cleanup, and recovery after the controller is killed.
//!
//! Ignored under plain `cargo test`; `make test` starts the control plane and
//! runs them.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{GpuOfferFilter, GpuSession, SessionPhase};
use support::*;

const FINALIZER: &str = "gpushopper.dev/destroy-instance";
const WAIT: Duration = Duration::from_secs(30);

async fn setup(prefix: &str) -> (Client, String) {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

fn session(name: &str, spec: Value) -> GpuSession {
    serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1",
        "kind": "GpuSession",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn interactive(name: &str) -> GpuSession {
    session(name, json!({"requirements": {"gpuModels": ["RTX 4090"], "maxPricePerHour": 0.6}}))
}

/// Waits until the controller has written status for the session's current generation.
async fn wait_observed(api: &Api<GpuSession>, name: &str) -> GpuSession {
    let what = format!("status.observedGeneration of {name} to reach metadata.generation");
    wait_for(&what, WAIT, || async {
        let s = api.get(name).await.ok()?;
        (s.status.as_ref()?.observed_generation == s.metadata.generation).then_some(s)
    })
    .await
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn crds_are_installed_and_served() {
    let (client, ns) = setup("crds").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let sessions_crd = crds.get("gpusessions.gpushopper.dev").await.unwrap();
    assert_eq!(sessions_crd.spec.names.short_names, Some(vec!["gs".to_string()]));
    let version = &sessions_crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some(), "status subresource enabled");
    let columns: Vec<_> =
        version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    for expected in ["Phase", "Ready", "GPU", "Provider", "$/h", "Cost", "Age"] {
        assert!(columns.contains(&expected), "kubectl get gs shows {expected}: {columns:?}");
    }
    let filters_crd = crds.get("gpuofferfilters.gpushopper.dev").await.unwrap();
    assert_eq!(filters_crd.spec.names.short_names, Some(vec!["gof".to_string()]));
    let columns: Vec<_> = filters_crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for expected in ["Matching", "Cheapest $/h", "Age"] {
        assert!(columns.iter().any(|c| c == expected), "kubectl get gof shows {expected}: {columns:?}");
    }

    // Both kinds are served: a valid object of each round-trips.
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let created = sessions.create(&PostParams::default(), &interactive("ok")).await.unwrap();
    assert_eq!(created.spec.requirements.as_ref().unwrap().max_price_per_hour, Some(0.6));
    let filters: Api<GpuOfferFilter> = Api::namespaced(client.clone(), &ns);
    let filter: GpuOfferFilter = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuOfferFilter",
        "metadata": {"name": "cheap-4090"},
        "spec": {"gpuModels": ["RTX 4090"], "minVramGb": 24, "maxPricePerHour": 0.5, "providers": ["vastai", "runpod"]},
    }))
    .unwrap();
    let created = filters.create(&PostParams::default(), &filter).await.unwrap();
    assert_eq!(created.spec.requirements.min_vram_gb, Some(24));
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn invalid_sessions_are_rejected_at_apply_time_with_the_schema_message() {
    let (client, ns) = setup("invalid").await;
    // Untyped, so that inputs the Rust types cannot even represent reach the API server.
    let resource = ApiResource::erase::<GpuSession>(&());
    let sessions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let cases = [
        (
            "no constraints at all",
            json!({"image": "pytorch/pytorch"}),
            "set spec.offerFilterRef, spec.requirements, or both",
        ),
        (
            "Job without a command",
            json!({"requirements": {"gpuModels": ["A100"]}, "workload": {"kind": "Job"}}),
            "a Job workload needs workload.command",
        ),
        (
            "Inference without a model",
            json!({"requirements": {"gpuModels": ["A100"]}, "workload": {"kind": "Inference", "command": "vllm serve"}}),
            "an Inference workload needs workload.inference",
        ),
        (
            "unknown workload kind",
            json!({"requirements": {}, "workload": {"kind": "Batch"}}),
            "Unsupported value: \"Batch\"",
        ),
        (
            "zero VRAM",
            json!({"requirements": {"minVramGb": 0}}),
            "minVramGb in body should be greater than or equal to 1",
        ),
        ("free GPU", json!({"requirements": {"maxPricePerHour": 0}}), "maxPricePerHour must be greater than 0"),
        (
            "negative price",
            json!({"requirements": {"maxPricePerHour": -0.2}}),
            "maxPricePerHour must be greater than 0",
        ),
        (
            "unknown provider",
            json!({"requirements": {"providers": ["aws"]}}),
            "supported values: \"vastai\", \"tensordock\", \"runpod\"",
        ),
        (
            "duration in words",
            json!({"requirements": {}, "timeouts": {"sshReady": "5 minutes"}}),
            "spec.timeouts.sshReady in body should match",
        ),
        (
            "zero budget",
            json!({"requirements": {}, "budget": {"maxCostUsd": 0}}),
            "budget.maxCostUsd must be greater than 0",
        ),
        ("country not a code", json!({"requirements": {"excludedCountries": ["China"]}}), "should match '^[A-Z]{2}$'"),
        (
            "bad CUDA version",
            json!({"requirements": {"minCudaVersion": "twelve"}}),
            "minCudaVersion in body should match",
        ),
    ];
    for (i, (what, spec, expected)) in cases.into_iter().enumerate() {
        let name = format!("bad-{i}");
        let object: DynamicObject =
            serde_json::from_value(serde_json::to_value(session(&name, json!({}))).unwrap()).unwrap();
        let object = DynamicObject { data: json!({"spec": spec}), ..object };
        match sessions.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("{what}: the API server accepted an invalid GpuSession"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(status.message.contains(expected), "{what}: expected {expected:?} in {:?}", status.message);
            }
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
        assert!(sessions.get_opt(&name).await.unwrap().is_none(), "{what}: nothing was stored");
    }
    // The same shapes, made valid, are accepted.
    let valid = json!({
        "requirements": {"minVramGb": 24, "maxPricePerHour": 0.2, "providers": ["vastai"], "excludedCountries": ["CN"], "minCudaVersion": "12.4"},
        "workload": {"kind": "Job", "command": "python train.py"},
        "timeouts": {"sshReady": "5m"},
        "budget": {"maxCostUsd": 3.5},
    });
    let typed: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    typed.create(&PostParams::default(), &session("good", valid)).await.expect("a valid session is accepted");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_session_gets_the_finalizer_and_a_status_with_observed_generation_and_conditions() {
    let (client, ns) = setup("status").await;
    let controller = ControllerProcess::start(&ns);
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &interactive("train")).await.unwrap();

    let observed = wait_observed(&sessions, "train").await;
    assert!(observed.finalizers().iter().any(|f| f == FINALIZER), "finalizers: {:?}", observed.finalizers());
    let status = observed.status.unwrap();
    assert_eq!(status.phase, Some(SessionPhase::Pending));
    let ready = find(&status.conditions, types::READY).expect("a Ready condition");
    assert_eq!(ready.status, "False");
    // No marketplace credentials were given to this controller: the condition says so.
    assert_eq!(ready.reason, "NoProvidersConfigured");
    assert!(ready.message.contains("VASTAI_API_KEY"), "{}", ready.message);
    assert_eq!(ready.observed_generation, observed.metadata.generation);

    // A spec change bumps the generation; status follows it.
    let patch = json!({"spec": {"consumer": "team-vision"}});
    sessions.patch("train", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let updated = wait_observed(&sessions, "train").await;
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.consumer.as_deref(), Some("team-vision"), "the controller never rewrites spec");

    // The controller's own writes touch only status and its finalizer, never spec.
    for entry in updated.metadata.managed_fields.unwrap_or_default() {
        if entry.manager.as_deref() == Some("gpu-shopper") {
            let fields = serde_json::to_string(&entry.fields_v1).unwrap();
            assert!(!fields.contains("f:spec"), "gpu-shopper wrote spec: {fields}");
        }
    }

    // A reference to a filter that does not exist is explained, not ignored.
    let by_ref = session("by-ref", json!({"offerFilterRef": {"name": "missing-filter"}}));
    sessions.create(&PostParams::default(), &by_ref).await.unwrap();
    let observed = wait_observed(&sessions, "by-ref").await;
    let ready = find(&observed.status.as_ref().unwrap().conditions, types::READY).unwrap().clone();
    assert_eq!(ready.reason, "OfferFilterNotFound");
    assert!(ready.message.contains("missing-filter"), "{}", ready.message);

    // Filters get a status too, saying plainly that no marketplace can be searched.
    let filters: Api<GpuOfferFilter> = Api::namespaced(client.clone(), &ns);
    let filter: GpuOfferFilter = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuOfferFilter",
        "metadata": {"name": "any-gpu"}, "spec": {"minVramGb": 16},
    }))
    .unwrap();
    filters.create(&PostParams::default(), &filter).await.unwrap();
    let filter = wait_for("GpuOfferFilter status", WAIT, || async {
        let f = filters.get("any-gpu").await.ok()?;
        (f.status.as_ref()?.observed_generation == f.metadata.generation).then_some(f)
    })
    .await;
    let searched = find(&filter.status.unwrap().conditions, types::MARKET_SEARCHED).unwrap().clone();
    assert_eq!((searched.status.as_str(), searched.reason.as_str()), ("False", "NoProvidersConfigured"));

    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_deleted_session_goes_away_only_after_the_cleanup_step_ran() {
    let (client, ns) = setup("delete").await;
    let mut controller = ControllerProcess::start(&ns);
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &interactive("short-lived")).await.unwrap();
    wait_observed(&sessions, "short-lived").await;

    // With the controller down, deletion only marks the object.
    controller.kill();
    sessions.delete("short-lived", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending = sessions.get("short-lived").await.expect("the session is kept while its cleanup has not run");
    assert!(pending.metadata.deletion_timestamp.is_some(), "deletionTimestamp is set");
    assert!(pending.finalizers().iter().any(|f| f == FINALIZER));

    // Once the controller is back, cleanup runs and the object goes.
    controller.restart();
    wait_for("the session to be gone", WAIT, || async {
        sessions.get_opt("short-lived").await.unwrap().is_none().then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let cleanup = wait_for("a CleanupComplete event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("CleanupComplete") && e.involved_object.name.as_deref() == Some("short-lived")
        })
    })
    .await;
    assert_eq!(cleanup.involved_object.kind.as_deref(), Some("GpuSession"));
    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn the_controller_recovers_after_it_is_killed_mid_way() {
    let (client, ns) = setup("restart").await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    const COUNT: usize = 30;
    for i in 0..COUNT {
        sessions.create(&PostParams::default(), &interactive(&format!("s{i:02}"))).await.unwrap();
    }

    // Kill the controller as soon as it has handled some, but (most likely) not all.
    let mut controller = ControllerProcess::start(&ns);
    wait_for("the first session to get a status", WAIT, || async {
        let list = sessions.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|s| s.status.is_some()).then_some(())
    })
    .await;
    controller.kill();
    // Work in flight while it was down: one more session, and a spec change.
    sessions.create(&PostParams::default(), &interactive("late")).await.unwrap();
    let patch = json!({"spec": {"consumer": "changed-while-down"}});
    sessions.patch("s00", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();

    controller.restart();
    controller.wait_ready().await;
    let all_done = wait_for("every session to be handled after the restart", Duration::from_secs(60), || async {
        let list = sessions.list(&ListParams::default()).await.ok()?;
        let done = list.items.iter().all(|s| {
            s.finalizers().iter().any(|f| f == FINALIZER)
                && s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        });
        (done && list.items.len() == COUNT + 1).then_some(list.items)
    })
    .await;
    assert!(all_done.iter().all(|s| s.status.as_ref().unwrap().phase == Some(SessionPhase::Pending)));

    // And it still cleans up everything on deletion.
    sessions.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    wait_for("every session to be gone", Duration::from_secs(60), || async {
        sessions.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let log = controller.log();
    assert!(!log.contains("panicked"), "the controller panicked:\n{log}");
    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn health_readiness_and_metrics_are_served_on_one_port() {
    let (client, ns) = setup("health").await;
    let controller = ControllerProcess::start(&ns);
    controller.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", controller.http_port);
    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert!(healthz.status().is_success());
    let readyz = reqwest::get(format!("{base}/readyz")).await.unwrap().text().await.unwrap();
    assert!(readyz.contains("providers: none configured"), "no providers is said out loud: {readyz}");

    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &interactive("counted")).await.unwrap();
    wait_observed(&sessions, "counted").await;
    let metrics = wait_for("a counted reconciliation in /metrics", WAIT, || async {
        let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
        text.contains("gpu_shopper_reconciliations_total{controller=\"gpusession\"}").then_some(text)
    })
    .await;
    assert!(metrics.contains("gpu_shopper_providers_configured 0"), "{metrics}");
    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_controller_with_provider_keys_never_shows_them() {
    let (client, ns) = setup("secrets").await;
    let controller = ControllerProcess::start_with_env(
        &ns,
        &[("VASTAI_API_KEY", "vast-key-do-not-leak"), ("RUNPOD_API_KEY", "runpod-key-do-not-leak")],
    );
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    sessions.create(&PostParams::default(), &interactive("keyed")).await.unwrap();
    let observed = wait_observed(&sessions, "keyed").await;
    let status = serde_json::to_string(&observed.status).unwrap();
    let readyz =
        reqwest::get(format!("http://127.0.0.1:{}/readyz", controller.http_port)).await.unwrap().text().await.unwrap();
    assert!(readyz.contains("providers: vastai, runpod"), "{readyz}");
    for text in [status, readyz, controller.log()] {
        assert!(!text.contains("do-not-leak"), "a provider key leaked: {text}");
    }
    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn every_example_manifest_is_accepted_by_the_api_server() {
    let (client, ns) = setup("examples").await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let documents: Vec<DynamicObject> = serde_saphyr::from_multiple(&text).unwrap();
        for object in documents {
            let types = object.types.clone().expect("apiVersion and kind");
            if !types.api_version.starts_with("gpushopper.dev/") {
                continue; // for example an Argo CD Application: not served here
            }
            let resource = match types.kind.as_str() {
                "GpuSession" => ApiResource::erase::<GpuSession>(&()),
                "GpuOfferFilter" => ApiResource::erase::<GpuOfferFilter>(&()),
                other => panic!("{}: unknown kind {other}", path.display()),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
            let params = PostParams { dry_run: true, ..Default::default() };
            if let Err(error) = api.create(&params, &object).await {
                panic!("{} is rejected by the API server: {error}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "found {checked} example objects in {dir}");
    delete_namespace(&client, &ns).await;
}

//! deploy/base: plain manifests equal to the chart's defaults, accepted by the
//! real API server.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::*;

/// The tests that apply to the namespace `gpu-shopper` take turns.
static GPU_SHOPPER_NAMESPACE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// kubectl as the control plane's start.sh built it, against the test API server.
fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl_path()).arg("--kubeconfig").arg(kubeconfig_path()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_base_crds_are_the_repos_crds() {
    let repo = std::fs::read_to_string(format!("{ROOT}/crds/gpushopper.dev.yaml")).unwrap();
    let base = std::fs::read_to_string(format!("{ROOT}/deploy/base/crds.yaml")).unwrap();
    assert!(repo == base, "deploy/base/crds.yaml differs from crds/: run `make manifests`");
}

#[test]
#[ignore = "needs helm: run `make test`"]
fn the_base_is_the_charts_default_rendering() {
    let helm = std::env::var("GPU_SHOPPER_HELM").expect("GPU_SHOPPER_HELM: run `make test`");
    let out = Command::new(helm)
        .args([
            "template",
            "gpu-shopper",
            &format!("{ROOT}/charts/gpu-shopper"),
            "--namespace",
            "gpu-shopper",
            "--set",
            "deploymentId=change-me",
            "--set",
            "leaderElection.leaseName=gpu-shopper-leader",
            "--set",
            "crds.install=false",
            "--set",
            "uninstallGuard.enabled=false",
            "--skip-crds",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let base = std::fs::read_to_string(format!("{ROOT}/deploy/base/gpu-shopper.yaml")).unwrap();
    let base_body = base.split_once('\n').map(|(_, rest)| rest).unwrap_or_default();
    assert!(base_body == rendered, "deploy/base/gpu-shopper.yaml is stale: run `make manifests`");
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn the_api_server_accepts_the_base() {
    let _turn = GPU_SHOPPER_NAMESPACE.lock().await;
    let _ = kubectl(&["create", "namespace", "gpu-shopper"]);
    let (ok, output) = kubectl(&["apply", "--dry-run=server", "-k", &format!("{ROOT}/deploy/base")]);
    assert!(ok, "{output}");
    for object in [
        "deployment.apps/gpu-shopper",
        "clusterrole.rbac.authorization.k8s.io/gpu-shopper",
        "customresourcedefinition.apiextensions.k8s.io/gpusessions.gpushopper.dev",
    ] {
        assert!(output.contains(object), "{object} not in: {output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn the_documented_overlay_installs_and_its_operator_leads_with_the_overlays_own_rbac() {
    let _turn = GPU_SHOPPER_NAMESPACE.lock().await;
    let overlay = format!("{ROOT}/deploy/examples/overlay");
    let (ok, output) = kubectl(&["apply", "--server-side", "--force-conflicts", "-k", &overlay]);
    assert!(ok, "{output}");
    let client = client().await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), "gpu-shopper").get("gpu-shopper").await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = pod.containers[0].clone();
    let env = container.env.unwrap_or_default();
    let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(value("DEPLOYMENT_ID").as_deref(), Some("prod-eu-1"), "the overlay set the deployment id");

    // The operator as the Deployment would run it, with a token of its ServiceAccount.
    let account = pod.service_account_name.unwrap();
    let kubeconfig = service_account_kubeconfig(&client, "gpu-shopper", &account, "overlay-operator").await;
    let port = free_port();
    let pod_name = "gpu-shopper-5d8f7c9b4-overlay";
    let log_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("overlay-operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"));
    command.args(container.args.unwrap_or_default()).env_clear().env("KUBECONFIG", &kubeconfig);
    for var in &env {
        let field = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.as_str());
        match (&var.value, field) {
            (Some(value), _) => command.env(&var.name, value),
            (None, Some("metadata.name")) => command.env(&var.name, pod_name),
            (None, Some("metadata.namespace")) => command.env(&var.name, "gpu-shopper"),
            // Marketplace keys from a Secret the test does not create (optional in the Deployment).
            (None, _) => &mut command,
        };
    }
    // Loopback only, and no other test's sessions: the RBAC is the overlay's all the same.
    command.env("HTTP_ADDR", format!("127.0.0.1:{port}")).env("WATCH_NAMESPACE", "gpu-shopper");
    let mut child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let lease_name = value("LEASE_NAME").expect("the base names its Lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "gpu-shopper");
    let led = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Some(lease)) = leases.get_opt(&lease_name).await
                && lease.spec.and_then(|s| s.holder_identity).as_deref() == Some(pod_name)
            {
                let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await;
                if let Ok(metrics) = metrics
                    && metrics.text().await.unwrap_or_default().contains("gpu_shopper_leader 1")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = kubectl(&["delete", "namespace", "gpu-shopper", "--wait=false"]);
    let _ = kubectl(&["delete", "clusterrole,clusterrolebinding", "gpu-shopper"]);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(led.is_ok(), "the overlay's operator never led; its log:\n{log}");
    assert!(!log.contains("403") && !log.contains("forbidden"), "the overlay's RBAC refused something:\n{log}");
}

/// Every example session a user might apply as is (deploy/examples, and the demo's,
/// which `make demo` applies to real marketplaces when asked to) is bounded in money
/// and in time.
#[test]
fn every_example_session_carries_a_budget_and_a_lifetime() {
    let mut sessions = 0;
    for dir in ["deploy/examples", "e2e/demo"] {
        for entry in std::fs::read_dir(format!("{ROOT}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue; // the kustomize overlay
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
            for value in docs {
                if value["kind"].as_str() != Some("GpuSession") {
                    continue;
                }
                sessions += 1;
                let spec = &value["spec"];
                assert!(spec["budget"]["maxCostUsd"].as_f64().is_some(), "{}: no budget.maxCostUsd", path.display());
                assert!(
                    spec["lifetime"]["maxDuration"].as_str().is_some(),
                    "{}: no lifetime.maxDuration",
                    path.display()
                );
            }
        }
    }
    assert!(sessions >= 6, "found only {sessions} example sessions");
}

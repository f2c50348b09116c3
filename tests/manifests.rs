//! deploy/base: plain manifests equal to the chart's defaults, accepted by the
//! real API server.

mod support;

use std::process::Command;

use support::*;

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
    let kubectl =
        std::fs::read_to_string(kubeconfig_path().with_file_name("bin.path")).expect("start.sh records its bin dir");
    let kubectl = format!("{}/kubectl", kubectl.trim());
    let kubeconfig = kubeconfig_path();
    let run = |args: &[&str]| {
        let out = Command::new(&kubectl).arg("--kubeconfig").arg(&kubeconfig).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let _ = run(&["create", "namespace", "gpu-shopper"]);
    let (ok, output) = run(&["apply", "--dry-run=server", "-k", &format!("{ROOT}/deploy/base")]);
    assert!(ok, "{output}");
    for object in [
        "deployment.apps/gpu-shopper",
        "clusterrole.rbac.authorization.k8s.io/gpu-shopper",
        "customresourcedefinition.apiextensions.k8s.io/gpusessions.gpushopper.dev",
    ] {
        assert!(output.contains(object), "{object} not in: {output}");
    }
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

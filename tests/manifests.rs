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

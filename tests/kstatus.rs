//! Flux, kpt and cli-utils judge a resource with kstatus. The real kstatus
//! library (sigs.k8s.io/cli-utils, built by tests/kstatus/build.sh) reads the
//! statuses the operator wrote on a real API server.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;

use gpu_shopper::crd::GpuSession;
use support::sessions::*;

/// What kstatus computes for `session`: its status word and message.
fn kstatus(session: &GpuSession) -> (String, String) {
    let binary = std::env::var("GPU_SHOPPER_KSTATUS").expect("GPU_SHOPPER_KSTATUS: run `make test`");
    let mut child = Command::new(binary).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut object = serde_json::to_value(session).unwrap();
    object["apiVersion"] = json!("gpushopper.dev/v1alpha1");
    object["kind"] = json!("GpuSession");
    writeln!(child.stdin.take().unwrap(), "{object}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (result["status"].as_str().unwrap().to_string(), result["message"].as_str().unwrap_or_default().to_string())
}

fn reason(session: &GpuSession) -> Option<&str> {
    session.status.as_ref()?.reason.as_deref()
}

#[tokio::test]
#[ignore = "needs a real API server and kstatus: run `make test`"]
async fn kstatus_reads_a_running_session_as_current_a_shopping_one_as_in_progress_and_a_stuck_one_as_failed() {
    let h = Harness::new("kstatus", fast_market()).await;
    h.apply("running", rtx_4090(json!({}))).await;
    h.apply("shopping", json!({"requirements": {"gpuModels": ["B300"], "providers": ["vastai"]}})).await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let theirs: Secret =
        serde_json::from_value(json!({"metadata": {"name": "stuck-ssh"}, "stringData": {"x": "y"}})).unwrap();
    secrets.create(&Default::default(), &theirs).await.unwrap();
    h.apply("stuck", rtx_4090(json!({}))).await;

    let running = h.wait_ready("running").await;
    assert_eq!(kstatus(&running).0, "Current", "{:?}", running.status);
    let shopping = h.wait_until("shopping", "NoMatchingOffers", |s| reason(s) == Some("NoMatchingOffers")).await;
    let (word, message) = kstatus(&shopping);
    assert_eq!(word, "InProgress");
    assert!(message.contains("no offer matches"), "{message}");
    let stuck = h.wait_until("stuck", "SecretConflict", |s| reason(s) == Some("SecretConflict")).await;
    let (word, message) = kstatus(&stuck);
    assert_eq!(word, "Failed", "a session only a user can unblock is stalled");
    assert!(message.contains("stuck-ssh"), "{message}");

    // A change to the spec is InProgress until the operator has seen it.
    let mut changed = running.clone();
    changed.metadata.generation = Some(running.metadata.generation.unwrap() + 1);
    assert_eq!(kstatus(&changed).0, "InProgress");
    secrets.delete("stuck-ssh", &Default::default()).await.unwrap();
    h.finish().await;
}

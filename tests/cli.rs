//! The binary's start-up behaviour, without a cluster.

use std::process::Command;

fn gpu_shopper() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn controller_refuses_to_start_without_a_deployment_id() {
    let output = gpu_shopper().arg("controller").env("VASTAI_API_KEY", "vast-secret-key").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("DEPLOYMENT_ID is not set"), "stderr: {stderr}");
    assert!(!stderr.contains("vast-secret-key"), "an API key leaked into the error: {stderr}");
}

#[test]
fn controller_names_the_missing_half_of_tensordock_credentials() {
    let output = gpu_shopper()
        .arg("controller")
        .env("DEPLOYMENT_ID", "test")
        .env("TENSORDOCK_API_TOKEN", "td-secret-token")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("TENSORDOCK_AUTH_ID"), "stderr: {stderr}");
    assert!(!stderr.contains("td-secret-token"), "a token leaked into the error: {stderr}");
}

#[test]
fn crds_subcommand_prints_both_crds() {
    let output = gpu_shopper().arg("crds").output().unwrap();
    assert!(output.status.success());
    let yaml = String::from_utf8(output.stdout).unwrap();
    assert!(yaml.contains("name: gpusessions.gpushopper.dev"));
    assert!(yaml.contains("name: gpuofferfilters.gpushopper.dev"));
}

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

/// Every variable the docs and the chart name, as `controller --help` must list it.
const SETTINGS: &[&str] = &[
    "DEPLOYMENT_ID",
    "CLUSTER_ID",
    "VASTAI_API_KEY",
    "TENSORDOCK_AUTH_ID",
    "TENSORDOCK_API_TOKEN",
    "RUNPOD_API_KEY",
    "VASTAI_BASE_URL",
    "TENSORDOCK_BASE_URL",
    "RUNPOD_BASE_URL",
    "PROVIDER_CALL_TIMEOUT",
    "VASTAI_ENDPOINT_INTERVAL",
    "MAX_SESSION_DURATION",
    "ORPHAN_SWEEP_INTERVAL",
    "ORPHAN_GRACE_PERIOD",
    "STRAY_GRACE_PERIOD",
    "MACHINE_CHECK_INTERVAL",
    "BAD_HOST_TTL",
    "MAX_CONCURRENT_RECONCILES",
    "WATCH_NAMESPACE",
    "LEADER_ELECTION",
    "LEASE_NAME",
    "LEASE_NAMESPACE",
    "LEASE_DURATION",
    "POD_NAMESPACE",
    "POD_NAME",
    "GATEWAY_IMAGE",
    "GATEWAY_REPLICAS",
    "GATEWAY_RESOURCES",
    "GATEWAY_NETWORK_POLICY",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HTTP_ADDR",
];

#[test]
fn controller_help_lists_every_setting_with_its_variable_and_default_and_never_a_key() {
    let output = gpu_shopper()
        .args(["controller", "--help"])
        .env("VASTAI_API_KEY", "vast-secret-key")
        .env("TENSORDOCK_API_TOKEN", "td-secret-token")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for name in SETTINGS {
        assert!(help.contains(&format!("[env: {name}")), "controller --help does not list {name}: {help}");
    }
    let entry = |flag: &str| {
        help.split(flag).nth(1).and_then(|rest| rest.split("\n\n      --").next()).unwrap_or_default().to_string()
    };
    assert!(entry("--orphan-grace-period").contains("[default: 10m]"), "{help}");
    assert!(entry("--max-concurrent-reconciles").contains("[default: 64]"), "{help}");
    assert!(entry("--http-addr").contains("[default: 0.0.0.0:8080]"), "{help}");
    assert!(!help.contains("vast-secret-key") && !help.contains("td-secret-token"), "a key shows in help: {help}");
}

#[test]
fn a_setting_may_be_a_flag_and_a_blank_variable_counts_as_unset() {
    // A flag is checked as its variable is, and named by the variable.
    let output = gpu_shopper().args(["controller", "--deployment-id", "Not_Valid"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DEPLOYMENT_ID \"Not_Valid\" is not valid"), "{stderr}");
    // Blank variables (as a chart leaves an unset value) take the defaults: the start gets as
    // far as the cluster connection, which this test gives none.
    let output = gpu_shopper()
        .arg("controller")
        .env("DEPLOYMENT_ID", "test")
        .env("LOG_FORMAT", "")
        .env("ORPHAN_SWEEP_INTERVAL", " ")
        .env("GATEWAY_RESOURCES", "")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to Kubernetes") && !stderr.contains("is not valid"), "{stderr}");
}

#[test]
fn crds_subcommand_prints_both_crds() {
    let output = gpu_shopper().arg("crds").output().unwrap();
    assert!(output.status.success());
    let yaml = String::from_utf8(output.stdout).unwrap();
    assert!(yaml.contains("name: gpusessions.gpushopper.dev"));
    assert!(yaml.contains("name: gpuofferfilters.gpushopper.dev"));
}

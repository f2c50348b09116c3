//! The monitoring the chart ships: the alert rules checked and unit-tested by
//! the real `promtool`, and the PrometheusRule and dashboard ConfigMap the
//! chart renders carrying exactly those files.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(env: &str, how: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| panic!("{env} is not set: {how}"))
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[ignore = "needs promtool: run `make test` (it builds promtool from the Go module proxy)"]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() {
    let promtool = tool("GPU_SHOPPER_PROMTOOL", "run `make test`, or export it from tests/promtool/build.sh");
    let rules = format!("{ROOT}/charts/gpu-shopper/rules");
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules", "alerts.yaml"]).current_dir(&rules));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&promtool).args(["test", "rules", "alerts_test.yaml"]).current_dir(&rules));
    assert!(ok, "{out}");
    // Every metric an alert reads is one the operator exports.
    let text = std::fs::read_to_string(format!("{rules}/alerts.yaml")).unwrap();
    for token in
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|t| t.starts_with("gpu_shopper_"))
    {
        let base = token.trim_end_matches("_total");
        assert!(gpu_shopper::metrics::names::ALL.contains(&base), "an alert reads {token}, which is not exported");
    }
}

#[test]
#[ignore = "needs promtool: run `make test` (it builds promtool from the Go module proxy)"]
fn the_documented_per_namespace_spend_alerts_fire_for_the_namespace_that_spends() {
    let promtool = tool("GPU_SHOPPER_PROMTOOL", "run `make test`, or export it from tests/promtool/build.sh");
    let example = format!("{ROOT}/deploy/examples/spend-alerts");
    let rule: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{example}/prometheusrule.yaml")).unwrap()).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    // promtool reads plain rule groups: the PrometheusRule's spec.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spend-alerts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), serde_saphyr::to_string(&rule["spec"]).unwrap()).unwrap();
    std::fs::copy(format!("{example}/spend-alerts_test.yaml"), dir.join("spend-alerts_test.yaml")).unwrap();
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules", "rules.yaml"]).current_dir(&dir));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&promtool).args(["test", "rules", "spend-alerts_test.yaml"]).current_dir(&dir));
    assert!(ok, "{out}");
    assert!(gpu_shopper::metrics::names::ALL.contains(&"gpu_shopper_spend_usd"));
}

#[test]
#[ignore = "needs helm: run `make test`"]
fn the_chart_ships_the_rules_and_the_dashboard_it_was_given() {
    let helm = tool("GPU_SHOPPER_HELM", "run `make test`");
    let (ok, out) = run(Command::new(helm).args([
        "template",
        "gs",
        &format!("{ROOT}/charts/gpu-shopper"),
        "--set",
        "deploymentId=x",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
    ]));
    assert!(ok, "{out}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}")).clone();
    let rule = find("PrometheusRule");
    let file: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(format!("{ROOT}/charts/gpu-shopper/rules/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"], "the PrometheusRule is rules/alerts.yaml");
    let config_map = find("ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(config_map["data"]["gpu-shopper.json"].as_str().unwrap()).unwrap();
    let source: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/charts/gpu-shopper/dashboards/gpu-shopper.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, source);
}

//! The docs that are kept in sync with the code by tests.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_reference_is_generated_from_the_current_schema() {
    let checked_in = std::fs::read_to_string(format!("{ROOT}/docs/reference.md")).unwrap();
    assert!(
        checked_in == gpu_shopper::crd::reference::markdown(),
        "docs/reference.md is stale: run `cargo run -- reference > docs/reference.md`"
    );
}

/// Every metric the operator exports, as Prometheus shows it (counters end in `_total`).
fn exported_metrics() -> Vec<String> {
    use gpu_shopper::metrics::names;
    names::ALL.iter().map(|n| if names::COUNTERS.contains(n) { format!("{n}_total") } else { n.to_string() }).collect()
}

#[test]
fn every_counter_is_a_counter() {
    let metrics = gpu_shopper::metrics::Metrics::default();
    metrics.orphans_detected.get_or_create(&gpu_shopper::metrics::ProviderLabels { provider: "x" }).inc();
    metrics.reconciliations.get_or_create(&gpu_shopper::metrics::ControllerLabels { controller: "x" }).inc();
    let text = metrics.encode();
    assert!(
        text.contains("# TYPE gpu_shopper_orphans_detected counter")
            && text.contains("gpu_shopper_orphans_detected_total{provider=\"x\"} 1")
    );
    // The old name, kept as an alias for one release, is the same series.
    assert!(text.contains("gpu_orphans_detected_total{provider=\"x\"} 1"), "{text}");
    assert!(text.contains("# TYPE gpu_shopper_reconciliations counter"));
}

#[test]
fn the_metrics_reference_lists_every_metric() {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/metrics.md")).unwrap();
    let metrics = exported_metrics();
    assert!(metrics.len() >= 12, "{metrics:?}");
    for metric in metrics {
        assert!(doc.contains(&format!("`{metric}`")), "docs/metrics.md does not describe {metric}");
    }
}

#[test]
fn the_dashboard_only_queries_metrics_that_exist() {
    let text = std::fs::read_to_string(format!("{ROOT}/charts/gpu-shopper/dashboards/gpu-shopper.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let metrics = exported_metrics();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let exprs = panels.iter().flat_map(|p| p["targets"].as_array().unwrap().iter().map(move |t| (p, t)));
    for (panel, target) in exprs {
        let expr = target["expr"].as_str().unwrap();
        assert!(
            expr.contains("job=~\"$job\"") && expr.contains("namespace=~\"$namespace\""),
            "{expr}: filtered by the variables"
        );
        let tokens = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for token in tokens.filter(|t| t.starts_with("gpu_") || t.starts_with("process_")) {
            let base = token.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
            assert!(
                metrics.iter().any(|m| m == base),
                "panel {:?} queries {token}, which is not exported",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_troubleshooting_guide_covers_every_reason_the_cli_advises_on() {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/troubleshooting.md")).unwrap();
    for reason in [
        "NoProvidersConfigured",
        "OfferFilterNotFound",
        "NoMatchingOffers",
        "CUDAMismatch",
        "WorkloadCrashed",
        "SSHUnreachable",
        "DriverMissing",
        "WorkloadTimeout",
        "JobFailed",
        "BudgetReached",
        "InstanceLost",
        "Stopped",
        "Preempted",
        "MaxDurationReached",
        "SecretConflict",
        "CreateOutcomeUnknown",
        "EndpointNameTaken",
        "ApiKeySecretNotFound",
        "GatewayNotServing",
        "PriceAboveLimit",
        "SecretNotFound",
        "InputNotFound",
        "InputAccessDenied",
        "OutputBucketNotFound",
        "InputInvalid",
        "InputsTooSlow",
        "OutputsLost",
        "NamespaceCapReached",
        "InstanceNotOwned",
    ] {
        assert!(gpu_shopper::cli::status::advice(reason).is_some(), "{reason}");
        assert!(doc.contains(&format!("`{reason}`")), "docs/troubleshooting.md does not cover {reason}");
    }
}

//! The Argo CD health checks (`deploy/argocd/*.lua`) run in a real Lua 5.4
//! interpreter, the way Argo CD runs them (`obj` set, the script returns `hs`),
//! against status fixtures shaped like what the operator writes.

use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `value` as a Lua constructor: objects as keyed tables, arrays as sequences, null as nil.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields.iter().map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// (status, message) as Argo CD would show them for `object`.
fn health(script: &str, object: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal hs = dofile({script:?})\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua_literal(object)
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("lua5.4 is not installed: run scripts/setup.sh (make test does)");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

#[test]
#[ignore = "needs lua5.4: run `make test` (scripts/setup.sh installs it)"]
fn every_fixture_gets_the_health_argo_cd_should_show() {
    let mut checked = 0;
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("{ROOT}/tests/fixtures/argocd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = fixture["object"]["kind"].as_str().unwrap().to_ascii_lowercase();
        let script = format!("{ROOT}/deploy/argocd/{kind}-health.lua");
        let (status, message) = health(&script, &fixture["object"]);
        assert_eq!(status, fixture["expect"].as_str().unwrap(), "{}: {message}", path.display());
        assert!(!message.is_empty(), "{}: a health says why", path.display());
        seen.insert(format!("{kind}:{status}"));
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} fixtures");
    for expected in ["gpusession:Healthy", "gpusession:Progressing", "gpusession:Degraded", "gpusession:Suspended"] {
        assert!(seen.contains(expected), "no fixture shows {expected}: {seen:?}");
    }
}

#[test]
#[ignore = "needs lua5.4: run `make test` (scripts/setup.sh installs it)"]
fn a_session_status_written_by_the_operators_types_reads_as_argo_cd_expects() {
    use gpu_shopper::crd::conditions::{ConditionUpdate, Status, set, types};
    use gpu_shopper::crd::session::GpuSessionStatus;
    use gpu_shopper::crd::{GpuSession, SessionPhase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    // Built with the operator's own types and condition helper, so a renamed field or reason shows here.
    let now = Time(jiff::Timestamp::now());
    let mut status =
        GpuSessionStatus { phase: Some(SessionPhase::Succeeded), observed_generation: Some(1), ..Default::default() };
    let update =
        |type_, status, reason| ConditionUpdate { type_, status, reason, message: format!("because {reason}") };
    set(&mut status.conditions, update(types::READY, Status::False, "JobSucceeded"), Some(1), now.clone());
    set(&mut status.conditions, update(types::COMPLETE, Status::True, "JobSucceeded"), Some(1), now);
    let mut session = GpuSession::new("job", Default::default());
    session.metadata.generation = Some(1);
    session.status = Some(status);
    let object = serde_json::to_value(&session).unwrap();
    let (health_status, message) = health(&format!("{ROOT}/deploy/argocd/gpusession-health.lua"), &object);
    assert_eq!((health_status.as_str(), message.as_str()), ("Healthy", "finished: because JobSucceeded"));
}

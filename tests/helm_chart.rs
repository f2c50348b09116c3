//! The Helm chart: its CRDs equal the repo's, it lints and renders with
//! default and custom values, installs into the real API server, and its RBAC
//! is enough, and no more than enough, for a session's whole life.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use gpu_shopper::crd::GpuSession;
use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::simulator;
use gpu_shopper::simulator::market::Market;
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/gpu-shopper");

#[test]
fn the_charts_crds_are_the_repos_crds() {
    let repo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/gpushopper.dev.yaml")).unwrap();
    let chart = std::fs::read_to_string(format!("{CHART}/files/crds.yaml")).unwrap();
    assert!(repo == chart, "charts/gpu-shopper/crds/ differs from crds/: run `make crds`");
}

/// Helm, built by tests/helm/build.sh (`make test` passes its path in GPU_SHOPPER_HELM).
fn helm() -> PathBuf {
    let path = std::env::var("GPU_SHOPPER_HELM")
        .ok()
        .or_else(|| {
            let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helm/build.sh")).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .expect("helm is needed: run `make test`, or tests/helm/build.sh and set GPU_SHOPPER_HELM");
    PathBuf::from(path)
}

fn run(command: &mut Command) -> (bool, String, String) {
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn render(args: &[&str]) -> Vec<serde_json::Value> {
    let (ok, stdout, stderr) = run(Command::new(helm()).args(["template", "gs", CHART]).args(args));
    assert!(ok, "helm template {args:?} failed: {stderr}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

/// The operator's own ClusterRole (not the aggregated view/edit roles for users).
fn operator_role(docs: &[serde_json::Value]) -> &serde_json::Value {
    docs.iter()
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"].is_null()
        })
        .expect("the operator's ClusterRole")
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The value combinations lint and the API server's dry run check: the default,
/// a tuned one, and one that turns on every optional object. Namespaces a
/// combination names are `team_a` and `team_b`.
fn value_combinations(team_a: &str, team_b: &str) -> Vec<Vec<String>> {
    vec![
        vec!["--set", "deploymentId=prod-eu-1"].into_iter().map(String::from).collect(),
        vec![
            "--set",
            "deploymentId=x",
            "--set",
            "replicas=3",
            "--set",
            &format!("watchNamespace={team_a}"),
            "--set",
            "providers.baseUrls.vastai=http://sim:18000/api/v0",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "--set",
            "deploymentId=x",
            "--set",
            &format!("watchNamespaces={{{team_a},{team_b}}}"),
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "aggregatedRoles.enabled=false",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "providers.create=true",
            "--set",
            "priorityClassName=high",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ]
}

#[test]
#[ignore = "needs helm: run `make test` (it builds Helm from the Go module proxy)"]
fn lint_and_template_with_default_and_custom_values() {
    for values in value_combinations("a", "b") {
        let (ok, stdout, stderr) = run(Command::new(helm()).args(["lint", "--strict", CHART]).args(&values));
        assert!(ok, "helm lint {values:?}: {stdout}{stderr}");
    }
    let docs = render(&["--set", "deploymentId=prod-eu-1"]);
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], serde_json::Value::Bool(true));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], serde_json::Value::Bool(true));
    assert_eq!(security["allowPrivilegeEscalation"], serde_json::Value::Bool(false));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(container["resources"]["limits"]["memory"].is_string());
    // One set of names: every variable the chart sets is one the binary reads.
    let names: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    let read = gpu_shopper::config::variables();
    for name in &names {
        assert!(read.iter().any(|r| r == name), "the chart sets {name}, which gpu-shopper does not read");
    }
    for needed in ["DEPLOYMENT_ID", "VASTAI_API_KEY", "TENSORDOCK_AUTH_ID", "TENSORDOCK_API_TOKEN", "RUNPOD_API_KEY"] {
        assert!(names.contains(&needed), "the chart does not set {needed}");
    }
    let custom = render(&["--set", "deploymentId=x", "--set", "replicas=3"]);
    assert_eq!(kind(&custom, "Deployment")["spec"]["replicas"].as_i64(), Some(3));
    let single = render(&["--set", "deploymentId=x", "--set", "leaderElection.enabled=false"]);
    assert!(single.iter().all(|d| d["kind"].as_str() != Some("Role")), "no Lease role without leader election");
    // The aggregated roles: `view` reads, `edit` writes; neither grants status.
    let edit = custom
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"].as_str().unwrap().ends_with("-edit"))
        .unwrap();
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    let roles = serde_json::to_string(
        &custom
            .iter()
            .filter(|d| {
                d["kind"] == "ClusterRole"
                    && d["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!roles.contains("/status"), "{roles}");
    // Composable and tunable: Helm's `global`, extra env and objects, a digest, a PriorityClass.
    let tuned = render(&[
        "--set",
        "deploymentId=x",
        "--set",
        "global.imageRegistry=r.example",
        "--set",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--set",
        "priorityClassName=platform-critical",
        "--set",
        "extraEnv[0].name=PROVIDER_CALL_TIMEOUT",
        "--set",
        "extraEnv[0].value=45s",
        "--set",
        "clusterId=abc123",
        "--set-json",
        r#"extraObjects=[{"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"{{ .Release.Name }}-quota"},"spec":{"hard":{"count/gpusessions.gpushopper.dev":"20"}}}]"#,
    ]);
    let pod = &kind(&tuned, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert!(
        pod["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    let env = serde_json::to_string(&pod["containers"][0]["env"]).unwrap();
    assert!(
        env.contains(r#"{"name":"PROVIDER_CALL_TIMEOUT","value":"45s"}"#) && env.contains(r#""CLUSTER_ID""#),
        "{env}"
    );
    assert_eq!(kind(&tuned, "ResourceQuota")["metadata"]["name"], "gs-quota");
    // Namespaces are only read (the cluster's identity, each namespace's cap); watching
    // some namespaces, only kube-system and those.
    let namespace_rule = |docs: &[serde_json::Value]| {
        operator_role(docs)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resources"] == serde_json::json!(["namespaces"]))
            .cloned()
            .unwrap()
    };
    assert_eq!(namespace_rule(&custom)["verbs"], serde_json::json!(["get"]));
    let some = render(&["--set", "deploymentId=x", "--set", "watchNamespaces={team-a,team-b}"]);
    assert_eq!(namespace_rule(&some)["resourceNames"], serde_json::json!(["kube-system", "team-a", "team-b"]));

    // Bad values fail at install time with a message (values.schema.json and the templates).
    for (args, expected) in [
        (vec![], "deploymentId is required"),
        (
            vec!["--set", "deploymentId=x", "--set", "replicas=2", "--set", "leaderElection.enabled=false"],
            "needs leaderElection",
        ),
        (vec!["--set", "deploymentId=Prod_1"], "/deploymentId"),
        (vec!["--set", "replicas=0"], "/replicas"),
        (vec!["--set", "limits.orphanGracePeriod=10minutes"], "/limits/orphanGracePeriod"),
        (vec!["--set", "log.format=xml"], "/log/format"),
    ] {
        let (ok, _, stderr) = run(Command::new(helm()).args(["template", "gs", CHART]).args(&args));
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }

    // Optional pieces, and credentials created from values.
    let full = render(&[
        "--set",
        "deploymentId=x",
        "--set",
        "watchNamespace=ml",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "providers.create=true",
        "--set",
        "providers.credentials.vastaiApiKey=k",
    ]);
    for expected in ["NetworkPolicy", "ServiceMonitor", "Secret"] {
        kind(&full, expected);
    }
    let secret_name = kind(&full, "Secret")["metadata"]["name"].as_str().unwrap().to_string();
    let env = kind(&full, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let vast = env.iter().find(|e| e["name"].as_str() == Some("VASTAI_API_KEY")).unwrap();
    assert_eq!(vast["valueFrom"]["secretKeyRef"]["name"].as_str(), Some(secret_name.as_str()));
    let cluster_role = operator_role(&full);
    assert!(
        !serde_json::to_string(cluster_role).unwrap().contains("secrets"),
        "watching one namespace: no cluster-wide Secret access"
    );
}

#[tokio::test]
#[ignore = "needs helm and a real API server: run `make test`"]
async fn every_value_combination_passes_the_api_servers_dry_run() {
    let _crds = CRDS.lock().await;
    let client = client().await;
    let ns = namespace(&client, "dry-run").await;
    let (team_a, team_b) = (namespace(&client, "dry-run-a").await, namespace(&client, "dry-run-b").await);
    let kubeconfig = kubeconfig_path().display().to_string();
    // The Prometheus Operator's own CRDs, for the ServiceMonitor and PrometheusRule.
    let monitoring = std::env::var("GPU_SHOPPER_MONITORING_CRDS").unwrap_or_else(|_| {
        let out =
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/monitoring-crds/fetch.sh")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let (ok, _, stderr) = run(Command::new(kubectl_path()).args([
        "apply",
        "--server-side",
        "--kubeconfig",
        &kubeconfig,
        "-f",
        &monitoring,
    ]));
    assert!(ok, "installing the monitoring CRDs: {stderr}");
    let (ok, _, stderr) = run(Command::new(kubectl_path()).args([
        "wait",
        "--kubeconfig",
        &kubeconfig,
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]));
    assert!(ok, "{stderr}");
    for values in value_combinations(&team_a, &team_b) {
        let (ok, rendered, stderr) =
            run(Command::new(helm()).args(["template", "gs", CHART, "--namespace", &ns]).args(&values));
        assert!(ok, "helm template {values:?}: {stderr}");
        let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        let mut apply = Command::new(kubectl_path())
            .args(["apply", "--dry-run=server", "--kubeconfig", &kubeconfig, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        apply.stdin.take().unwrap().write_all(rendered.as_bytes()).unwrap();
        let out = apply.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the API server refused the chart with {values:?}: {stderr}");
        let accepted = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
        assert_eq!(accepted, kinds, "every object is checked by the server with {values:?}: {stdout}");
    }
    for name in [&ns, &team_a, &team_b] {
        delete_namespace(&client, name).await;
    }
}

/// The tests that change the cluster's CRDs run one at a time.
static CRDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
#[ignore = "needs helm and a real API server: run `make test`"]
async fn helm_install_creates_everything_and_the_chart_rbac_runs_a_whole_session() {
    let _crds = CRDS.lock().await;
    let client = client().await;
    let ns = namespace(&client, "helm").await;
    // A second watched namespace: its sessions work through a Role of its own.
    let team = namespace(&client, "helm-team").await;
    let release = ns.as_str(); // cluster-scoped names stay unique per run
    let (ok, stdout, stderr) = run(Command::new(helm()).args([
        "install",
        release,
        CHART,
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig_path().to_str().unwrap(),
        "--set",
        &format!("deploymentId={ns}"),
        "--set",
        &format!("watchNamespaces={{{ns},{team}}}"),
        // The CRDs are shared by every test (the upgrade test has Helm own them); the
        // guard is a Job, and this control plane runs no pods.
        "--set",
        "crds.install=false",
        "--set",
        "uninstallGuard.enabled=false",
    ]));
    assert!(ok, "helm install: {stdout}{stderr}");
    let name = format!("{release}-gpu-shopper");
    Api::<ServiceAccount>::namespaced(client.clone(), &ns).get(&name).await.expect("ServiceAccount");
    Api::<Deployment>::namespaced(client.clone(), &ns).get(&name).await.expect("Deployment");
    Api::<Service>::namespaced(client.clone(), &ns).get(&name).await.expect("Service");
    Api::<Role>::namespaced(client.clone(), &ns).get(&format!("{name}-leader-election")).await.expect("Role");
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-leader-election"))
        .await
        .expect("RoleBinding");
    Api::<ClusterRole>::all(client.clone()).get(&name).await.expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone()).get(&name).await.expect("ClusterRoleBinding");
    install_crds(&client).await; // helm installed them if absent; wait until they are served

    // The operator, out of cluster, as the chart's ServiceAccount: RBAC is enforced by the API server.
    let kubeconfig = impersonating_kubeconfig(&format!("system:serviceaccount:{ns}:{name}"), &ns);
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 100;
    let sim = simulator::start(market, 0).await.unwrap();
    let mut env: Vec<(&str, String)> = sim.env();
    env.push(("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()));
    env.push(("POD_NAMESPACE", ns.clone()));
    env.push(("WATCH_NAMESPACE", format!("{ns},{team}")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = ControllerProcess::start_with_env_named(&ns, "as-chart-sa", &env);
    controller.wait_ready().await;

    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let session: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "rbac"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"]}, "workload": {"kind": "Job", "command": "echo ok"}},
    }))
    .unwrap();
    sessions.create(&PostParams::default(), &session).await.unwrap();
    let team_sessions: Api<GpuSession> = Api::namespaced(client.clone(), &team);
    team_sessions.create(&PostParams::default(), &session).await.unwrap();
    // An Inference session: the chart's RBAC creates its Service, gateway and the gateway's Role.
    let model: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "model"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"]},
            "workload": {"kind": "Inference", "inference": {"model": "m", "gateway": {"allowedFrom": [{"podSelector": {}}]}}}},
    }))
    .unwrap();
    team_sessions.create(&PostParams::default(), &model).await.unwrap();
    let done = wait_for("the job session to succeed under the chart's RBAC", Duration::from_secs(60), || async {
        let s = sessions.get("rbac").await.ok()?;
        (s.status.as_ref()?.reason.as_deref() == Some("JobSucceeded")).then_some(s)
    })
    .await;
    wait_for("the other namespace's session too", Duration::from_secs(60), || async {
        let s = team_sessions.get("rbac").await.ok()?;
        (s.status.as_ref()?.reason.as_deref() == Some("JobSucceeded")).then_some(())
    })
    .await;
    wait_for("the Inference session's gateway Role, made under the chart's RBAC", Duration::from_secs(60), || async {
        Api::<Role>::namespaced(client.clone(), &team).get_opt("model-gateway").await.ok()?.map(|_| ())
    })
    .await;
    Api::<Service>::namespaced(client.clone(), &team).get("model").await.expect("the session's Service");
    Api::<Deployment>::namespaced(client.clone(), &team).get("model-gateway").await.expect("the gateway");
    let policy = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), &team);
    policy.get("model-gateway").await.expect("the NetworkPolicy");
    assert!(find(&done.status.as_ref().unwrap().conditions, types::CUDA_VERIFIED).is_some_and(|c| c.status == "True"));
    let log = controller.log();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC refused something the operator needs: {}",
        controller.log_path.display()
    );

    // And no more than needed: the ServiceAccount cannot delete Secrets, read Secrets of other
    // namespaces, touch unrelated resources, or rewrite a session's spec.
    let as_sa = support::client_from(&kubeconfig).await;
    let elsewhere = Api::<Secret>::namespaced(as_sa.clone(), "default").list(&Default::default()).await;
    assert!(matches!(elsewhere, Err(kube::Error::Api(ref s)) if s.code == 403), "{elsewhere:?}");
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(as_sa.clone(), &ns).list(&Default::default()).await;
    assert!(matches!(pods, Err(kube::Error::Api(ref s)) if s.code == 403), "{pods:?}");
    let denied = Api::<Secret>::namespaced(as_sa.clone(), &ns).delete("rbac-ssh", &DeleteParams::default()).await;
    assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "{denied:?}");
    let mut edited = sessions.get("rbac").await.unwrap();
    edited.spec.consumer = Some("not-allowed".into());
    let denied = Api::<GpuSession>::namespaced(as_sa, &ns).replace("rbac", &PostParams::default(), &edited).await;
    assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "{denied:?}");

    // A team member holding Kubernetes' built-in `edit` role in the namespace uses
    // sessions through the chart's aggregated roles, and cannot write their status.
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "alice-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&PostParams::default(), &binding).await.unwrap();
    let as_alice = support::client_from(&impersonating_kubeconfig("alice", &format!("{ns}-alice"))).await;
    let alice_sessions = Api::<GpuSession>::namespaced(as_alice.clone(), &ns);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let mut mine = session.clone();
    mine.metadata.name = Some("alices".into());
    wait_for("`edit` to carry the chart's aggregated role", Duration::from_secs(30), || async {
        alice_sessions.create(&dry_run, &mine).await.ok().map(|_| ())
    })
    .await;
    alice_sessions.list(&Default::default()).await.expect("edit reads sessions");
    let status_patch = json!({"status": {"instanceId": "1"}});
    let denied = alice_sessions.patch_status("rbac", &PatchParams::default(), &Patch::Merge(&status_patch)).await;
    assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "edit must not write status: {denied:?}");
    Api::<ClusterRole>::all(client.clone()).get(&format!("{name}-view")).await.expect("the view role");

    sessions.delete("rbac", &DeleteParams::default()).await.unwrap();
    team_sessions.delete("rbac", &DeleteParams::default()).await.unwrap();
    team_sessions.delete("model", &DeleteParams::default()).await.unwrap();
    wait_for("the sessions to go", Duration::from_secs(60), || async {
        (sessions.get_opt("rbac").await.unwrap().is_none()
            && team_sessions.get_opt("rbac").await.unwrap().is_none()
            && team_sessions.get_opt("model").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    assert!(sim.instances().iter().all(|i| i.destroyed));
    drop(controller);
    let (ok, _, stderr) = run(Command::new(helm()).args([
        "uninstall",
        release,
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig_path().to_str().unwrap(),
    ]));
    assert!(ok, "helm uninstall: {stderr}");
    delete_namespace(&client, &team).await;
    delete_namespace(&client, &ns).await;
}

/// The test kubeconfig, acting as `user` (the admin may impersonate).
fn impersonating_kubeconfig(user: &str, ns: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let mut config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let auth = &mut config["users"][0]["user"];
    auth["as"] = serde_json::Value::String(user.into());
    auth["as-groups"] =
        serde_json::json!(["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated",]);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{ns}"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
#[ignore = "needs helm and a real API server: run `make test`"]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let _crds = CRDS.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "crd-upgrade").await;
    let release = ns.as_str();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names = ["gpusessions.gpushopper.dev", "gpuofferfilters.gpushopper.dev"];
    // CRDs installed before (by crds/ or by hand) are adopted as docs/upgrading.md says.
    for name in names {
        let adopt = json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": &ns},
        }});
        crds.patch(name, &PatchParams::default(), &Patch::Merge(&adopt)).await.unwrap();
    }
    let helm_in = |chart: &str, verb: &str| {
        let kubeconfig = kubeconfig_path().display().to_string();
        run(Command::new(helm()).args([
            verb,
            release,
            chart,
            "--namespace",
            &ns,
            "--kubeconfig",
            &kubeconfig,
            "--set",
            &format!("deploymentId={ns}"),
            "--set",
            "uninstallGuard.enabled=false",
        ]))
    };
    let (ok, stdout, stderr) = helm_in(CHART, "install");
    assert!(ok, "helm install: {stdout}{stderr}");
    let sessions_crd = crds.get(names[0]).await.unwrap();
    assert_eq!(sessions_crd.annotations().get("helm.sh/resource-policy").map(String::as_str), Some("keep"));

    // A new chart version whose CRD has one more printer column: `helm upgrade` applies it.
    let newer = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chart-{ns}"));
    let _ = std::fs::remove_dir_all(&newer);
    copy_dir(std::path::Path::new(CHART), &newer);
    let crd_file = newer.join("files/crds.yaml");
    let text = std::fs::read_to_string(&crd_file).unwrap();
    assert!(!text.contains("UpgradeTest"));
    let changed = text.replace(
        "  - additionalPrinterColumns:\n",
        "  - additionalPrinterColumns:\n    - jsonPath: .metadata.name\n      name: UpgradeTest\n      type: string\n",
    );
    std::fs::write(&crd_file, changed).unwrap();
    let (ok, stdout, stderr) = helm_in(newer.to_str().unwrap(), "upgrade");
    assert!(ok, "helm upgrade: {stdout}{stderr}");
    let columns = |crd: CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };
    assert!(columns(crds.get(names[0]).await.unwrap()).contains(&"UpgradeTest".to_string()), "the CRD was upgraded");
    // And back: the upgrade to the chart as it is restores the CRDs every other test uses.
    let (ok, stdout, stderr) = helm_in(CHART, "upgrade");
    assert!(ok, "helm upgrade back: {stdout}{stderr}");
    assert!(!columns(crds.get(names[0]).await.unwrap()).contains(&"UpgradeTest".to_string()));

    // Uninstall keeps the CRDs: deleting them would delete every session and orphan its machine.
    let kubeconfig = kubeconfig_path().display().to_string();
    let (ok, _, stderr) =
        run(Command::new(helm()).args(["uninstall", release, "--namespace", &ns, "--kubeconfig", &kubeconfig]));
    assert!(ok, "helm uninstall: {stderr}");
    for name in names {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} was kept");
    }
    install_crds(&client).await;
    delete_namespace(&client, &ns).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`"]
async fn the_uninstall_guard_refuses_while_a_session_exists_and_the_chart_runs_it_before_delete() {
    // Applying the CRDs mid-way through the upgrade test would undo the column it checks for.
    let _crds = CRDS.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "guard").await;
    let guard = || {
        let out = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"))
            .args(["uninstall-guard", "--watch-namespace", &ns])
            .env_clear()
            .env("KUBECONFIG", kubeconfig_path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(guard().0, Some(0), "nothing to protect: uninstall may go on");
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let session: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "busy"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"]}},
    }))
    .unwrap();
    sessions.create(&PostParams::default(), &session).await.unwrap();
    let (code, stderr) = guard();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{ns}/busy")) && stderr.contains("keep billing"), "{stderr}");
    sessions.delete("busy", &DeleteParams::default()).await.unwrap();
    delete_namespace(&client, &ns).await;

    // The chart runs exactly that as a pre-delete hook, as the operator's ServiceAccount.
    let docs = render(&["--set", "deploymentId=x", "--set", "watchNamespace=ml"]);
    let job = kind(&docs, "Job");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"].as_str(), Some("pre-delete"));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"][0].as_str(), Some("uninstall-guard"));
    assert_eq!(pod["serviceAccountName"], kind(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]);
}

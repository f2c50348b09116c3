//! Inference sessions serve the cluster: the objects the operator creates for
//! a session's endpoint, and the gateway run exactly as its Deployment would
//! run it (the same command and environment, with a token of its own
//! ServiceAccount, so its Role is proven enough) against the real API server
//! and a simulated machine whose model listens on its loopback only.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{GpuSession, ProviderName};
use gpu_shopper::simulator::world::Fate;
use support::sessions::*;
use support::*;

fn inference(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]},
        "workload": {"kind": "Inference", "inference": {"model": "llama-3-8b"}},
        "timeouts": {"sshReady": "20s"},
    });
    merge(&mut spec, extra);
    spec
}

fn condition_true(session: &GpuSession, type_: &str) -> bool {
    session.status.as_ref().and_then(|s| find(&s.conditions, type_)).is_some_and(|c| c.status == "True")
}

/// `gpu-shopper gateway` as the operator's Deployment runs it: its args and env,
/// the downward API filled in as the kubelet would, and a kubeconfig holding a
/// token of the gateway's ServiceAccount (TokenRequest), so it can do no more
/// than its Role allows.
struct RunningGateway {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_gateway_as_deployed(h: &Harness, session: &str) -> RunningGateway {
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), &h.ns);
    let deployment = deployments.get(&format!("{session}-gateway")).await.unwrap();
    let pod = deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let container = &pod.containers[0];
    let account = pod.service_account_name.clone().unwrap();
    let config_path =
        service_account_kubeconfig(&h.client, &h.ns, &account, &format!("{}-{session}-gateway", h.ns)).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gateways");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{}-{session}.log", h.ns));
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"));
    command.args(container.args.clone().unwrap_or_default()).env_clear().env("KUBECONFIG", &config_path);
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, var.value_from.as_ref().and_then(|f| f.field_ref.as_ref())) {
            (Some(value), _) => value.clone(),
            (None, Some(field)) if field.field_path == "metadata.name" => format!("{session}-gateway-7c9d-x2x4p"),
            (None, Some(field)) if field.field_path == "metadata.namespace" => h.ns.clone(),
            (None, other) => {
                panic!("the gateway's env {} comes from something the test cannot fill: {other:?}", var.name)
            }
        };
        command.env(&var.name, value);
    }
    // Its own port here: the pod's 0.0.0.0:8080 would collide between tests on one machine.
    command.env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"));
    let file = std::fs::File::create(&log).unwrap();
    let child = command
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn gpu-shopper gateway");
    let gateway = RunningGateway { child, port, log };
    wait_for("the gateway's /healthz", Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    gateway
}

async fn api_key(h: &Harness, secret: &str, field: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let secret = secrets.get(secret).await.unwrap();
    String::from_utf8(secret.data.unwrap()[field].0.clone()).unwrap()
}

async fn complete(port: u16, key: Option<&str>, stream: bool) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/completions"))
        .json(&json!({"model": "llama-3-8b", "prompt": "Say hello.", "max_tokens": 8, "stream": stream}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn an_inference_session_is_served_in_the_cluster_through_its_gateway_and_survives_replacement() {
    let h = Harness::new("gateway", fast_market()).await;
    h.apply("llama", inference(json!({}))).await;
    let ready = h.wait_ready("llama").await;
    let st = status(&ready);
    let uid = ready.uid().unwrap();

    // The objects, each owned by the session.
    let ns = h.ns.clone();
    let owned =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| refs.iter().any(|o| o.uid == uid);
    let service = Api::<Service>::namespaced(h.client.clone(), &ns).get("llama").await.unwrap();
    assert!(owned(service.owner_references()));
    assert_eq!(service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 8000);
    for check in [
        owned(
            Api::<Deployment>::namespaced(h.client.clone(), &ns).get("llama-gateway").await.unwrap().owner_references(),
        ),
        owned(
            Api::<ServiceAccount>::namespaced(h.client.clone(), &ns)
                .get("llama-gateway")
                .await
                .unwrap()
                .owner_references(),
        ),
        owned(Api::<Role>::namespaced(h.client.clone(), &ns).get("llama-gateway").await.unwrap().owner_references()),
        owned(
            Api::<RoleBinding>::namespaced(h.client.clone(), &ns)
                .get("llama-gateway")
                .await
                .unwrap()
                .owner_references(),
        ),
        owned(Api::<Lease>::namespaced(h.client.clone(), &ns).get("llama-gateway").await.unwrap().owner_references()),
        owned(Api::<Secret>::namespaced(h.client.clone(), &ns).get("llama-api-key").await.unwrap().owner_references()),
    ] {
        assert!(check, "every endpoint object is owned by the session");
    }
    assert_eq!(st.endpoints[0].url, format!("http://llama.{ns}.svc:8000"));
    assert!(st.endpoints[0].public_url.is_none(), "no public port was asked for");
    assert!(!condition_true(&ready, types::ENDPOINT_READY), "no gateway runs yet");
    // The model port is not exposed at the marketplace: only SSH is mapped.
    let instance = st.instance_id.clone().unwrap();
    let machine = h.sim.sim.world().find(ProviderName::Vastai, &instance).unwrap().clone();
    assert!(machine.port_map.is_empty(), "no public port for the model: {:?}", machine.port_map);

    let gateway = run_gateway_as_deployed(&h, "llama").await;
    let served = h.wait_until("llama", "EndpointReady", |s| condition_true(s, types::ENDPOINT_READY)).await;
    let message = find(&status(&served).conditions, types::ENDPOINT_READY).unwrap().message.clone();
    assert!(message.contains(&instance), "{message}");

    let key = api_key(&h, "llama-api-key", "api-key").await;
    let answer = complete(gateway.port, Some(&key), false).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["choices"][0]["text"].as_str().unwrap().contains("Hello"), "{body}");
    assert_eq!(complete(gateway.port, None, false).await.status(), 401, "no key, no model");
    assert_eq!(complete(gateway.port, Some("gs-not-the-key"), false).await.status(), 401);
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", gateway.port)).await.unwrap();
    assert_eq!(health.status(), 200, "health needs no key");

    // The CLI: the address and the client's two lines, and the same forwarding from a laptop.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gpu-shopper"))
            .args(args)
            .args(["-n", &ns])
            .env_clear()
            .env("KUBECONFIG", kubeconfig_path())
            .env("HOME", env!("CARGO_TARGET_TMPDIR"))
            .output()
            .unwrap()
    };
    let shown = cli(&["endpoint", "llama"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("http://llama.{ns}.svc:8000 (serving)")));
    let env = String::from_utf8_lossy(&cli(&["endpoint", "llama", "--env"]).stdout).into_owned();
    assert_eq!(env, format!("OPENAI_BASE_URL=http://llama.{ns}.svc:8000/v1\nOPENAI_API_KEY={key}\n"));
    let local = free_port();
    let mut forward = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"))
        .args(["port-forward", "llama", &format!("{local}:8000"), "-n", &ns])
        .env_clear()
        .env("KUBECONFIG", kubeconfig_path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let models = wait_for("the port-forward to carry a request", Duration::from_secs(20), || async {
        let answer = reqwest::get(format!("http://127.0.0.1:{local}/v1/models")).await.ok()?;
        answer.status().is_success().then_some(answer)
    })
    .await;
    assert!(models.text().await.unwrap().contains("llama-3-8b"), "the model, over SSH, from here");
    let _ = forward.kill();
    let _ = forward.wait();

    // A streamed completion arrives in pieces, as the model sends them.
    let mut streamed = complete(gateway.port, Some(&key), true).await;
    assert_eq!(streamed.status(), 200);
    let (mut chunks, first) = (Vec::new(), Instant::now());
    while let Some(chunk) = streamed.chunk().await.unwrap() {
        chunks.push((first.elapsed(), chunk));
    }
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).into_owned()).collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(chunks.len() >= 4, "streamed in pieces, not gathered: {} chunks", chunks.len());
    assert!(chunks.last().unwrap().0 > chunks[0].0 + Duration::from_millis(60), "pieces came over time");

    // The machine vanishes: onInstanceLoss Replace rents another; the same gateway answers again.
    let vanished = Instant::now();
    assert!(h.sim.befall(&instance, Fate::Vanish));
    let mut saw_503 = false;
    let back = loop {
        assert!(vanished.elapsed() < WAIT, "the gateway did not answer again; log: {}", gateway.log.display());
        let answer = complete(gateway.port, Some(&key), false).await;
        match answer.status().as_u16() {
            200 if saw_503 => break vanished.elapsed(),
            503 => {
                assert!(answer.headers().contains_key("retry-after"), "a 503 says when to try again");
                saw_503 = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replaced = h.wait_ready("llama").await;
    let second = status(&replaced).instance_id.clone().unwrap();
    assert_ne!(second, instance, "a new machine");
    println!("gateway answered again {:.1} s after the machine vanished", back.as_secs_f64());

    // Metrics: requests by code, reconnects, time without a machine.
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", gateway.port)).await.unwrap().text().await.unwrap();
    for series in [
        "gpu_shopper_gateway_requests_total{code=\"200\"}",
        "gpu_shopper_gateway_requests_total{code=\"401\"}",
        "gpu_shopper_gateway_logins_total 2",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    assert!(!metrics.contains(&key), "the key is never in metrics");

    // A host key that is not the pinned one is refused and reported.
    let sessions: Api<GpuSession> = Api::namespaced(h.client.clone(), &ns);
    let foreign = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let patch = json!({"status": {"ssh": {"hostKeyFingerprint": foreign}}});
    sessions.patch_status("llama", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    h.expect_event("HostKeyChanged").await;
    assert_eq!(complete(gateway.port, Some(&key), false).await.status(), 503, "a foreign host key is not served");

    let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
    assert!(!log.contains(&key), "the API key is never logged");
    for object in ["events", "status"] {
        let text = format!(
            "{:?}",
            if object == "status" {
                json!(status(&sessions.get("llama").await.unwrap()))
            } else {
                json!(h.events("Ready").await)
            }
        );
        assert!(!text.contains(&key), "the API key is not in {object}");
    }
    drop(gateway);
    // Everything goes with the session (the API server's garbage collector, by owner).
    h.delete_and_wait_gone("llama").await;
    wait_for("the endpoint's objects to go with the session", WAIT, || async {
        let gone = Api::<Service>::namespaced(h.client.clone(), &ns).get_opt("llama").await.unwrap().is_none()
            && Api::<Deployment>::namespaced(h.client.clone(), &ns).get_opt("llama-gateway").await.unwrap().is_none()
            && Api::<Role>::namespaced(h.client.clone(), &ns).get_opt("llama-gateway").await.unwrap().is_none()
            && Api::<Secret>::namespaced(h.client.clone(), &ns).get_opt("llama-api-key").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_users_own_api_key_and_network_policy_are_used_and_bad_input_rents_nothing() {
    let h = Harness::new("gateway-input", fast_market()).await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns);

    // The user's key Secret is missing, then has no such key: a condition each, nothing rented.
    let own = json!({"workload": {"inference": {"apiKeySecretRef": {"name": "team-key", "key": "token"},
        "gateway": {"allowedFrom": [{"podSelector": {"matchLabels": {"role": "client"}}}]}}}});
    h.apply("mine", inference(own)).await;
    h.wait_until("mine", "ApiKeySecretNotFound", |s| {
        s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("ApiKeySecretNotFound")
    })
    .await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "team-key"}, "stringData": {"other": "x"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    h.wait_until("mine", "ApiKeyMissing", |s| {
        s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("ApiKeyMissing")
    })
    .await;
    assert!(h.live_instances().is_empty(), "bad input rents nothing");
    let patch = json!({"stringData": {"token": "team-secret-key"}});
    secrets.patch("team-key", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    h.wait_ready("mine").await;
    assert!(secrets.get_opt("mine-api-key").await.unwrap().is_none(), "no key of the operator's beside the user's");
    let policy = Api::<NetworkPolicy>::namespaced(h.client.clone(), &h.ns).get("mine-gateway").await.unwrap();
    let from = &policy.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap()[0];
    assert_eq!(from.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["role"], "client");
    let gateway = run_gateway_as_deployed(&h, "mine").await;
    h.wait_until("mine", "EndpointReady", |s| condition_true(s, types::ENDPOINT_READY)).await;
    assert_eq!(complete(gateway.port, Some("team-secret-key"), false).await.status(), 200);
    drop(gateway);

    // A Service of that name that the session does not own is never overwritten.
    let taken: Service = serde_json::from_value(json!({"metadata": {"name": "taken", "labels": {"mine": "yes"}},
        "spec": {"ports": [{"port": 80}]}}))
    .unwrap();
    services.create(&PostParams::default(), &taken).await.unwrap();
    h.apply("taken", inference(json!({}))).await;
    let refused = h
        .wait_until("taken", "EndpointNameTaken", |s| {
            s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("EndpointNameTaken")
        })
        .await;
    let condition = find(&status(&refused).conditions, types::ENDPOINT_READY).unwrap();
    assert!(condition.message.contains("Service \"taken\""), "{}", condition.message);
    let still = services.get("taken").await.unwrap();
    assert_eq!(still.labels().get("mine").map(String::as_str), Some("yes"), "left as it was");
    assert_eq!(still.spec.unwrap().ports.unwrap()[0].port, 80);
    h.finish().await;
}

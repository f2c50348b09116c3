//! A simulated instance is a real machine as far as the operator can tell:
//! a real SSH server that accepts only the key it was created with, tells the
//! truth about its GPU in `nvidia-smi`, and runs commands.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use gpu_shopper::crd::{OfferRequirements, ProviderName};
use gpu_shopper::keys;
use gpu_shopper::probe::ssh::{self, SshError, Target};
use gpu_shopper::provider::http::CallPolicy;
use gpu_shopper::provider::runpod::RunPod;
use gpu_shopper::provider::tensordock::TensorDock;
use gpu_shopper::provider::vastai::VastAi;
use gpu_shopper::provider::{CreateRequest, Instance, InstanceLabel, InstanceState, OfferQuery, Provider, SshTarget};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::{self, SimulatorHandle};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn sim() -> SimulatorHandle {
    let mut market = Market::builtin();
    market.timings.created_ms = 20;
    market.timings.loading_ms = 50;
    simulator::start(market, 0).await.unwrap()
}

fn client(sim: &SimulatorHandle, provider: ProviderName) -> Arc<dyn Provider> {
    let keys = sim.sim.world().market.keys.clone();
    let policy = CallPolicy::default();
    match provider {
        ProviderName::Vastai => Arc::new(VastAi::new(&sim.vastai_url, SecretString::from(keys.vastai), policy)),
        ProviderName::Tensordock => {
            Arc::new(TensorDock::new(&sim.tensordock_url, SecretString::from(keys.tensordock), policy))
        }
        ProviderName::Runpod => Arc::new(RunPod::new(&sim.runpod_url, SecretString::from(keys.runpod), policy)),
    }
}

/// Rents the cheapest offer matching `model` and waits until it runs with an SSH endpoint.
async fn rent(provider: &Arc<dyn Provider>, model: &str, public_key: &str) -> (Instance, SshTarget) {
    let offers = provider
        .search_offers(&OfferQuery {
            requirements: OfferRequirements::default(),
            limit: 50,
            disk_gb: 0,
            public_ports: false,
        })
        .await
        .unwrap();
    let offer = offers.into_iter().find(|o| o.gpu_model.contains(model) && !o.interruptible).expect("offer");
    let request = CreateRequest {
        offer,
        label: InstanceLabel::new("ssh-test", "uid"),
        ssh_public_key: public_key.to_string(),
        image: "cuda".into(),
        start_script: None,
        env: vec![("GREETING".into(), "hello from the box".into())],
        ports: vec![],
        disk_gb: 20,
        min_cuda_version: None,
    };
    let instance = provider.create_instance(&request).await.unwrap();
    for _ in 0..100 {
        let got = provider.get_instance(&instance.id).await.unwrap().unwrap();
        if let (InstanceState::Running, Some(ssh)) = (&got.state, got.ssh.clone()) {
            return (got, ssh);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never running");
}

fn target<'a>(ssh: &'a SshTarget, user: &'a str, pinned: Option<&'a str>) -> Target<'a> {
    Target { host: &ssh.host, port: ssh.port, user, pinned_fingerprint: pinned }
}

#[tokio::test]
async fn nvidia_smi_tells_the_real_cuda_not_the_advertised_one() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    let pair = keys::generate("session").unwrap();
    let key = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
    // Host 4101 advertises CUDA 12.9 and really has 12.8.
    let (instance, endpoint) = rent(&vast, "4090", &pair.public_openssh).await;
    let advertised = vast
        .search_offers(&OfferQuery { requirements: Default::default(), limit: 50, disk_gb: 0, public_ports: false })
        .await
        .unwrap();
    assert_eq!(advertised.iter().find(|o| o.id == "4101").unwrap().cuda_version.as_deref(), Some("12.9"));

    let out = ssh::run(&target(&endpoint, "root", None), key.clone(), "nvidia-smi", TIMEOUT).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.stdout.contains("CUDA Version: 12.8"), "{}", out.stdout);
    assert!(out.stdout.contains("RTX 4090"));
    assert!(out.host_fingerprint.starts_with("SHA256:"));

    let query = "nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader,nounits";
    let out =
        ssh::run(&target(&endpoint, "root", Some(&out.host_fingerprint)), key.clone(), query, TIMEOUT).await.unwrap();
    assert_eq!(out.stdout.trim(), "NVIDIA RTX 4090, 24576, 550.54.15, 0");

    // Any other command really runs, with the instance's env, and its exit code comes back.
    let out = ssh::run(&target(&endpoint, "root", None), key, "echo \"$GREETING\"; echo oops >&2; exit 3", TIMEOUT)
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.stdout.trim(), out.stderr.trim()), (Some(3), "hello from the box", "oops"));
    vast.destroy_instance(&instance.id).await.unwrap();
}

#[tokio::test]
async fn the_ssh_server_rejects_every_key_but_the_one_it_was_created_with() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let pair = keys::generate("session").unwrap();
        let (instance, endpoint) = rent(&provider, "4090", &pair.public_openssh).await;
        let right = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
        let other = keys::generate("intruder").unwrap();
        let wrong = Arc::new(keys::parse_private(&other.private_openssh).unwrap());

        let user = endpoint.user.clone();
        let ok = ssh::run(&target(&endpoint, &user, None), right.clone(), "true", TIMEOUT).await;
        assert_eq!(ok.unwrap().exit_code, Some(0), "{provider_name}");
        let refused = ssh::run(&target(&endpoint, &user, None), wrong, "true", TIMEOUT).await;
        assert!(matches!(refused, Err(SshError::AuthRejected { .. })), "{provider_name}: {:?}", refused.err());
        let nobody = ssh::run(&target(&endpoint, "admin", None), right.clone(), "true", TIMEOUT).await;
        assert!(matches!(nobody, Err(SshError::AuthRejected { .. })), "{provider_name}: unknown user");

        if provider_name == ProviderName::Tensordock {
            // The key was injected by cloud-init for root as well as `user`.
            let root = ssh::run(&target(&endpoint, "root", None), right.clone(), "true", TIMEOUT).await;
            assert_eq!(root.unwrap().exit_code, Some(0));
        }

        // After destroy, nothing answers.
        provider.destroy_instance(&instance.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let gone = ssh::run(&target(&endpoint, &user, None), right, "true", Duration::from_secs(2)).await;
        assert!(gone.is_err(), "{provider_name}: a destroyed machine still answers SSH");
    }
}

#[tokio::test]
async fn a_changed_host_key_is_refused_once_pinned() {
    let sim = sim().await;
    let runpod = client(&sim, ProviderName::Runpod);
    let pair = keys::generate("session").unwrap();
    let key = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
    let (_, endpoint) = rent(&runpod, "4090", &pair.public_openssh).await;
    let pinned = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let result = ssh::run(&target(&endpoint, "root", Some(pinned)), key, "true", TIMEOUT).await;
    assert!(matches!(result, Err(SshError::HostKeyChanged { .. })), "{:?}", result.err());
}

async fn rent_inference(provider: &Arc<dyn Provider>, offer_id_prefix: &str, image: &str) -> Instance {
    let offers = provider
        .search_offers(&OfferQuery {
            requirements: OfferRequirements::default(),
            limit: 50,
            disk_gb: 0,
            public_ports: false,
        })
        .await
        .unwrap();
    let offer = offers.into_iter().find(|o| o.id.starts_with(offer_id_prefix) && !o.interruptible).expect("offer");
    let request = CreateRequest {
        offer,
        label: InstanceLabel::new("inference-test", "uid"),
        ssh_public_key: keys::generate("s").unwrap().public_openssh,
        image: image.into(),
        start_script: None,
        env: vec![("GPU_SHOPPER_MODEL".into(), "meta-llama/Llama-3.1-8B-Instruct".into())],
        ports: vec![8000],
        disk_gb: 40,
        min_cuda_version: None,
    };
    let created = provider.create_instance(&request).await.unwrap();
    for _ in 0..200 {
        let got = provider.get_instance(&created.id).await.unwrap().unwrap();
        if got.state == InstanceState::Running && got.endpoint(8000).is_some() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no endpoint for port 8000");
}

async fn prompt(base: &str) -> reqwest::Response {
    let body =
        serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "Say hello.", "max_tokens": 8});
    reqwest::Client::new().post(format!("{base}/v1/completions")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn the_model_server_answers_after_loading_on_every_marketplace() {
    let sim = sim().await;
    for (provider_name, offer) in [
        (ProviderName::Vastai, "4102"),
        (ProviderName::Tensordock, "loc-chi-1"),
        (ProviderName::Runpod, "NVIDIA GeForce RTX 4090"),
    ] {
        let provider = client(&sim, provider_name);
        let instance = rent_inference(&provider, offer, "vllm/vllm-openai:v0.6.4").await;
        let endpoint = instance.endpoint(8000).unwrap();
        let base = format!("http://{}:{}", endpoint.host, endpoint.port);
        // Loading: not ready yet, then the model is listed.
        let first = reqwest::get(format!("{base}/v1/models")).await.unwrap();
        assert_eq!(first.status(), 503, "{provider_name}: still loading");
        let mut listed = None;
        for _ in 0..200 {
            let response = reqwest::get(format!("{base}/v1/models")).await.unwrap();
            if response.status().is_success() {
                listed = Some(response.json::<serde_json::Value>().await.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listed = listed.unwrap_or_else(|| panic!("{provider_name}: model never loaded"));
        assert_eq!(listed["data"][0]["id"], "meta-llama/Llama-3.1-8B-Instruct");
        let answer = prompt(&base).await;
        assert!(answer.status().is_success(), "{provider_name}");
        let answer: serde_json::Value = answer.json().await.unwrap();
        assert!(answer["choices"][0]["text"].as_str().unwrap().contains("Hello"));
        provider.destroy_instance(&instance.id).await.unwrap();
    }
}

#[tokio::test]
async fn the_model_server_crashes_on_the_first_prompt_when_the_host_cuda_is_too_old() {
    let mut market = Market::builtin();
    market.timings.created_ms = 10;
    market.timings.loading_ms = 10;
    market.inference.load_ms = 10;
    let sim = simulator::start(market, 0).await.unwrap();
    let vast = client(&sim, ProviderName::Vastai);
    // Host 4101 advertises CUDA 12.9, really has 12.8; this image needs 12.9.
    let instance = rent_inference(&vast, "4101", "vllm/vllm-openai:v0.10.1").await;
    let endpoint = instance.endpoint(8000).unwrap();
    let base = format!("http://{}:{}", endpoint.host, endpoint.port);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let models = reqwest::get(format!("{base}/v1/models")).await.unwrap();
    assert!(models.status().is_success(), "the model loads fine");
    let first = prompt(&base).await;
    assert_eq!(first.status(), 500);
    assert!(first.text().await.unwrap().contains("CUDA error"));
    let after = reqwest::get(format!("{base}/v1/models")).await.unwrap();
    assert!(!after.status().is_success(), "the engine is dead after the crash");
}

#[tokio::test]
async fn a_missing_driver_and_a_late_key_look_like_the_real_failures() {
    use gpu_shopper::simulator::world::Faults;
    let sim = sim().await;
    let td = client(&sim, ProviderName::Tensordock);
    sim.set_faults(ProviderName::Tensordock, Faults { driver_missing: true, key_delay_ms: 400, ..Default::default() });
    let pair = keys::generate("session").unwrap();
    let key = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
    let (_, endpoint) = rent(&td, "4090", &pair.public_openssh).await;
    let early = ssh::run(&target(&endpoint, "user", None), key.clone(), "true", TIMEOUT).await;
    assert!(matches!(early, Err(SshError::AuthRejected { .. })), "the key has not propagated yet");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let out = ssh::run(&target(&endpoint, "user", None), key, "nvidia-smi", TIMEOUT).await.unwrap();
    assert_eq!(out.exit_code, Some(127));
    assert!(out.stderr.contains("nvidia-smi: not found"));
}

#[tokio::test]
async fn the_control_endpoint_shows_instances_and_switches_faults_and_utilisation() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    let pair = keys::generate("session").unwrap();
    let key = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
    let (instance, endpoint) = rent(&vast, "4090", &pair.public_openssh).await;
    let http = reqwest::Client::new();

    let state: serde_json::Value =
        http.get(format!("{}/state", sim.control_url)).send().await.unwrap().json().await.unwrap();
    let listed = &state["instances"][0];
    assert_eq!(listed["id"], instance.id.as_str());
    assert_eq!(listed["label"], "gpushopper.ssh-test.uid");
    assert!(state["calls"].as_array().unwrap().iter().any(|c| c["path"] == "/asks/{id}/"));

    let busy = http
        .put(format!("{}/instances/{}/utilization", sim.control_url, instance.id))
        .json(&serde_json::json!({"percent": 87}))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 204);
    let query = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits";
    let out = ssh::run(&target(&endpoint, "root", None), key, query, TIMEOUT).await.unwrap();
    assert_eq!(out.stdout.trim(), "87");

    let faults = serde_json::json!({"authFailure": true});
    let set = http.put(format!("{}/faults/vastai", sim.control_url)).json(&faults).send().await.unwrap();
    assert_eq!(set.status(), 204);
    let refused = vast.list_instances(&["ssh-test".to_string()]).await.unwrap_err();
    assert!(matches!(refused, gpu_shopper::provider::ProviderError::AuthFailed { .. }));
}

#[tokio::test]
async fn a_machine_forwards_ssh_connections_to_its_own_loopback_model_and_nowhere_else() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    let pair = keys::generate("forward").unwrap();
    let offers = vast.search_offers(&OfferQuery { limit: 50, ..Default::default() }).await.unwrap();
    let offer = offers.into_iter().find(|o| o.gpu_model.contains("4090") && !o.interruptible).unwrap();
    let request = CreateRequest {
        offer,
        label: InstanceLabel::new("forward-test", "uid"),
        ssh_public_key: pair.public_openssh.clone(),
        image: "cuda".into(),
        start_script: None,
        env: vec![("GPU_SHOPPER_MODEL".into(), "m".into()), ("GPU_SHOPPER_MODEL_PORT".into(), "8000".into())],
        ports: vec![],
        disk_gb: 20,
        min_cuda_version: None,
    };
    let created = vast.create_instance(&request).await.unwrap();
    let ssh = loop {
        let got = vast.get_instance(&created.id).await.unwrap().unwrap();
        if let (InstanceState::Running, Some(ssh)) = (&got.state, got.ssh.clone()) {
            assert!(got.endpoint(8000).is_none(), "the model port is not public");
            break ssh;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let key = Arc::new(keys::parse_private(&pair.private_openssh).unwrap());
    let connection =
        gpu_shopper::probe::ssh::connect(&target(&ssh, "root", None), key, Duration::from_secs(10)).await.unwrap();
    // The model on the machine's loopback answers over the forwarded connection.
    let check =
        gpu_shopper::probe::inference::InferenceCheck { model: "m", health_path: "/v1/models", test_prompt: "hi" };
    let mut answered = false;
    for _ in 0..100 {
        let connect = || async { connection.tunnel(8000).await.map_err(|e| e.to_string()) };
        if let gpu_shopper::probe::inference::InferenceProbe::Answered(_) =
            gpu_shopper::probe::inference::probe(connect, &check).await
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the model answered through the tunnel");
    // Nothing else: another loopback port of this machine, or any other address, is refused.
    assert!(connection.tunnel(9999).await.is_err(), "nothing listens on that port of the machine");
    assert!(connection.tunnel(ssh.port).await.is_err(), "this computer's own ports are not the machine's");
}

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
    let offers =
        provider.search_offers(&OfferQuery { requirements: OfferRequirements::default(), limit: 50 }).await.unwrap();
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
    let advertised = vast.search_offers(&OfferQuery { requirements: Default::default(), limit: 50 }).await.unwrap();
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

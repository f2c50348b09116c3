//! The real provider clients against the simulated marketplaces: the same
//! contract for all three, and every fault mapped to the right typed error.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use gpu_shopper::crd::{Billing, OfferRequirements, ProviderName};
use gpu_shopper::provider::http::CallPolicy;
use gpu_shopper::provider::runpod::RunPod;
use gpu_shopper::provider::tensordock::TensorDock;
use gpu_shopper::provider::vastai::VastAi;
use gpu_shopper::provider::{
    CreateRequest, InstanceLabel, InstanceState, NextStep, Offer, OfferQuery, Provider, ProviderError,
};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::Faults;
use gpu_shopper::simulator::{self, SimulatorHandle};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q gpu-shopper";

fn policy() -> CallPolicy {
    CallPolicy {
        timeout: Duration::from_millis(400),
        max_attempts: 3,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
    }
}

async fn sim() -> SimulatorHandle {
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 100;
    simulator::start(market, 0).await.unwrap()
}

fn client(sim: &SimulatorHandle, provider: ProviderName) -> Arc<dyn Provider> {
    client_with_key(sim, provider, None)
}

fn client_with_key(sim: &SimulatorHandle, provider: ProviderName, key: Option<&str>) -> Arc<dyn Provider> {
    let keys = sim.sim.world().market.keys.clone();
    let key = |real: String| SecretString::from(key.map(str::to_string).unwrap_or(real));
    match provider {
        ProviderName::Vastai => Arc::new(VastAi::new(&sim.vastai_url, key(keys.vastai), policy())),
        ProviderName::Tensordock => Arc::new(TensorDock::new(&sim.tensordock_url, key(keys.tensordock), policy())),
        ProviderName::Runpod => Arc::new(RunPod::new(&sim.runpod_url, key(keys.runpod), policy())),
    }
}

fn query(requirements: OfferRequirements) -> OfferQuery {
    OfferQuery { requirements, limit: 50, ..Default::default() }
}

fn request(offer: Offer, deployment: &str, uid: &str) -> CreateRequest {
    CreateRequest {
        offer,
        label: InstanceLabel::new(deployment, uid),
        ssh_public_key: KEY.into(),
        image: "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime".into(),
        start_script: Some("echo started".into()),
        env: vec![("EPOCHS".into(), "3".into())],
        ports: vec![8000],
        disk_gb: 40,
        min_cuda_version: None,
    }
}

async fn cheapest_4090(provider: &Arc<dyn Provider>) -> Offer {
    let offers = provider
        .search_offers(&query(OfferRequirements { min_vram_gb: Some(24), ..Default::default() }))
        .await
        .unwrap();
    offers
        .into_iter()
        .filter(|o| gpu_shopper::provider::types::gpu_model_key(&o.gpu_model).contains("4090"))
        .min_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour))
        .expect("a 4090 offer")
}

#[tokio::test]
async fn every_client_searches_creates_gets_lists_by_label_and_destroys() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let offer = cheapest_4090(&provider).await;
        assert_eq!(offer.provider, provider_name);
        assert!(offer.vram_gb >= 24 && offer.price_per_hour > 0.0, "{offer:?}");

        let mine = provider.create_instance(&request(offer.clone(), "dep-a", "uid-1")).await.unwrap();
        let theirs = provider.create_instance(&request(offer.clone(), "dep-b", "uid-2")).await.unwrap();
        assert_eq!(mine.label, Some(InstanceLabel::new("dep-a", "uid-1")), "{provider_name}");

        // It boots: provisioning, then running with an SSH endpoint.
        let mut running = None;
        for _ in 0..50 {
            let got = provider.get_instance(&mine.id).await.unwrap().expect("instance exists");
            if got.state == InstanceState::Running && got.ssh.is_some() {
                running = Some(got);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running = running.unwrap_or_else(|| panic!("{provider_name}: instance never ran"));
        let ssh = running.ssh.unwrap();
        assert_eq!(ssh.host, "127.0.0.1");

        // Listing by label sees only this deployment's instances.
        let listed = provider.list_instances(&["dep-a".to_string()]).await.unwrap();
        assert_eq!(listed.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![mine.id.clone()], "{provider_name}");
        assert!(
            provider.list_instances(&["dep".to_string()]).await.unwrap().is_empty(),
            "{provider_name}: 'dep' is not 'dep-a'"
        );

        // Destroy is idempotent and the marketplace stops billing.
        provider.destroy_instance(&mine.id).await.unwrap();
        provider.destroy_instance(&mine.id).await.unwrap();
        provider.destroy_instance("999999999").await.unwrap();
        assert_eq!(provider.get_instance(&mine.id).await.unwrap(), None, "{provider_name}");
        provider.destroy_instance(&theirs.id).await.unwrap();
        let report = sim.instances();
        let billed = report.iter().find(|i| i.id == mine.id && i.provider == provider_name).unwrap();
        assert!(billed.destroyed && billed.cost_usd > 0.0, "{billed:?}");
    }
    assert!(sim.instances().iter().all(|i| i.destroyed));
}

#[tokio::test]
async fn search_pushes_filters_down_and_parses_real_shapes() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    let requirements = OfferRequirements {
        min_vram_gb: Some(24),
        max_price_per_hour: Some(0.5),
        min_cuda_version: Some("12.4".into()),
        excluded_countries: vec!["CN".into()],
        ..Default::default()
    };
    let offers = vast.search_offers(&query(requirements)).await.unwrap();
    assert!(!offers.is_empty());
    for offer in &offers {
        assert!(offer.price_per_hour <= 0.5 && offer.vram_gb >= 24, "{offer:?}");
        assert_ne!(offer.country.as_deref(), Some("CN"));
        assert!(offer.cuda_version.as_deref().unwrap().parse::<f64>().unwrap() >= 12.4);
    }
    // Interruptible search gives bid prices.
    let spot = vast
        .search_offers(&query(OfferRequirements { billing: Some(Billing::Interruptible), ..Default::default() }))
        .await
        .unwrap();
    assert!(spot.iter().all(|o| o.interruptible));
    let runpod = client(&sim, ProviderName::Runpod);
    let spot = runpod
        .search_offers(&query(OfferRequirements { billing: Some(Billing::Interruptible), ..Default::default() }))
        .await
        .unwrap();
    assert!(!spot.is_empty() && spot.iter().all(|o| o.interruptible && o.id.ends_with(":spot")));
    let pod = runpod.create_instance(&request(spot[0].clone(), "dep", "spot")).await.unwrap();
    runpod.destroy_instance(&pod.id).await.unwrap();
}

#[tokio::test]
async fn snatched_offer_is_offer_gone_or_no_capacity_and_means_next_offer() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let offer = cheapest_4090(&provider).await;
        let snatched = offer.id.split(['/', ':']).next().unwrap().to_string();
        sim.set_faults(provider_name, Faults { snatched_offers: vec![snatched], ..Default::default() });
        let error = provider.create_instance(&request(offer, "d", "u")).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::OfferGone { .. } | ProviderError::NoCapacity { .. }),
            "{provider_name}: {error:?}"
        );
        assert_eq!(error.next_step(), NextStep::NextOffer);
    }
    assert!(sim.instances().is_empty(), "nothing was rented");
}

#[tokio::test]
async fn stale_tensordock_inventory_is_no_capacity() {
    let sim = sim().await;
    let td = client(&sim, ProviderName::Tensordock);
    let offer = cheapest_4090(&td).await;
    sim.set_faults(ProviderName::Tensordock, Faults { stale_inventory: true, ..Default::default() });
    let error = td.create_instance(&request(offer, "d", "u")).await.unwrap_err();
    assert!(
        matches!(&error, ProviderError::NoCapacity { message, .. } if message.contains("No available nodes")),
        "{error:?}"
    );
}

#[tokio::test]
async fn bad_key_is_auth_failed_and_the_key_never_appears_in_the_error() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client_with_key(&sim, provider_name, Some("wrong-key-0123456789"));
        let error = provider.search_offers(&query(Default::default())).await.unwrap_err();
        assert!(matches!(error, ProviderError::AuthFailed { .. }), "{provider_name}: {error:?}");
        assert_eq!(error.next_step(), NextStep::SkipProvider);
        assert!(!format!("{error} {error:?}").contains("wrong-key"), "{error:?}");
    }
}

#[tokio::test]
async fn transient_5xx_and_429_are_retried_until_success() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        sim.set_faults(
            provider_name,
            Faults { server_errors: 1, rate_limits: 1, retry_after_secs: 0, ..Default::default() },
        );
        let offers = provider.search_offers(&query(Default::default())).await;
        assert!(offers.is_ok(), "{provider_name}: {offers:?}");
        let calls = sim.sim.world().calls.iter().filter(|c| c.provider == provider_name).count();
        assert_eq!(calls, 3, "{provider_name}: one 429, one 500, one success");
    }
}

#[tokio::test]
async fn persistent_failures_end_in_typed_retryable_errors() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    sim.set_faults(ProviderName::Vastai, Faults { server_errors: 10, ..Default::default() });
    let error = vast.search_offers(&query(Default::default())).await.unwrap_err();
    assert!(matches!(error, ProviderError::Unavailable { .. }), "{error:?}");
    assert_eq!(error.next_step(), NextStep::Retry);

    sim.set_faults(ProviderName::Vastai, Faults { rate_limits: 10, retry_after_secs: 30, ..Default::default() });
    let error = vast.search_offers(&query(Default::default())).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::RateLimited { provider: ProviderName::Vastai, retry_after: Some(Duration::from_secs(30)) }
    );
}

#[tokio::test]
async fn a_hanging_api_times_out_per_call() {
    let sim = sim().await;
    let td = client(&sim, ProviderName::Tensordock);
    sim.set_faults(ProviderName::Tensordock, Faults { hangs: 10, hang_ms: 2_000, ..Default::default() });
    let started = std::time::Instant::now();
    let error = td.search_offers(&query(Default::default())).await.unwrap_err();
    assert!(matches!(error, ProviderError::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "three attempts of 400ms, not the 2s hang each");
}

#[tokio::test]
async fn a_lost_create_response_is_not_retried_and_the_instance_is_found_by_label() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let offer = cheapest_4090(&provider).await;
        sim.set_faults(provider_name, Faults { lose_create_responses: 1, ..Default::default() });
        let error = provider.create_instance(&request(offer, "dep-lost", "uid-lost")).await.unwrap_err();
        assert_eq!(error.next_step(), NextStep::Retry, "{provider_name}: {error:?}");
        // The create arrived once (no blind retry doubled it), and the label finds it.
        let live: Vec<_> =
            sim.instances().into_iter().filter(|i| i.provider == provider_name && !i.destroyed).collect();
        assert_eq!(live.len(), 1, "{provider_name}: exactly one instance exists");
        let found = provider.list_instances(&["dep-lost".to_string()]).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label, Some(InstanceLabel::new("dep-lost", "uid-lost")));
        provider.destroy_instance(&found[0].id).await.unwrap();
    }
}

#[tokio::test]
async fn vast_create_without_new_contract_falls_back_to_the_label() {
    let sim = sim().await;
    let vast = client(&sim, ProviderName::Vastai);
    let offer = cheapest_4090(&vast).await;
    sim.set_faults(ProviderName::Vastai, Faults { omit_new_contract: true, ..Default::default() });
    let instance = vast.create_instance(&request(offer, "dep", "uid-nc")).await.unwrap();
    let report = sim.instances();
    assert_eq!(report.len(), 1);
    assert_eq!(instance.id, report[0].id);
    // The key is on the instance (attached after create, and installed by the start command).
    let keys = sim.sim.world().instances[0].authorized_keys();
    let body = KEY.split_whitespace().nth(1).unwrap();
    assert!(!keys.is_empty() && keys.iter().all(|k| k.contains(body)), "{keys:?}");
}

#[tokio::test]
async fn destroy_failures_are_retried_and_then_reported() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let offer = cheapest_4090(&provider).await;
        let instance = provider.create_instance(&request(offer, "d", "u")).await.unwrap();
        sim.set_faults(provider_name, Faults { destroy_failures: 1, ..Default::default() });
        provider.destroy_instance(&instance.id).await.expect("one failure is retried");
        let instance = client(&sim, provider_name)
            .create_instance(&request(cheapest_4090(&provider).await, "d", "u2"))
            .await
            .unwrap();
        sim.set_faults(provider_name, Faults { destroy_failures: 10, ..Default::default() });
        let error = provider.destroy_instance(&instance.id).await.unwrap_err();
        assert_eq!(error.next_step(), NextStep::Retry, "{provider_name}: {error:?}");
        sim.set_faults(provider_name, Faults::default());
        provider.destroy_instance(&instance.id).await.unwrap();
    }
    assert!(sim.instances().iter().all(|i| i.destroyed));
}

#[tokio::test]
async fn insufficient_funds_means_skip_the_provider() {
    let sim = sim().await;
    for provider_name in ProviderName::ALL {
        let provider = client(&sim, provider_name);
        let offer = cheapest_4090(&provider).await;
        sim.set_faults(provider_name, Faults { insufficient_funds: true, ..Default::default() });
        let error = provider.create_instance(&request(offer, "d", "u")).await.unwrap_err();
        assert!(matches!(error, ProviderError::InsufficientFunds { .. }), "{provider_name}: {error:?}");
        assert_eq!(error.next_step(), NextStep::SkipProvider);
    }
}

#[tokio::test]
async fn unreachable_instances_run_without_an_ssh_endpoint() {
    let sim = sim().await;
    let runpod = client(&sim, ProviderName::Runpod);
    let offer = cheapest_4090(&runpod).await;
    sim.set_faults(ProviderName::Runpod, Faults { unreachable_instances: true, ..Default::default() });
    let pod = runpod.create_instance(&request(offer, "d", "u")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = runpod.get_instance(&pod.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.ssh), (InstanceState::Running, None));
}

#[tokio::test]
async fn a_vast_create_refused_after_making_an_instance_moves_on_and_leaves_nothing_billing() {
    let sim = sim().await;
    sim.set_faults(ProviderName::Vastai, Faults { refused_creates_with_instance: 1, ..Default::default() });
    let provider = client(&sim, ProviderName::Vastai);
    let offer = cheapest_4090(&provider).await;
    let error = provider.create_instance(&request(offer, "dep", "uid-refused")).await.unwrap_err();
    assert_eq!(error.next_step(), NextStep::NextOffer, "{error}");
    let report = sim.instances();
    assert_eq!(report.len(), 1, "the refusal did make an instance: {report:?}");
    assert!(report[0].destroyed, "and the client destroyed it: {report:?}");
}

#[tokio::test]
async fn a_vast_create_that_landed_is_reported_landed_whatever_the_key_attach_answers() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Vastai);
    let offer = cheapest_4090(&provider).await;
    // More 429s than the client retries: the attach fails for good.
    sim.set_faults(ProviderName::Vastai, Faults { attach_failures: 10, ..Default::default() });
    let instance = provider.create_instance(&request(offer, "dep", "uid-attach")).await.expect("landed is landed");
    let report = sim.instances();
    assert_eq!((report.len(), report[0].id.as_str()), (1, instance.id.as_str()));
    // The start command put the key on the machine anyway.
    let keys = sim.sim.world().instances[0].authorized_keys();
    assert!(keys.iter().any(|k| k.contains(KEY.split_whitespace().nth(1).unwrap())), "{keys:?}");
}

#[tokio::test]
async fn the_vast_listing_follows_its_opaque_cursor_past_one_page() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Vastai);
    let offer = cheapest_4090(&provider).await;
    for n in 0..30 {
        provider.create_instance(&request(offer.clone(), "dep-pages", &format!("uid-{n}"))).await.unwrap();
    }
    let listed = provider.list_instances(&["dep-pages".to_string()]).await.unwrap();
    assert_eq!(listed.len(), 30, "two pages of at most 25, the cursor sent as vast-cli sends it");
    let calls = sim.sim.world().calls.iter().filter(|c| c.path == "/api/v1/instances/").count();
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn a_vast_search_prices_the_disk_the_rent_asks_for() {
    let mut market = Market::builtin();
    for host in market.hosts.iter_mut().filter(|h| h.provider == ProviderName::Vastai) {
        host.storage_per_gb_month = 3.6; // $0.005 per GB-hour
    }
    let sim = simulator::start(market, 0).await.unwrap();
    let provider = client(&sim, ProviderName::Vastai);
    let price_with = |disk_gb| {
        let provider = provider.clone();
        async move {
            let query = OfferQuery { disk_gb, ..query(OfferRequirements::default()) };
            let offers = provider.search_offers(&query).await.unwrap();
            offers.into_iter().find(|o| o.id == "4101").unwrap().price_per_hour
        }
    };
    let (small, large) = (price_with(10).await, price_with(110).await);
    assert!((large - small - 100.0 * 0.005).abs() < 1e-9, "100 GB more costs $0.50/h more: {small} -> {large}");
}

#[tokio::test]
async fn a_tensordock_delete_is_not_confirmed_while_the_vm_is_still_deleting() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Tensordock);
    let offer = cheapest_4090(&provider).await;
    let instance = provider.create_instance(&request(offer, "dep", "uid-deleting")).await.unwrap();
    sim.set_faults(ProviderName::Tensordock, Faults { slow_deletes_ms: 1500, ..Default::default() });
    let error = gpu_shopper::provider::destroy_confirmed(provider.as_ref(), &instance.id).await.unwrap_err();
    assert!(matches!(error, ProviderError::StillExists { .. }), "deleting is not gone: {error}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    gpu_shopper::provider::destroy_confirmed(provider.as_ref(), &instance.id).await.expect("gone once deleted");
    assert!(sim.instances()[0].destroyed);
}

#[tokio::test]
async fn one_paced_client_draws_no_429_from_limits_the_marketplaces_publish() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Vastai);
    // Vast's 10 searches a minute, at once, then a listing and lookups as fast as they go.
    let searches = (0..10).map(|_| {
        let provider = provider.clone();
        async move { provider.search_offers(&query(OfferRequirements::default())).await }
    });
    for result in futures::future::join_all(searches).await {
        result.unwrap();
    }
    let refused = sim.sim.world().rate_limits.refused.get(&ProviderName::Vastai).copied().unwrap_or(0);
    assert_eq!(refused, 0, "concurrent callers share one pacer and wait for their slot");
}

#[tokio::test]
async fn the_key_reaches_a_runpod_pod_whose_image_is_not_runpods() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Runpod);
    let offer = cheapest_4090(&provider).await;
    let mut plain = request(offer, "dep", "uid-cuda");
    plain.image = "nvidia/cuda:12.4.1-runtime-ubuntu22.04".into();
    let pod = provider.create_instance(&plain).await.unwrap();
    let home = sim.sim.world().find(ProviderName::Runpod, &pod.id).unwrap().home.clone();
    let keys = std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap_or_default();
    assert!(keys.contains("AAAAC3NzaC1lZDI1NTE5"), "sshd started and the key authorised through dockerArgs");
}

#[tokio::test]
async fn a_tensordock_offer_costs_what_the_machine_then_bills() {
    let sim = sim().await;
    let provider = client(&sim, ProviderName::Tensordock);
    let offer = cheapest_4090(&provider).await;
    let mut small_disk = request(offer.clone(), "dep", "uid-td");
    small_disk.disk_gb = 20; // below TensorDock's 100 GB minimum: rented at the minimum
    let instance = provider.create_instance(&small_disk).await.unwrap();
    let billed = provider.get_instance(&instance.id).await.unwrap().unwrap().price_per_hour.unwrap();
    assert!((billed - offer.price_per_hour).abs() < 1e-6, "offer {} vs billed {billed}", offer.price_per_hour);
    provider.destroy_instance(&instance.id).await.unwrap();
}

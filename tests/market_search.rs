//! Searching the whole market: concurrent, filtered, ranked, and a slow or
//! failing marketplace degrades only itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use gpu_shopper::crd::{OfferRequirements, ProviderName};
use gpu_shopper::market;
use gpu_shopper::provider::http::CallPolicy;
use gpu_shopper::provider::{Provider, ProviderError};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::Faults;
use gpu_shopper::simulator::{self, SimulatorHandle};

fn providers(sim: &SimulatorHandle) -> Vec<Arc<dyn Provider>> {
    let keys = sim.sim.world().market.keys.clone();
    let policy = CallPolicy { timeout: Duration::from_secs(5), max_attempts: 1, ..Default::default() };
    vec![
        Arc::new(gpu_shopper::provider::vastai::VastAi::new(
            &sim.vastai_url,
            SecretString::from(keys.vastai),
            policy.clone(),
        )),
        Arc::new(gpu_shopper::provider::tensordock::TensorDock::new(
            &sim.tensordock_url,
            SecretString::from(keys.tensordock),
            policy.clone(),
        )),
        Arc::new(gpu_shopper::provider::runpod::RunPod::new(&sim.runpod_url, SecretString::from(keys.runpod), policy)),
    ]
}

#[tokio::test]
async fn the_cheapest_matching_offer_across_marketplaces_ranks_first() {
    let sim = simulator::start(Market::builtin(), 0).await.unwrap();
    let requirements =
        OfferRequirements { gpu_models: vec!["RTX 4090".into()], min_vram_gb: Some(24), ..Default::default() };
    let view = market::search(&providers(&sim), &requirements, Duration::from_secs(5)).await;
    assert!(view.failures.is_empty(), "{:?}", view.failures);
    assert_eq!(view.searched.len(), 3);
    let prices: Vec<_> = view.offers.iter().map(|o| (o.provider, o.price_per_hour)).collect();
    // Built-in market: Vast 0.29 and 0.34, TensorDock 0.37, RunPod 0.44 (on demand only by default).
    assert_eq!(
        prices,
        [
            (ProviderName::Vastai, 0.29),
            (ProviderName::Vastai, 0.34),
            (ProviderName::Tensordock, 0.37),
            (ProviderName::Runpod, 0.44)
        ]
    );
}

#[tokio::test]
async fn a_hanging_marketplace_degrades_only_itself() {
    let sim = simulator::start(Market::builtin(), 0).await.unwrap();
    sim.set_faults(ProviderName::Tensordock, Faults { hangs: 5, hang_ms: 3_000, ..Default::default() });
    sim.set_faults(ProviderName::Runpod, Faults { auth_failure: true, ..Default::default() });
    let started = Instant::now();
    let view = market::search(&providers(&sim), &OfferRequirements::default(), Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "searched concurrently, bounded: {:?}", started.elapsed());
    assert_eq!(view.searched, [ProviderName::Vastai]);
    assert!(!view.offers.is_empty());
    assert!(
        view.failures
            .iter()
            .any(|f| f.provider == ProviderName::Tensordock && matches!(f.error, ProviderError::Timeout { .. }))
    );
    assert!(
        view.failures
            .iter()
            .any(|f| f.provider == ProviderName::Runpod && matches!(f.error, ProviderError::AuthFailed { .. }))
    );
}

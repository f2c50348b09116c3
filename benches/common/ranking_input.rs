//! The market both benches rank: `n` random offers across the three marketplaces
//! (seeded, so every run ranks the same), and a session's usual requirements.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gpu_shopper::crd::{OfferRequirements, ProviderName};
use gpu_shopper::market;
use gpu_shopper::provider::Offer;

pub fn offers(n: usize) -> Vec<Offer> {
    let mut rng = StdRng::seed_from_u64(1);
    let models = ["RTX 4090", "RTX 3090", "A100", "H100", "L40S", "RTX A6000"];
    (0..n)
        .map(|i| Offer {
            provider: ProviderName::ALL[i % 3],
            id: i.to_string(),
            gpu_model: models[rng.random_range(0..models.len())].to_string(),
            gpu_count: [1, 1, 1, 2, 4, 8][rng.random_range(0..6)],
            vram_gb: [16, 24, 48, 80][rng.random_range(0..4)],
            cuda_version: Some(format!("12.{}", rng.random_range(0..10))),
            driver_version: None,
            price_per_hour: rng.random_range(0.1..4.0),
            reliability: Some(rng.random_range(0.8..1.0)),
            location: Some("Texas, US".into()),
            country: Some(["US", "CA", "DE", "CN"][rng.random_range(0..4)].into()),
            download_mbps: Some(rng.random_range(100.0..2000.0)),
            upload_mbps: Some(rng.random_range(100.0..2000.0)),
            interruptible: false,
            bid_per_hour: None,
            host_id: None,
        })
        .collect()
}

pub fn requirements() -> OfferRequirements {
    OfferRequirements {
        gpu_models: vec!["RTX 4090".into(), "A100".into()],
        min_vram_gb: Some(24),
        max_price_per_hour: Some(2.0),
        min_cuda_version: Some("12.4".into()),
        excluded_countries: vec!["CN".into()],
        min_reliability: Some(0.9),
        ..Default::default()
    }
}

/// What a search does with the market: keep the matching offers, best first.
pub fn filter_and_rank(all: &[Offer], requirements: &OfferRequirements) -> usize {
    let matcher = market::Matcher::new(requirements);
    let mut matching: Vec<Offer> = all.iter().filter(|o| matcher.matches(o)).cloned().collect();
    market::rank(&mut matching);
    matching.len()
}

//! Does an offer satisfy the requirements? Applied to every offer whatever the
//! marketplace already filtered, so that all three are held to the same rules.

use crate::crd::{Billing, OfferRequirements};
use crate::provider::Offer;
use crate::provider::types::{display_gpu_model, gpu_model_key, with_gpu_model_key};
pub use crate::units::cuda_at_least;
use crate::units::{cuda_at_least_parsed, parse_cuda, requested_memory_gb};

/// "A100 80GB" matches an A100 with about 80 GB per GPU (cards report a
/// little less than their name: 24564 MB for 24 GB); "A100" any A100; the
/// whole name as written also matches ("NVIDIA A100-80GB").
pub fn model_matches(offer: &Offer, requested: &str) -> bool {
    RequestedModel::new(requested).accepts(&gpu_model_key(&offer.gpu_model), offer.vram_gb)
}

/// A requested model, normalised once for a whole search.
struct RequestedModel {
    /// The name as written.
    key: String,
    /// The model without memory or form factor ("A100" for "A100 80GB").
    base_key: String,
    memory_gb: Option<u32>,
}

impl RequestedModel {
    fn new(requested: &str) -> Self {
        RequestedModel {
            key: gpu_model_key(requested),
            base_key: gpu_model_key(&display_gpu_model(requested)),
            memory_gb: requested_memory_gb(requested),
        }
    }

    fn accepts(&self, offered_key: &str, vram_gb: u32) -> bool {
        offered_key == self.key
            || (offered_key == self.base_key && self.memory_gb.is_none_or(|gb| vram_gb.abs_diff(gb) <= gb.div_ceil(10)))
    }
}

/// The requirements prepared for testing many offers: names normalised once.
pub struct Matcher<'a> {
    requirements: &'a OfferRequirements,
    models: Vec<RequestedModel>,
    /// `Some` when a minimum is set; its value `None` when it cannot be read (nothing meets it).
    min_cuda: Option<Option<(u32, u32)>>,
}

impl<'a> Matcher<'a> {
    pub fn new(requirements: &'a OfferRequirements) -> Self {
        Matcher {
            requirements,
            models: requirements.gpu_models.iter().map(|m| RequestedModel::new(m)).collect(),
            min_cuda: requirements.min_cuda_version.as_deref().map(parse_cuda),
        }
    }

    /// `true` when `offer` meets every requirement (see `matches`).
    pub fn matches(&self, offer: &Offer) -> bool {
        matches_with(offer, self)
    }
}

/// `true` when `offer` meets every requirement. A requirement on something the
/// marketplace does not report (reliability, speeds) is not met: unknown is not good enough.
/// An offer that advertises no CUDA passes a CUDA minimum here; the machine proves it later.
pub fn matches(offer: &Offer, r: &OfferRequirements) -> bool {
    Matcher::new(r).matches(offer)
}

fn matches_with(offer: &Offer, matcher: &Matcher<'_>) -> bool {
    let (r, models) = (matcher.requirements, &matcher.models);
    let at_least = |value: Option<f64>, min: Option<f64>| min.is_none_or(|min| value.is_some_and(|v| v >= min));
    // The numeric tests first: they reject most offers without touching a string.
    (r.providers.is_empty() || r.providers.contains(&offer.provider))
        && r.gpu_count.is_none_or(|n| offer.gpu_count == n)
        && r.min_vram_gb.is_none_or(|v| offer.vram_gb >= v)
        && r.max_price_per_hour.is_none_or(|p| offer.price_per_hour <= p)
        && at_least(offer.reliability, r.min_reliability)
        && at_least(offer.download_mbps, r.min_download_mbps)
        && at_least(offer.upload_mbps, r.min_upload_mbps)
        && match r.billing.unwrap_or_default() {
            Billing::OnDemand => !offer.interruptible,
            Billing::Interruptible => offer.interruptible,
            Billing::Any => true,
        }
        && (models.is_empty()
            || with_gpu_model_key(&offer.gpu_model, |offered| models.iter().any(|m| m.accepts(offered, offer.vram_gb))))
        && match (matcher.min_cuda, &offer.cuda_version) {
            (Some(min), Some(advertised)) => cuda_at_least_parsed(advertised, min),
            _ => true,
        }
        // Excluded countries fail closed: an offer whose country is unknown may be in one.
        && (r.excluded_countries.is_empty()
            || offer.country.as_ref().is_some_and(|c| !r.excluded_countries.iter().any(|x| x.eq_ignore_ascii_case(c))))
        && (r.excluded_regions.is_empty()
            || !offer.location.as_ref().is_some_and(|l| {
                let l = l.to_ascii_lowercase();
                r.excluded_regions.iter().any(|region| l.contains(&region.to_ascii_lowercase()))
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderName;

    fn offer() -> Offer {
        Offer {
            provider: ProviderName::Vastai,
            id: "1".into(),
            gpu_model: "RTX 4090".into(),
            gpu_count: 1,
            vram_gb: 24,
            cuda_version: Some("12.4".into()),
            driver_version: None,
            price_per_hour: 0.4,
            reliability: Some(0.99),
            location: Some("Texas, US".into()),
            country: Some("US".into()),
            download_mbps: Some(500.0),
            upload_mbps: None,
            interruptible: false,
            bid_per_hour: None,
            host_id: None,
        }
    }

    #[test]
    fn model_names_with_memory_match_the_card_of_that_memory_only() {
        let a100 = |vram_gb| Offer { gpu_model: "A100".into(), vram_gb, ..offer() };
        assert!(model_matches(&a100(80), "A100 80GB"));
        assert!(model_matches(&a100(79), "a100-80gb"), "a card reporting a little less is that card");
        assert!(!model_matches(&a100(40), "A100 80GB"));
        assert!(model_matches(&a100(40), "A100"));
        assert!(!model_matches(&a100(80), "H100 80GB"));
        assert!(model_matches(&offer(), "RTX 4090 24GB"));
    }

    #[test]
    fn excluded_countries_refuse_offers_of_unknown_country() {
        let excluding = OfferRequirements { excluded_countries: vec!["CN".into()], ..Default::default() };
        assert!(matches(&offer(), &excluding));
        assert!(!matches(&Offer { country: None, ..offer() }, &excluding));
        assert!(matches(&Offer { country: None, ..offer() }, &OfferRequirements::default()));
    }

    #[test]
    fn cuda_versions_compare_numerically() {
        assert!(cuda_at_least("12.10", "12.9"));
        assert!(!cuda_at_least("12.8", "12.9"));
        assert!(cuda_at_least("13", "12.9"));
        assert!(!cuda_at_least("garbage", "12.0"));
    }

    #[test]
    fn every_requirement_can_refuse_an_offer() {
        let o = offer();
        assert!(matches(&o, &OfferRequirements::default()));
        let refusing = [
            OfferRequirements { gpu_models: vec!["A100".into()], ..Default::default() },
            OfferRequirements { gpu_count: Some(2), ..Default::default() },
            OfferRequirements { min_vram_gb: Some(48), ..Default::default() },
            OfferRequirements { max_price_per_hour: Some(0.3), ..Default::default() },
            OfferRequirements { min_cuda_version: Some("12.6".into()), ..Default::default() },
            OfferRequirements { providers: vec![ProviderName::Runpod], ..Default::default() },
            OfferRequirements { excluded_countries: vec!["us".into()], ..Default::default() },
            OfferRequirements { excluded_regions: vec!["texas".into()], ..Default::default() },
            OfferRequirements { min_reliability: Some(0.995), ..Default::default() },
            OfferRequirements { min_upload_mbps: Some(10.0), ..Default::default() },
            OfferRequirements { billing: Some(Billing::Interruptible), ..Default::default() },
        ];
        for r in refusing {
            assert!(!matches(&o, &r), "{r:?} should refuse the offer");
        }
        let accepting = OfferRequirements {
            gpu_models: vec!["nvidia geforce rtx-4090".into()],
            min_cuda_version: Some("12.4".into()),
            billing: Some(Billing::Any),
            ..Default::default()
        };
        assert!(matches(&o, &accepting));
    }
}

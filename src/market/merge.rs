//! Effective requirements: a referenced filter merged with a session's inline
//! requirements, the stricter of each winning.

use crate::crd::{Billing, OfferRequirements};

fn min_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y < x { y } else { x }),
        (x, y) => x.or(y),
    }
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// Lists that allow: both set means only what both allow.
fn intersect<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => a.iter().filter(|x| b.contains(x)).cloned().collect(),
    }
}

/// Lists that refuse: refused by either.
fn union<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut all = a.to_vec();
    all.extend(b.iter().filter(|x| !a.contains(x)).cloned());
    all
}

/// The stricter of `filter` and `inline`, field by field. `Err` names a
/// contradiction that no offer can satisfy.
pub fn merge(filter: &OfferRequirements, inline: &OfferRequirements) -> Result<OfferRequirements, String> {
    let gpu_models = if filter.gpu_models.is_empty() || inline.gpu_models.is_empty() {
        intersect(&filter.gpu_models, &inline.gpu_models)
    } else {
        let key = crate::provider::types::gpu_model_key;
        filter.gpu_models.iter().filter(|m| inline.gpu_models.iter().any(|n| key(n) == key(m))).cloned().collect()
    };
    if !filter.gpu_models.is_empty() && !inline.gpu_models.is_empty() && gpu_models.is_empty() {
        return Err(format!(
            "the filter allows GPU models {:?} and the session {:?}: none in common",
            filter.gpu_models, inline.gpu_models
        ));
    }
    let providers = intersect(&filter.providers, &inline.providers);
    if !filter.providers.is_empty() && !inline.providers.is_empty() && providers.is_empty() {
        return Err("the filter and the session allow no marketplace in common".into());
    }
    let gpu_count = match (filter.gpu_count, inline.gpu_count) {
        (Some(a), Some(b)) if a != b => return Err(format!("the filter wants {a} GPUs and the session {b}")),
        (a, b) => a.or(b),
    };
    let min_cuda_version = match (&filter.min_cuda_version, &inline.min_cuda_version) {
        (Some(a), Some(b)) => Some(if crate::units::cuda_at_least(a, b) { a.clone() } else { b.clone() }),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    let billing = match (filter.billing, inline.billing) {
        (Some(a), Some(b)) if a == b || b == Billing::Any => Some(a),
        (Some(Billing::Any), Some(b)) => Some(b),
        (Some(a), Some(b)) => return Err(format!("the filter wants {a:?} billing and the session {b:?}")),
        (a, b) => a.or(b),
    };
    Ok(OfferRequirements {
        gpu_models,
        gpu_count,
        min_vram_gb: max_opt(filter.min_vram_gb, inline.min_vram_gb),
        min_cuda_version,
        max_price_per_hour: min_opt(filter.max_price_per_hour, inline.max_price_per_hour),
        providers,
        excluded_countries: union(&filter.excluded_countries, &inline.excluded_countries),
        excluded_regions: union(&filter.excluded_regions, &inline.excluded_regions),
        min_reliability: max_opt(filter.min_reliability, inline.min_reliability),
        min_download_mbps: max_opt(filter.min_download_mbps, inline.min_download_mbps),
        min_upload_mbps: max_opt(filter.min_upload_mbps, inline.min_upload_mbps),
        billing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderName;

    #[test]
    fn the_stricter_of_each_wins() {
        let filter = OfferRequirements {
            gpu_models: vec!["RTX 4090".into(), "A100".into()],
            min_vram_gb: Some(24),
            max_price_per_hour: Some(0.6),
            min_cuda_version: Some("12.4".into()),
            excluded_countries: vec!["CN".into()],
            min_reliability: Some(0.95),
            ..Default::default()
        };
        let inline = OfferRequirements {
            gpu_models: vec!["rtx-4090".into()],
            min_vram_gb: Some(16),
            max_price_per_hour: Some(0.45),
            min_cuda_version: Some("12.10".into()),
            excluded_countries: vec!["RU".into()],
            providers: vec![ProviderName::Vastai],
            ..Default::default()
        };
        let merged = merge(&filter, &inline).unwrap();
        assert_eq!(merged.gpu_models, ["RTX 4090"]);
        assert_eq!(merged.min_vram_gb, Some(24));
        assert_eq!(merged.max_price_per_hour, Some(0.45));
        assert_eq!(merged.min_cuda_version.as_deref(), Some("12.10"));
        assert_eq!(merged.excluded_countries, ["CN", "RU"]);
        assert_eq!(merged.providers, [ProviderName::Vastai]);
        assert_eq!(merged.min_reliability, Some(0.95));
    }

    #[test]
    fn contradictions_are_explained() {
        let a = OfferRequirements { gpu_models: vec!["H100".into()], ..Default::default() };
        let b = OfferRequirements { gpu_models: vec!["RTX 4090".into()], ..Default::default() };
        assert!(merge(&a, &b).unwrap_err().contains("none in common"));
        let a = OfferRequirements { gpu_count: Some(1), ..Default::default() };
        let b = OfferRequirements { gpu_count: Some(2), ..Default::default() };
        assert!(merge(&a, &b).is_err());
    }
}

//! Ranking: cheapest first; among equal prices, the more reliable host, then
//! more CUDA headroom, then faster download.

use std::cmp::Ordering;

use crate::provider::Offer;

fn cuda_number(offer: &Offer) -> f64 {
    offer
        .cuda_version
        .as_deref()
        .and_then(|v| {
            let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
            Some(major.parse::<f64>().ok()? * 1000.0 + minor.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0)
}

fn compare(a: &Offer, b: &Offer) -> Ordering {
    let desc = |x: Option<f64>, y: Option<f64>| y.unwrap_or(0.0).total_cmp(&x.unwrap_or(0.0));
    a.price_per_hour
        .total_cmp(&b.price_per_hour)
        .then_with(|| desc(a.reliability, b.reliability))
        .then_with(|| cuda_number(b).total_cmp(&cuda_number(a)))
        .then_with(|| desc(a.download_mbps, b.download_mbps))
        .then_with(|| (a.provider, &a.id).cmp(&(b.provider, &b.id)))
}

/// Sorts best first. The order is total, so equal inputs always rank alike.
pub fn rank(offers: &mut [Offer]) {
    offers.sort_by(compare);
}

/// Why the first offer was chosen, for status.
pub fn explain(best: &Offer, considered: usize) -> String {
    let mut why = format!(
        "cheapest of {considered} matching offers: {} {}x {} ({} GiB) at ${:.3}/h",
        best.provider, best.gpu_count, best.gpu_model, best.vram_gb, best.price_per_hour
    );
    if let Some(r) = best.reliability {
        why.push_str(&format!(", reliability {r:.3}"));
    }
    if let Some(c) = &best.cuda_version {
        why.push_str(&format!(", advertised CUDA {c}"));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderName;

    fn offer(id: &str, price: f64, reliability: f64, cuda: &str) -> Offer {
        Offer {
            provider: ProviderName::Vastai,
            id: id.into(),
            gpu_model: "RTX 4090".into(),
            gpu_count: 1,
            vram_gb: 24,
            cuda_version: Some(cuda.into()),
            driver_version: None,
            price_per_hour: price,
            reliability: Some(reliability),
            location: None,
            country: None,
            download_mbps: None,
            upload_mbps: None,
            interruptible: false,
            bid_per_hour: None,
            host_id: None,
        }
    }

    #[test]
    fn cheapest_first_then_reliability_then_cuda_headroom() {
        let mut offers = vec![
            offer("pricey", 0.9, 1.0, "12.8"),
            offer("cheap-flaky", 0.3, 0.9, "12.8"),
            offer("cheap-solid-old", 0.3, 0.99, "12.2"),
            offer("cheap-solid-new", 0.3, 0.99, "12.10"),
        ];
        rank(&mut offers);
        let ids: Vec<_> = offers.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["cheap-solid-new", "cheap-solid-old", "cheap-flaky", "pricey"]);
        assert!(explain(&offers[0], 4).starts_with("cheapest of 4 matching offers: vastai 1x RTX 4090"));
    }
}

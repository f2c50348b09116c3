//! Units and requirement arithmetic that the marketplace clients and the market
//! both use: CUDA versions compared as numbers, and the memory a GPU model's
//! name asks for.

/// "12.10" >= "12.9": versions compare as numbers, not text.
pub fn cuda_at_least(version: &str, minimum: &str) -> bool {
    cuda_at_least_parsed(version, parse_cuda(minimum))
}

/// "12.4" as (12, 4), "12" as (12, 0); `None` for anything else.
pub fn parse_cuda(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next().map(|m| m.parse().ok()).unwrap_or(Some(0))?))
}

/// An unreadable minimum or version is not met.
pub fn cuda_at_least_parsed(version: &str, minimum: Option<(u32, u32)>) -> bool {
    match (parse_cuda(version), minimum) {
        (Some(have), Some(need)) => have >= need,
        _ => false,
    }
}

/// 80 from "A100 80GB" or "a100-80gb": the memory a model name asks for.
pub fn requested_memory_gb(model: &str) -> Option<u32> {
    model.split(|c: char| c.is_whitespace() || c == '-' || c == '_').find_map(|t| {
        let lower = t.to_ascii_lowercase();
        lower.strip_suffix("gb")?.parse().ok()
    })
}

/// How far under its nominal size a card may report its memory: an L40S
/// reports 46068 MB for 48 GB (dstackai/gpuhunt `correct_gpu_memory_gib`
/// and its Vast query use 7%).
pub const REPORTED_MEMORY_MARGIN: f64 = 0.93;

/// Memory sizes GPUs are sold with, GB (per gpuhunt's known sizes and the cards the market names).
const NOMINAL_MEMORY_GB: &[u32] = &[4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 180, 192, 288];

/// The nominal size of a card that reports `reported_mb` MB: the known size
/// within 7% of it (46068 MB -> 48), else the reported size rounded.
pub fn nominal_memory_gb(reported_mb: f64) -> u32 {
    let reported_gb = reported_mb / 1024.0;
    let closest = NOMINAL_MEMORY_GB
        .iter()
        .copied()
        .min_by(|a, b| (f64::from(*a) - reported_gb).abs().total_cmp(&(f64::from(*b) - reported_gb).abs()));
    match closest {
        Some(nominal)
            if (f64::from(nominal) - reported_gb).abs() / f64::from(nominal) < 1.0 - REPORTED_MEMORY_MARGIN =>
        {
            nominal
        }
        _ => reported_gb.round().max(0.0) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_that_report_less_than_their_name_keep_their_name() {
        assert_eq!(nominal_memory_gb(46068.0), 48, "L40S (gpuhunt's test table)");
        assert_eq!(nominal_memory_gb(24564.0), 24, "RTX 4090");
        assert_eq!(nominal_memory_gb(81920.0), 80);
        assert_eq!(nominal_memory_gb(30000.0), 29, "no known size near: rounded");
        assert_eq!(nominal_memory_gb(0.0), 0);
    }

    #[test]
    fn cuda_versions_compare_as_numbers() {
        assert!(cuda_at_least("12.10", "12.9"));
        assert!(!cuda_at_least("12.8", "12.9"));
        assert!(!cuda_at_least("unknown", "12.0"));
    }
}

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

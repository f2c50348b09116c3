//! Lenient field access for marketplace JSON: fields go missing, get renamed,
//! and switch between numbers and strings. Reading through these never panics.

use serde_json::Value;

/// The first of `keys` present as a number (or a numeric string).
pub fn number(value: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|key| match value.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|n| n.is_finite())
}

/// The first of `keys` present as a non-empty string (numbers are formatted).
pub fn text(value: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match value.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

pub fn boolean(value: &Value, keys: &[&str]) -> Option<bool> {
    keys.iter().find_map(|key| match value.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|n| n != 0.0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

/// A count or port: a number in range, else `None`.
pub fn unsigned<T: TryFrom<u64>>(value: &Value, keys: &[&str]) -> Option<T> {
    number(value, keys)
        .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= u64::MAX as f64)
        .and_then(|n| T::try_from(n as u64).ok())
}

/// "12.4" from 12.4, "12.40", or "12.4.1"; `None` for anything else.
pub fn cuda_version(raw: &str) -> Option<String> {
    let mut parts = raw.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().map(|m| m.parse().ok()).unwrap_or(Some(0))?;
    Some(format!("{major}.{minor}"))
}

/// ISO 3166-1 alpha-2 code for a country given by code or by name
/// ("US", "United States", "Germany"); `None` when it names no country.
pub fn country_code(name_or_code: &str) -> Option<String> {
    use std::str::FromStr;
    let compact: String = name_or_code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if compact.is_empty() {
        return None;
    }
    celes::Country::from_str(&compact).ok().map(|c| c.alpha2.to_string())
}

/// Country code at the end of "Texas, US"-like locations.
pub fn country_suffix(location: &str) -> Option<String> {
    let last = location.rsplit(',').next()?.trim();
    (last.len() == 2 && last.chars().all(|c| c.is_ascii_alphabetic())).then(|| last.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_numbers_from_numbers_and_strings_and_survives_junk() {
        let v = json!({"a": 1.5, "b": "2.5", "c": null, "d": [1], "e": "x", "f": -3});
        assert_eq!(number(&v, &["a"]), Some(1.5));
        assert_eq!(number(&v, &["missing", "b"]), Some(2.5));
        assert_eq!(number(&v, &["c", "d", "e"]), None);
        assert_eq!(unsigned::<u16>(&v, &["f"]), None);
        assert_eq!(unsigned::<u16>(&json!({"p": 70000}), &["p"]), None);
        assert_eq!(number(&json!([1, 2]), &["a"]), None);
    }

    #[test]
    fn cuda_and_country() {
        assert_eq!(cuda_version("12.4").as_deref(), Some("12.4"));
        assert_eq!(cuda_version("12").as_deref(), Some("12.0"));
        assert_eq!(cuda_version("12.40").as_deref(), Some("12.40"));
        assert_eq!(cuda_version("twelve"), None);
        assert_eq!(country_suffix("Texas, US").as_deref(), Some("US"));
        assert_eq!(country_suffix("Somewhere"), None);
        assert_eq!(country_code("United States").as_deref(), Some("US"));
        assert_eq!(country_code("Germany").as_deref(), Some("DE"));
        assert_eq!(country_code("ca").as_deref(), Some("CA"));
        assert_eq!(country_code("Atlantis"), None);
    }
}

//! Durations as users write them in specs: Go-style strings such as "90s",
//! "15m", "1h30m" or "0.5h". The CRD schema holds the same pattern, so the
//! API server rejects a malformed value before the controller sees it.

use std::time::Duration;

/// The pattern the CRD schema enforces on every duration field.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration the controller works with (10 years); longer values are
/// clamped to it, so no arithmetic on a user's duration can overflow.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration string such as "1h30m". Returns `None` when malformed;
/// values above `MAX` (the schema accepts up to 24 characters) become `MAX`.
pub fn parse(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let digits = &rest[..number_len];
        if digits.starts_with('.') || digits.ends_with('.') {
            return None;
        }
        let number: f64 = digits.parse().ok()?;
        rest = &rest[number_len..];
        let (seconds_per_unit, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() {
        return None;
    }
    Some(Duration::try_from_secs_f64(total).map_or(MAX, |d| d.min(MAX)))
}

/// Whole seconds written the way `parse` reads them: "1h2m3s", "15m", "0s".
pub fn format(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for text in ["1h2m3s", "15m", "0s", "2h", "45s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("0.5h"), Some(Duration::from_secs(1800)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
    }

    #[test]
    fn huge_values_the_schema_accepts_are_clamped_not_overflowed() {
        assert_eq!(parse("999999999999999999999h"), Some(MAX));
        assert_eq!(parse(&format!("{}s", "9".repeat(22))), Some(MAX));
        assert_eq!(parse("87600h"), Some(MAX));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for bad in ["", "5", "5 minutes", "m5", "1d", "-1s", "1.s"] {
            assert_eq!(parse(bad), None, "{bad:?} should not parse");
        }
    }
}

//! `-o table|wide|json|yaml`, as kubectl spells it, for every command that prints data.

use std::sync::OnceLock;

use serde_json::Value;

/// The `-o` flag given, recorded once before a command runs.
static CHOSEN: OnceLock<Format> = OnceLock::new();

/// Records the `-o` flag (once, before a command runs).
pub fn choose(format: Option<Format>) {
    let _ = CHOSEN.set(format.unwrap_or_default());
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Columns for people (the default).
    #[default]
    Table,
    /// The table with every column.
    Wide,
    Json,
    Yaml,
}

impl Format {
    /// The `-o` flag, or JSON where a command's older `--json` flag was given.
    pub fn chosen(legacy_json: bool) -> Format {
        if legacy_json { Format::Json } else { CHOSEN.get().copied().unwrap_or_default() }
    }

    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }

    /// `value` as JSON or YAML; `None` for the table formats (the command draws its table).
    pub fn structured(self, value: &Value) -> Option<String> {
        match self {
            Format::Json => Some(serde_json::to_string_pretty(value).expect("a JSON value serializes") + "\n"),
            Format::Yaml => Some(serde_saphyr::to_string(value).expect("a JSON value serializes as YAML")),
            Format::Table | Format::Wide => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_say_the_same() {
        let value = serde_json::json!({"offers": [{"provider": "vastai", "pricePerHour": 0.29}], "failures": []});
        let yaml = Format::Yaml.structured(&value).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, value, "{yaml}");
        assert!(Format::Table.structured(&value).is_none());
    }
}

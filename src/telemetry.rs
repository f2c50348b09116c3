//! Structured logs through `tracing`: text or JSON by LOG_FORMAT, level by LOG_LEVEL.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is an EnvFilter directive such as "info" or "gpu_shopper=debug,kube=info".
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|err| {
        eprintln!("LOG_LEVEL {level:?} is not a valid filter ({err}); using \"info\"");
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true)).init(),
        LogFormat::Text => registry.with(fmt::layer()).init(),
    }
}

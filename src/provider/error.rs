//! Provider errors, each telling the caller what to do next.

use std::time::Duration;

use crate::crd::ProviderName;

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Transient: the same call may succeed later.
    Retry,
    /// This offer cannot be had: try the next-best one.
    NextOffer,
    /// Nothing on this marketplace will work now (auth, funds): try other marketplaces.
    SkipProvider,
    /// Retrying cannot help (a request we built wrong).
    GiveUp,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("{provider}: offer {offer_id} is no longer available ({message})")]
    OfferGone { provider: ProviderName, offer_id: String, message: String },
    #[error("{provider}: no capacity for this offer ({message})")]
    NoCapacity { provider: ProviderName, message: String },
    #[error("{provider}: authentication failed (HTTP {status}): check the API key/token")]
    AuthFailed { provider: ProviderName, status: u16 },
    #[error("{provider}: rate limited{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { provider: ProviderName, retry_after: Option<Duration> },
    #[error("{provider}: insufficient funds on the account ({message})")]
    InsufficientFunds { provider: ProviderName, message: String },
    #[error("{provider}: API unavailable ({message})")]
    Unavailable { provider: ProviderName, message: String },
    #[error("{provider}: API call timed out after {}s", timeout.as_secs_f32())]
    Timeout { provider: ProviderName, timeout: Duration },
    #[error(
        "{provider}: not answering (its last {unanswered} calls timed out); calls to it are held back for {}s, then one is tried",
        retry_in.as_secs().max(1)
    )]
    Unresponsive { provider: ProviderName, unanswered: u32, retry_in: Duration },
    #[error(
        "{provider}: {waiting} calls of this namespace already wait for the marketplace's rate limit; not sent, tried again later"
    )]
    Busy { provider: ProviderName, waiting: usize },
    #[error("{provider}: unexpected response (HTTP {status}): {body}")]
    BadResponse { provider: ProviderName, status: u16, body: String },
    #[error("{provider}: request refused (HTTP {status}): {body}")]
    Rejected { provider: ProviderName, status: u16, body: String },
    #[error("{provider}: instance {id} still exists after destroy (state {state}); the destroy is retried")]
    StillExists { provider: ProviderName, id: String, state: String },
}

impl ProviderError {
    pub fn next_step(&self) -> NextStep {
        match self {
            Self::OfferGone { .. } | Self::NoCapacity { .. } => NextStep::NextOffer,
            Self::AuthFailed { .. } | Self::InsufficientFunds { .. } => NextStep::SkipProvider,
            Self::RateLimited { .. }
            | Self::Unavailable { .. }
            | Self::Timeout { .. }
            | Self::Unresponsive { .. }
            | Self::Busy { .. }
            | Self::BadResponse { .. }
            | Self::StillExists { .. } => NextStep::Retry,
            Self::Rejected { .. } => NextStep::GiveUp,
        }
    }

    /// Short machine-readable reason for status and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OfferGone { .. } => "OfferGone",
            Self::NoCapacity { .. } => "NoCapacity",
            Self::AuthFailed { .. } => "AuthFailed",
            Self::RateLimited { .. } => "RateLimited",
            Self::InsufficientFunds { .. } => "InsufficientFunds",
            Self::Unavailable { .. } => "ProviderUnavailable",
            Self::Timeout { .. } => "ProviderTimeout",
            Self::Unresponsive { .. } => "ProviderUnresponsive",
            Self::Busy { .. } => "ProviderBusy",
            Self::BadResponse { .. } => "BadResponse",
            Self::Rejected { .. } => "Rejected",
            Self::StillExists { .. } => "DestroyUnconfirmed",
        }
    }

    /// For a create: the marketplace may have acted on it although no answer
    /// said so (a timeout, a 5xx, a dropped connection, an unreadable answer).
    /// Such a create stays pending until a listing shows what landed. A call held
    /// back from an unresponsive marketplace was never sent.
    pub fn create_may_have_landed(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unavailable { .. } | Self::BadResponse { .. })
    }
}

/// A response body cut short for an error message, with every secret removed.
pub fn excerpt(body: &[u8], secrets: &[&str]) -> String {
    const MAX: usize = 300;
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_short_and_never_holds_a_secret() {
        let body = format!("{{\"error\":\"bad key sk-1234567890\",\"pad\":\"{}\"}}", "é".repeat(400));
        let text = excerpt(body.as_bytes(), &["sk-1234567890"]);
        assert!(!text.contains("sk-1234567890"));
        assert!(text.contains("[redacted]"));
        assert!(text.len() <= 304);
    }
}

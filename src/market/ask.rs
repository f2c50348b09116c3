//! Asking one marketplace for offers, bounded by a timeout: the one search
//! that the offer cache and the uncached path both make.

use std::sync::Arc;
use std::time::Duration;

use crate::provider::{Offer, OfferQuery, Provider, ProviderError};

/// A search's answer, shared by everyone who asked for it.
pub type Answer = Result<Arc<[Offer]>, ProviderError>;

/// One marketplace's offers for `query`, or a timeout error after `timeout`.
pub async fn search_within(provider: &dyn Provider, query: &OfferQuery, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, provider.search_offers(query)).await {
        Ok(result) => result.map(Arc::from),
        Err(_) => Err(ProviderError::Timeout { provider: provider.name(), timeout }),
    }
}

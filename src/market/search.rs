//! Searches every allowed marketplace at once, each bounded by its own
//! timeout, so that a slow or failing marketplace degrades only itself.

use std::sync::Arc;
use std::time::Duration;

use super::ask::search_within;
use crate::crd::{OfferRequirements, ProviderName};
use crate::provider::{Offer, OfferQuery, Provider, ProviderError};

/// A marketplace that could not be searched, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderFailure {
    pub provider: ProviderName,
    pub error: ProviderError,
}

/// What the market offers now for some requirements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MarketView {
    /// Matching offers, best first.
    pub offers: Vec<Offer>,
    /// Marketplaces that were searched successfully.
    pub searched: Vec<ProviderName>,
    pub failures: Vec<ProviderFailure>,
}

/// How many offers each marketplace is asked for.
pub const OFFERS_PER_MARKETPLACE: u32 = 200;

/// Searches the marketplaces `requirements` allow, concurrently, priced at
/// each marketplace's minimum disk.
pub async fn search(
    providers: &[Arc<dyn Provider>],
    requirements: &OfferRequirements,
    timeout: Duration,
) -> MarketView {
    let query = OfferQuery { requirements: requirements.clone(), limit: OFFERS_PER_MARKETPLACE, ..Default::default() };
    search_cached(providers, &query, timeout, None).await
}

/// Searches for `query` (a rent's disk and ports priced in), answering from
/// `cache` where it is fresh and filling it.
pub async fn search_cached(
    providers: &[Arc<dyn Provider>],
    query: &OfferQuery,
    timeout: Duration,
    cache: Option<&super::OfferCache>,
) -> MarketView {
    let requirements = &query.requirements;
    let allowed =
        providers.iter().filter(|p| requirements.providers.is_empty() || requirements.providers.contains(&p.name()));
    let searches = allowed.map(|provider| async move {
        let name = provider.name();
        let answer = match cache {
            Some(cache) => cache.search(provider, query, timeout).await,
            None => search_within(provider.as_ref(), query, timeout).await,
        };
        (name, answer)
    });
    let mut view = MarketView::default();
    let matcher = super::Matcher::new(requirements);
    for (provider, answer) in futures::future::join_all(searches).await {
        match answer {
            Ok(offers) => {
                view.searched.push(provider);
                // Only the matching offers are copied out of the shared answer.
                view.offers.extend(offers.iter().filter(|o| matcher.matches(o)).cloned());
            }
            Err(error) => view.failures.push(ProviderFailure { provider, error }),
        }
    }
    super::rank(&mut view.offers);
    view
}

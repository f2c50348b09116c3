//! A short-lived cache of search results per marketplace and query, so that a
//! burst of sessions does not search the same market once each. Volatile
//! inventories get a shorter TTL; an offer found gone invalidates its marketplace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crd::ProviderName;
use crate::provider::{Offer, OfferQuery};

/// Search results by marketplace and query, with when they were fetched.
type Entries = HashMap<(ProviderName, String), (Instant, Vec<Offer>)>;

pub struct OfferCache {
    ttl: HashMap<ProviderName, Duration>,
    entries: Mutex<Entries>,
}

impl Default for OfferCache {
    /// TensorDock's inventory is the stalest, so it is trusted for the shortest time.
    fn default() -> Self {
        Self::with_ttls([
            (ProviderName::Vastai, Duration::from_secs(15)),
            (ProviderName::Tensordock, Duration::from_secs(10)),
            (ProviderName::Runpod, Duration::from_secs(30)),
        ])
    }
}

impl OfferCache {
    pub fn with_ttls(ttls: impl IntoIterator<Item = (ProviderName, Duration)>) -> Self {
        OfferCache { ttl: ttls.into_iter().collect(), entries: Mutex::default() }
    }

    fn key(provider: ProviderName, query: &OfferQuery) -> (ProviderName, String) {
        (provider, format!("{:?}/{}", query.requirements, query.limit))
    }

    pub fn get(&self, provider: ProviderName, query: &OfferQuery) -> Option<Vec<Offer>> {
        let ttl = self.ttl.get(&provider).copied().unwrap_or_default();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&Self::key(provider, query)).filter(|(at, _)| at.elapsed() < ttl).map(|(_, offers)| offers.clone())
    }

    pub fn put(&self, provider: ProviderName, query: &OfferQuery, offers: Vec<Offer>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(p, _), (at, _)| at.elapsed() < self.ttl.get(p).copied().unwrap_or_default());
        entries.insert(Self::key(provider, query), (Instant::now(), offers));
    }

    /// Forgets every cached search of `provider` (an offer it listed was gone).
    pub fn invalidate(&self, provider: ProviderName) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(p, _), _| *p != provider);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_per_provider_and_can_be_invalidated() {
        let cache = OfferCache::with_ttls([
            (ProviderName::Vastai, Duration::from_secs(60)),
            (ProviderName::Runpod, Duration::ZERO),
        ]);
        let query = OfferQuery::default();
        cache.put(ProviderName::Vastai, &query, vec![]);
        cache.put(ProviderName::Runpod, &query, vec![]);
        assert!(cache.get(ProviderName::Vastai, &query).is_some());
        assert!(cache.get(ProviderName::Runpod, &query).is_none(), "zero TTL never serves");
        cache.invalidate(ProviderName::Vastai);
        assert!(cache.get(ProviderName::Vastai, &query).is_none());
    }
}

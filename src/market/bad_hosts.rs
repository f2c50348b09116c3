//! Hosts that failed a verification (CUDA below what they advertised, never
//! reachable, workload crashed) are avoided for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crd::ProviderName;
use crate::provider::Offer;

pub struct BadHosts {
    avoid_for: Duration,
    until: Mutex<HashMap<(ProviderName, String), (Instant, String)>>,
}

impl BadHosts {
    pub fn new(avoid_for: Duration) -> Self {
        BadHosts { avoid_for, until: Mutex::default() }
    }

    /// The key a host is remembered by: its machine id, else the offer id.
    fn key(offer_provider: ProviderName, host_id: Option<&str>, offer_id: &str) -> (ProviderName, String) {
        (offer_provider, host_id.unwrap_or(offer_id).to_string())
    }

    pub fn mark(&self, provider: ProviderName, host_id: Option<&str>, offer_id: &str, why: &str) {
        let until = Instant::now() + self.avoid_for;
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::key(provider, host_id, offer_id), (until, why.to_string()));
    }

    /// Why the offer's host is avoided, if it is (known by its machine id or its offer id).
    pub fn avoided(&self, offer: &Offer) -> Option<String> {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (until, _)| *until > now);
        let by_host = offer.host_id.as_deref().map(|h| Self::key(offer.provider, Some(h), &offer.id));
        let by_offer = Self::key(offer.provider, None, &offer.id);
        by_host.iter().chain(std::iter::once(&by_offer)).find_map(|key| map.get(key).map(|(_, why)| why.clone()))
    }
}

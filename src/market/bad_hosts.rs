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

    /// Why the offer's host is avoided, if it is.
    pub fn avoided(&self, offer: &Offer) -> Option<String> {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(offer.provider, offer.host_id.as_deref(), &offer.id);
        match map.get(&key) {
            Some((until, why)) if *until > Instant::now() => Some(why.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }
}

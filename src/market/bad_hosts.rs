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

    /// Remembers one machine. Only offers that name their machine (Vast) can be
    /// avoided: a RunPod offer is a whole GPU type and a TensorDock one a whole
    /// location, and avoiding those would keep every tenant off them for one
    /// bad machine (the failing session itself moves on through its attempts).
    pub fn mark(&self, provider: ProviderName, host_id: &str, why: &str) {
        let until = Instant::now() + self.avoid_for;
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((provider, host_id.to_string()), (until, why.to_string()));
    }

    /// Why the offer's machine is avoided, if it is.
    pub fn avoided(&self, offer: &Offer) -> Option<String> {
        let host = offer.host_id.as_deref()?;
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (until, _)| *until > now);
        map.get(&(offer.provider, host.to_string())).map(|(_, why)| why.clone())
    }
}

//! The boundary to the GPU marketplaces: one trait, one real HTTP client per
//! marketplace. Nothing outside a client knows a marketplace's field names.

pub mod caller;
pub mod circuit;
pub mod error;
pub mod gate;
pub mod http;
pub mod json;
pub mod marketplace;
pub mod metered;
pub mod pacing;
pub mod runpod;
pub mod tensordock;
pub mod types;
pub mod vastai;

use std::sync::Arc;

pub use error::{NextStep, ProviderError};
pub use marketplace::{Gone, OfferQuery, Provider, confirm_gone, destroy_confirmed, labelled_for_any};
pub use types::{CreateRequest, Instance, InstanceLabel, InstanceState, Offer, PortEndpoint, SshTarget};

use crate::config::Config;

/// A client for every marketplace that has credentials.
pub fn from_config(config: &Config, policy: &http::CallPolicy) -> Vec<Arc<dyn Provider>> {
    let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
    if let Some(key) = &config.credentials.vastai {
        providers.push(Arc::new(vastai::VastAi::with_endpoint_interval(
            &config.base_urls.vastai,
            key.clone(),
            policy.clone(),
            config.vastai_endpoint_interval,
        )));
    }
    if let Some(td) = &config.credentials.tensordock {
        providers.push(Arc::new(tensordock::TensorDock::new(
            &config.base_urls.tensordock,
            td.api_token.clone(),
            policy.clone(),
        )));
    }
    if let Some(key) = &config.credentials.runpod {
        providers.push(Arc::new(runpod::RunPod::new(&config.base_urls.runpod, key.clone(), policy.clone())));
    }
    providers
}

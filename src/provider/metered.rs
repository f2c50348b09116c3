//! A `Provider` that records each call's latency and errors in the metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{CreateRequest, Instance, Offer, OfferQuery, Provider, ProviderError};
use crate::crd::ProviderName;
use crate::metrics::{Metrics, ProviderCallLabels, ProviderErrorLabels};

pub struct Metered {
    inner: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Provider>, metrics: Arc<Metrics>) -> Arc<dyn Provider> {
        Arc::new(Metered { inner, metrics })
    }

    fn record<T>(&self, operation: &'static str, started: Instant, result: &Result<T, ProviderError>) {
        let provider = self.inner.name().as_str();
        self.metrics
            .provider_call_duration
            .get_or_create(&ProviderCallLabels { provider, operation })
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = result {
            self.metrics
                .provider_api_errors
                .get_or_create(&ProviderErrorLabels { provider, kind: error.reason() })
                .inc();
        }
    }
}

#[async_trait]
impl Provider for Metered {
    fn name(&self) -> ProviderName {
        self.inner.name()
    }

    fn headroom(&self) -> super::pacing::Headroom {
        self.inner.headroom()
    }

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
        let started = Instant::now();
        let result = self.inner.search_offers(query).await;
        self.record("search", started, &result);
        result
    }

    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError> {
        let started = Instant::now();
        let result = self.inner.create_instance(request).await;
        self.record("create", started, &result);
        result
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let started = Instant::now();
        let result = self.inner.get_instance(id).await;
        self.record("get", started, &result);
        result
    }

    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let started = Instant::now();
        let result = self.inner.list_instances(installations).await;
        self.record("list", started, &result);
        result
    }

    async fn ensure_ssh_key(&self, id: &str, ssh_public_key: &str) -> Result<(), ProviderError> {
        let started = Instant::now();
        let result = self.inner.ensure_ssh_key(id, ssh_public_key).await;
        self.record("ensure_ssh_key", started, &result);
        result
    }

    async fn destroy_instance(&self, id: &str) -> Result<super::Gone, ProviderError> {
        let started = Instant::now();
        let result = self.inner.destroy_instance(id).await;
        self.record("destroy", started, &result);
        result
    }
}

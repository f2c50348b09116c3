//! A switch in front of every marketplace client: once closed (this replica is
//! no longer sure it leads), no call reaches a marketplace, so two replicas
//! never rent or destroy at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{CreateRequest, Instance, Offer, OfferQuery, Provider, ProviderError};
use crate::crd::ProviderName;

#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
}

impl Gate {
    /// No marketplace call starts after this returns.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

pub struct Gated {
    inner: Arc<dyn Provider>,
    gate: Arc<Gate>,
}

impl Gated {
    pub fn wrap(inner: Arc<dyn Provider>, gate: Arc<Gate>) -> Arc<dyn Provider> {
        Arc::new(Gated { inner, gate })
    }

    fn check(&self) -> Result<(), ProviderError> {
        if self.gate.is_closed() {
            return Err(ProviderError::Unavailable {
                provider: self.inner.name(),
                message: "this replica is no longer sure it leads; it stops calling marketplaces and exits".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for Gated {
    fn name(&self) -> ProviderName {
        self.inner.name()
    }

    fn headroom(&self) -> super::pacing::Headroom {
        self.inner.headroom()
    }

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError> {
        self.check()?;
        self.inner.search_offers(query).await
    }

    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError> {
        self.check()?;
        self.inner.create_instance(request).await
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        self.check()?;
        self.inner.get_instance(id).await
    }

    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        self.check()?;
        self.inner.list_instances(installations).await
    }

    async fn destroy_instance(&self, id: &str) -> Result<super::Gone, ProviderError> {
        self.check()?;
        self.inner.destroy_instance(id).await
    }

    async fn ensure_ssh_key(&self, id: &str, ssh_public_key: &str) -> Result<(), ProviderError> {
        self.check()?;
        self.inner.ensure_ssh_key(id, ssh_public_key).await
    }
}

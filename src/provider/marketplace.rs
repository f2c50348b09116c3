//! The one trait every marketplace client implements (Karpenter's
//! CloudProvider, crossplane's ExternalClient), and the destroy that counts
//! only when the marketplace shows the instance gone.

use async_trait::async_trait;

use super::caller::{Urgency, with_urgency};
use super::error::ProviderError;
use super::pacing;
use super::types::{CreateRequest, Instance, InstanceState, Offer};
use crate::crd::{OfferRequirements, ProviderName};

/// What to search for. Clients push down what their API can filter; the
/// market applies every requirement again to what comes back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OfferQuery {
    pub requirements: OfferRequirements,
    /// At most this many offers per marketplace.
    pub limit: u32,
    /// Disk the rent will ask for, GB; 0: the marketplace's minimum. Marketplaces
    /// that price storage separately price it in (Vast's `allocated_storage`,
    /// TensorDock's per-GB rate), so offers compare at the price really paid.
    pub disk_gb: u32,
    /// The rent exposes ports on the machine's public address (`spec.ports`):
    /// only hosts that can map ports directly qualify (Vast's `direct_port_count`).
    pub public_ports: bool,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> ProviderName;

    async fn search_offers(&self, query: &OfferQuery) -> Result<Vec<Offer>, ProviderError>;

    /// Rents `request.offer`. The instance carries `request.label`, so that it
    /// can be found again when the answer to this call is lost.
    async fn create_instance(&self, request: &CreateRequest) -> Result<Instance, ProviderError>;

    /// `None` when the marketplace does not know the id (any more).
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError>;

    /// Every instance labelled for one of `installations`, and no other.
    async fn list_instances(&self, installations: &[String]) -> Result<Vec<Instance>, ProviderError>;

    /// Idempotent: destroying an instance that is already gone succeeds, as
    /// `Gone::Already` (the marketplace answered that it does not know it).
    async fn destroy_instance(&self, id: &str) -> Result<Gone, ProviderError>;

    /// Makes sure `ssh_public_key` can log in to an adopted instance, for
    /// marketplaces where the key is attached after create (a create whose
    /// answer was lost never got that far). Idempotent.
    async fn ensure_ssh_key(&self, _id: &str, _ssh_public_key: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// What is left of the client's pacing budget (for `gpu-shopper doctor`).
    fn headroom(&self) -> pacing::Headroom {
        pacing::Headroom::default()
    }
}

/// Whether `instance` carries the label of one of `installations`.
pub fn labelled_for_any(instance: &Instance, installations: &[String]) -> bool {
    instance.label.as_ref().is_some_and(|l| installations.contains(&l.installation))
}

/// How an instance came to be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// This call destroyed it.
    Now,
    /// It was gone before this call (destroyed earlier, by us or anyone): its billing ended before.
    Already,
}

fn is_gone(instance: &Option<Instance>) -> bool {
    instance.as_ref().is_none_or(|i| i.state == InstanceState::Destroyed)
}

/// Destroys `id` and counts it done only when the marketplace shows it gone or
/// destroyed: a destroy refused inside a successful answer, or one the
/// marketplace has not acted on yet, is an error to retry, never a success.
/// Money calls: they go before every other call waiting for the marketplace.
pub async fn destroy_confirmed(provider: &dyn Provider, id: &str) -> Result<Gone, ProviderError> {
    with_urgency(Urgency::Money, async {
        let gone = provider.destroy_instance(id).await?;
        confirm_gone(provider, id, gone).await
    })
    .await
}

/// Looks `id` up after its destroy was answered (`gone` is what that answer said):
/// the destroy counts only when the marketplace no longer shows it alive.
pub async fn confirm_gone(provider: &dyn Provider, id: &str, gone: Gone) -> Result<Gone, ProviderError> {
    with_urgency(Urgency::Money, async {
        match provider.get_instance(id).await? {
            instance if is_gone(&instance) => Ok(gone),
            instance => Err(ProviderError::StillExists {
                provider: provider.name(),
                id: id.to_string(),
                state: instance.map(|i| format!("{:?}", i.state)).unwrap_or_default(),
            }),
        }
    })
    .await
}

//! The GpuOfferFilter reconciler: keeps each filter's status a live view of
//! the market (matching offers, cheapest price, best few), refreshed on an
//! interval, with a `MarketSearched` condition that names any marketplace that
//! could not be searched and why.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::status;
use crate::crd::conditions::{self, ConditionUpdate, Status, types};
use crate::crd::{GpuOfferFilter, GpuOfferFilterStatus, OfferSummary};
use crate::error::{Error, Result};
use crate::market::{self, MarketView};
use crate::provider::caller::{Urgency, calling};

/// How often a filter's view of the market is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How long one marketplace may take to answer a search.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How many offers the status lists.
pub const BEST_OFFERS: usize = 5;

pub async fn reconcile(filter: Arc<GpuOfferFilter>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = filter.namespace().ok_or(Error::MissingNamespace { kind: "GpuOfferFilter" })?;
    let api: Api<GpuOfferFilter> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = filter.meta().generation;
    let current = filter.status.clone().unwrap_or_default();

    // Our own status write wakes this reconcile too: do not search again before it is due.
    if let Some(wait) = refresh_due_in(&current, generation) {
        ctx.succeeded("gpuofferfilter", filter.as_ref());
        return Ok(Action::requeue(wait));
    }

    let now = Time(Timestamp::now());
    let mut desired = GpuOfferFilterStatus { observed_generation: generation, ..current.clone() };
    let condition = if ctx.providers.is_empty() {
        ConditionUpdate {
            type_: types::MARKET_SEARCHED,
            status: Status::False,
            reason: "NoProvidersConfigured",
            message: "no marketplace credentials are configured in the operator, so no market can be searched".into(),
        }
    } else {
        // A filter's view waits behind every rent's calls to the marketplace.
        let namespace = filter.namespace().unwrap_or_default();
        // Through the shared offer cache: a hundred filters of one tenant alike cost one search,
        // and distinct ones queue behind every rent's calls (and are bounded per namespace).
        let query = crate::provider::OfferQuery {
            requirements: filter.spec.requirements.clone(),
            limit: market::OFFERS_PER_MARKETPLACE,
            ..Default::default()
        };
        let search = market::search_cached(&ctx.providers, &query, SEARCH_TIMEOUT, Some(&ctx.offer_cache));
        let view = calling(Urgency::Background, &namespace, search).await;
        desired.matching_offers = Some(view.offers.len() as u32);
        desired.cheapest_price_per_hour = view.offers.first().map(|o| o.price_per_hour);
        desired.best_offers = view.offers.iter().take(BEST_OFFERS).map(summary).collect();
        desired.last_refresh_time = Some(now.clone());
        searched_condition(&view)
    };
    conditions::set(&mut desired.conditions, condition, generation, now);
    if current != desired {
        status::apply(&api, &filter.name_any(), &desired).await?;
    }
    ctx.succeeded("gpuofferfilter", filter.as_ref());
    Ok(Action::requeue(REFRESH_INTERVAL))
}

/// `Some(wait)` when the status is fresh for this generation.
fn refresh_due_in(status: &GpuOfferFilterStatus, generation: Option<i64>) -> Option<Duration> {
    if status.observed_generation != generation {
        return None;
    }
    let last = status.last_refresh_time.as_ref()?.0;
    let age = Timestamp::now().duration_since(last).unsigned_abs();
    // Refresh a little early rather than a little late.
    let due = REFRESH_INTERVAL.saturating_sub(Duration::from_secs(2));
    (age < due).then(|| REFRESH_INTERVAL.saturating_sub(age))
}

fn summary(offer: &crate::provider::Offer) -> OfferSummary {
    OfferSummary {
        provider: Some(offer.provider),
        offer_id: offer.id.clone(),
        gpu_model: offer.gpu_model.clone(),
        gpu_count: offer.gpu_count,
        vram_gb: offer.vram_gb,
        cuda_version: offer.cuda_version.clone(),
        price_per_hour: offer.price_per_hour,
        location: offer.location.clone(),
    }
}

fn searched_condition(view: &MarketView) -> ConditionUpdate<'static> {
    let searched: Vec<&str> = view.searched.iter().map(|p| p.as_str()).collect();
    let failures: Vec<String> = view.failures.iter().map(|f| f.error.to_string()).collect();
    if failures.is_empty() {
        return ConditionUpdate {
            type_: types::MARKET_SEARCHED,
            status: Status::True,
            reason: "AllSearched",
            message: format!("searched {}: {} matching offers", searched.join(", "), view.offers.len()),
        };
    }
    let (reason, head) = if searched.is_empty() {
        ("NoProviderSearched", "no marketplace could be searched".to_string())
    } else {
        ("SomeProvidersFailed", format!("searched {}; could not search the others", searched.join(", ")))
    };
    ConditionUpdate {
        type_: types::MARKET_SEARCHED,
        status: Status::False,
        reason,
        message: format!("{head}: {}", failures.join("; ")),
    }
}

//! What a session asks of an offer: its referenced GpuOfferFilter merged with
//! its inline requirements (the stricter wins), or why it cannot shop.

use kube::ResourceExt;
use kube::api::Api;

use super::step::Step;
use crate::controller::context::cached_or_get;
use crate::crd::{GpuOfferFilter, OfferRequirements};
use crate::error::Result;
use crate::market;

/// The referenced filter merged with the inline requirements, or why the session cannot shop.
pub async fn effective(step: &Step<'_>) -> Result<Result<OfferRequirements, (&'static str, String)>> {
    let inline = step.session.spec.requirements.clone().unwrap_or_default();
    let Some(filter_ref) = &step.session.spec.offer_filter_ref else { return Ok(Ok(inline)) };
    let namespace = step.session.namespace().unwrap_or_default();
    let filters: Api<GpuOfferFilter> = Api::namespaced(step.ctx.client.clone(), &namespace);
    let cache = step.ctx.stores().and_then(|stores| stores.filters(&namespace));
    let Some(filter) = cached_or_get(cache, &filters, &namespace, &filter_ref.name).await? else {
        return Ok(Err((
            "OfferFilterNotFound",
            format!(
                "GpuOfferFilter {:?} does not exist in namespace {namespace:?}: create it or fix spec.offerFilterRef.name",
                filter_ref.name
            ),
        )));
    };
    Ok(market::merge(&filter.spec.requirements, &inline)
        .map_err(|why| ("ConflictingRequirements", format!("the filter and the session contradict each other: {why}"))))
}

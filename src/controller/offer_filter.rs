//! The GpuOfferFilter reconciler. Keeps `observedGeneration` and the
//! `MarketSearched` condition current. Searching the market is not built yet;
//! the condition says so, and says when no marketplace is configured at all.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::status;
use crate::crd::conditions::{self, ConditionUpdate, types};
use crate::crd::{GpuOfferFilter, GpuOfferFilterStatus};
use crate::error::{Error, Result};

/// How often a filter's view of the market is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

pub async fn reconcile(filter: Arc<GpuOfferFilter>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = filter.namespace().ok_or(Error::MissingNamespace { kind: "GpuOfferFilter" })?;
    let api: Api<GpuOfferFilter> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = filter.meta().generation;

    let (reason, message) = if ctx.config.credentials.configured().is_empty() {
        (
            "NoProvidersConfigured",
            "no marketplace credentials are configured in the operator, so no market can be searched".to_string(),
        )
    } else {
        ("SearchNotAvailable", "this build of gpu-shopper does not search marketplaces yet".to_string())
    };
    let current = filter.status.clone().unwrap_or_default();
    let mut desired = GpuOfferFilterStatus { observed_generation: generation, ..current.clone() };
    let now = Time(Timestamp::now());
    conditions::set(
        &mut desired.conditions,
        ConditionUpdate { type_: types::MARKET_SEARCHED, status: false, reason, message },
        generation,
        now,
    );
    if current != desired {
        status::apply(&api, &filter.name_any(), &desired).await?;
    }
    ctx.succeeded("gpuofferfilter", filter.as_ref());
    Ok(Action::requeue(REFRESH_INTERVAL))
}

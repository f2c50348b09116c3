//! `GpuOfferFilter`: reusable offer constraints, with the live market in status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::requirements::{OfferRequirements, ProviderName};

/// Reusable constraints on marketplace offers. GpuSessions reference a filter by name; the controller keeps its status a live view of the offers that match.
// kube's repeated printcolumn(...) attributes trip clippy::duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "gpushopper.dev",
    version = "v1alpha1",
    kind = "GpuOfferFilter",
    plural = "gpuofferfilters",
    shortname = "gof",
    category = "gpushopper",
    namespaced,
    status = "GpuOfferFilterStatus",
    doc = "Reusable constraints on GPU marketplace offers; its status shows the offers that match now.",
    printcolumn(
        name = "Matching",
        type_ = "integer",
        json_path = ".status.matchingOffers",
        description = "Offers matching the filter at the last refresh"
    ),
    printcolumn(
        name = "Cheapest $/h",
        type_ = "number",
        json_path = ".status.cheapestPricePerHour",
        description = "Cheapest matching price per hour, USD"
    ),
    printcolumn(
        name = "Searched",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"MarketSearched\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct GpuOfferFilterSpec {
    /// The constraints an offer must satisfy.
    #[serde(flatten)]
    pub requirements: OfferRequirements,
}

/// The market as the controller last saw it for this filter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuOfferFilterStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions. `MarketSearched` says whether every allowed marketplace could be searched, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Number of offers that matched at the last refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching_offers: Option<u32>,

    /// Cheapest matching price for the whole machine, in US dollars per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheapest_price_per_hour: Option<f64>,

    /// The best few matching offers, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub best_offers: Vec<OfferSummary>,

    /// When the market was last searched for this filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
}

/// One marketplace offer, as shown in a filter's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfferSummary {
    /// Marketplace of the offer.
    pub provider: Option<ProviderName>,
    /// The marketplace's id for the offer.
    pub offer_id: String,
    /// GPU model, normalised across marketplaces.
    pub gpu_model: String,
    /// Number of GPUs on the machine.
    pub gpu_count: u32,
    /// Memory per GPU, in GiB.
    pub vram_gb: u32,
    /// CUDA version the host advertises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// Price for the whole machine, in US dollars per hour.
    pub price_per_hour: f64,
    /// Where the host is, as the marketplace reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

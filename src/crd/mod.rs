//! The custom resources of the `gpushopper.dev/v1alpha1` API, as Rust types.
//! The CRD YAML under `crds/` is generated from these (`gpu-shopper crds`).

pub mod conditions;
pub mod duration;
pub mod offer_filter;
pub mod reference;
pub mod requirements;
pub mod session;

pub use offer_filter::{GpuOfferFilter, GpuOfferFilterSpec, GpuOfferFilterStatus, OfferSummary};
pub use requirements::{Billing, OfferRequirements, ProviderName};
pub use session::{GpuSession, GpuSessionSpec, GpuSessionStatus, SessionPhase, WorkloadKind};

use kube::CustomResourceExt;

/// API group of every gpu-shopper resource.
pub const GROUP: &str = "gpushopper.dev";

/// Every CRD this operator serves, as a multi-document YAML stream.
pub fn crds_yaml() -> String {
    [GpuOfferFilter::crd(), GpuSession::crd()]
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("a CRD always serialises to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

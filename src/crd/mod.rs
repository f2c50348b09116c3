//! The custom resources of the `gpushopper.dev/v1alpha1` API, as Rust types.
//! The CRD YAML under `crds/` is generated from these (`gpu-shopper crds`).

pub mod conditions;
pub mod duration;
pub mod kstatus;
pub mod offer_filter;
pub mod reference;
pub mod requirements;
pub mod session;

pub use offer_filter::{GpuOfferFilter, GpuOfferFilterSpec, GpuOfferFilterStatus, OfferSummary};
pub use requirements::{Billing, OfferRequirements, ProviderName};
pub use session::{GpuSession, GpuSessionSpec, GpuSessionStatus, SessionPhase, WorkloadKind};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::CustomResourceExt;

/// The most items of a list, and characters of a string, that a field without
/// a bound of its own takes: a tenant cannot make the objects the operator
/// caches as large as etcd allows (1.5 MiB) through a field nobody bounded.
const DEFAULT_MAX_ITEMS: i64 = 64;
const DEFAULT_MAX_LENGTH: i64 = 1024;
/// Condition messages and reasons, as Kubernetes bounds them in metav1.Condition.
const CONDITION_MESSAGE_MAX: i64 = 32768;

/// `crd` with a bound on every list and string that has none (those that have one keep it).
fn bounded(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            bound(schema, "");
        }
    }
    crd
}

fn bound(schema: &mut JSONSchemaProps, name: &str) {
    match schema.type_.as_deref() {
        Some("array") if schema.max_items.is_none() => {
            schema.max_items = Some(if name == "conditions" { 32 } else { DEFAULT_MAX_ITEMS })
        }
        Some("string") if schema.max_length.is_none() && schema.enum_.is_none() && schema.format.is_none() => {
            schema.max_length = Some(if name == "message" { CONDITION_MESSAGE_MAX } else { DEFAULT_MAX_LENGTH })
        }
        _ => {}
    }
    for (key, property) in schema.properties.iter_mut().flatten() {
        bound(property, key);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(
        items,
    )) = schema.items.as_mut()
    {
        bound(items, name);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(
        values,
    )) = schema.additional_properties.as_mut()
    {
        bound(values, name);
    }
}

/// API group of every gpu-shopper resource.
pub const GROUP: &str = "gpushopper.dev";

/// Every CRD this operator serves, as it is installed: every list and string bounded.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [GpuOfferFilter::crd(), GpuSession::crd()].into_iter().map(bounded).collect()
}

/// Every CRD this operator serves, as a multi-document YAML stream.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("a CRD always serialises to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

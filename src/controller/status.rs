//! Status writes: always through the status subresource, by server-side apply
//! with our field manager, and only when something changed. Spec is never
//! written.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::CONTROLLER_NAME;
use crate::error::Result;

/// Applies `status` to the object's status subresource.
pub async fn apply<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(CONTROLLER_NAME).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Like `apply`, but refused (409) when the object changed since `resource_version`
/// was read, so a reconcile working from a stale copy cannot overwrite newer status.
/// Returns the resourceVersion the write produced.
pub async fn apply_at<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<String>,
    status: &impl Serialize,
) -> Result<Option<String>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({"resourceVersion": version});
    }
    let stored = api.patch_status(name, &PatchParams::apply(CONTROLLER_NAME).force(), &Patch::Apply(&patch)).await?;
    Ok(stored.meta().resource_version.clone())
}

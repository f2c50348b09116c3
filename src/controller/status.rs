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

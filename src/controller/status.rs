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
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
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
    let mut version = stored.meta().resource_version.clone();
    // Fields someone else wrote into status (a hand-made patch) are not this field
    // manager's, so the apply leaves them; status says only what the operator knows.
    let stored_status = serde_json::to_value(&stored).ok().map(|mut object| object["status"].take());
    if let Some(removals) = stored_status.and_then(|stored| removals(&patch["status"], &stored)) {
        let mut cleanup = serde_json::json!({"status": removals});
        if let Some(version) = &version {
            cleanup["metadata"] = serde_json::json!({"resourceVersion": version});
        }
        let cleaned = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&cleanup)).await?;
        version = cleaned.meta().resource_version.clone();
    }
    Ok(version)
}

/// The fields of `stored` that `intended` does not have (objects compared key by
/// key, lists as a whole, schema defaults of "" kept), as a merge patch that removes them; `None` when none.
fn removals(intended: &serde_json::Value, stored: &serde_json::Value) -> Option<serde_json::Value> {
    let (Some(intended), Some(stored)) = (intended.as_object(), stored.as_object()) else { return None };
    let mut patch = serde_json::Map::new();
    for (key, value) in stored {
        match intended.get(key) {
            // "" is what the schema defaults some texts to: not someone else's field.
            None if !value.is_null() && value.as_str() != Some("") => {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
            Some(inner) => {
                if let Some(nested) = removals(inner, value) {
                    patch.insert(key.clone(), nested);
                }
            }
            None => {}
        }
    }
    (!patch.is_empty()).then_some(serde_json::Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_fields_status_should_not_have_are_removed() {
        let intended = json!({"phase": "Failed", "ssh": {"host": "h"}, "conditions": [{"type": "Ready"}]});
        let stored = json!({"phase": "Failed", "instanceId": "7", "ssh": {"host": "h", "hostKeyFingerprint": "x"}, "conditions": [{"type": "Ready"}, {"type": "X"}]});
        assert_eq!(
            removals(&intended, &stored),
            Some(json!({"instanceId": null, "ssh": {"hostKeyFingerprint": null}}))
        );
        assert_eq!(removals(&intended, &intended), None);
    }
}

//! What this operator watches and marks as its own: the namespaces it serves
//! (or the whole cluster) and the label on objects it creates.

use kube::{Api, Client};

/// Label the operator sets on every object it creates, so its watches see only those.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "gpu-shopper";

/// What the operator watches: each listed namespace, or the whole cluster (`None`) when none is.
pub fn watch_scopes(namespaces: &[String]) -> Vec<Option<String>> {
    match namespaces {
        [] => vec![None],
        list => list.iter().cloned().map(Some).collect(),
    }
}

/// One Api per watched scope.
pub fn watched_apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    watch_scopes(namespaces).iter().map(|scope| scoped(client, scope.as_deref())).collect()
}

/// An Api over one namespace, or over all of them.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

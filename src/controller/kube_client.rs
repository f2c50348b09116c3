//! The operator's Kubernetes client, counting every request it sends by kind
//! (reads: get/list/watch; writes: create/update/patch/delete), so that the
//! API-server load per session can be measured.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{Method, Request};
use kube::Client;
use kube::client::ClientBuilder;
use tower::{Layer, Service};

use crate::metrics::{KubeRequestLabels, Metrics};

#[derive(Clone)]
pub struct CountRequests {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The kind of object a request is about ("gpusessions", "secrets", "leases", "events", ...),
/// so that per-session traffic can be told from the leader election's.
fn resource_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/GROUP/VERSION/...; then namespaces/NS/RESOURCE or RESOURCE.
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or(&[]);
    let resource: &str = match rest {
        ["namespaces", _, resource, ..] => resource,
        [resource, ..] => resource,
        [] => "other",
    };
    // A closed set keeps the label's cardinality fixed.
    ["gpusessions", "gpuofferfilters", "secrets", "events", "leases", "namespaces", "customresourcedefinitions"]
        .into_iter()
        .find(|known| *known == resource)
        .unwrap_or("other")
}

/// "read", "watch" or "write".
fn kind_of(method: &Method, query: Option<&str>) -> &'static str {
    match *method {
        Method::GET if query.is_some_and(|q| q.contains("watch=true") || q.contains("watch=1")) => "watch",
        Method::GET | Method::HEAD => "read",
        _ => "write",
    }
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let kind = kind_of(request.method(), request.uri().query());
        let resource = resource_of(request.uri().path());
        self.metrics.kube_requests.get_or_create(&KubeRequestLabels { kind, resource }).inc();
        self.inner.call(request)
    }
}

/// A client from KUBECONFIG or the in-cluster service account, with request counting.
pub async fn client(metrics: Arc<Metrics>) -> Result<Client, String> {
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let builder = ClientBuilder::try_from(config).map_err(|e| e.to_string())?;
    Ok(builder.with_layer(&CountRequests { metrics }).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_apart_from_reads_and_writes() {
        assert_eq!(kind_of(&Method::GET, Some("watch=true&resourceVersion=1")), "watch");
        assert_eq!(kind_of(&Method::GET, Some("limit=1")), "read");
        assert_eq!(kind_of(&Method::PATCH, None), "write");
        assert_eq!(kind_of(&Method::POST, None), "write");
    }

    #[test]
    fn requests_are_told_apart_by_the_kind_of_object() {
        assert_eq!(resource_of("/apis/gpushopper.dev/v1alpha1/namespaces/ns/gpusessions/s/status"), "gpusessions");
        assert_eq!(resource_of("/apis/gpushopper.dev/v1alpha1/gpusessions"), "gpusessions");
        assert_eq!(resource_of("/api/v1/namespaces/ns/secrets/s-ssh"), "secrets");
        assert_eq!(resource_of("/apis/coordination.k8s.io/v1/namespaces/ns/leases/gpu-shopper-d"), "leases");
        assert_eq!(resource_of("/apis/events.k8s.io/v1/namespaces/ns/events"), "events");
        assert_eq!(resource_of("/version"), "other");
    }
}

//! The operator's Kubernetes client, counting every request it sends by kind
//! (reads: get/list/watch; writes: create/update/patch/delete), so that the
//! API-server load per session can be measured, and bounding how many are in
//! flight at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{Method, Request};
use kube::Client;
use kube::client::ClientBuilder;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::metrics::{KubeRequestLabels, Metrics};

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

/// Requests to the API server in flight at once, watches and the leader's lease aside.
/// HTTP/1.1 holds a connection per request in flight, each with its TLS state and
/// buffers: a thousand sessions reconciled together opened about a thousand, most of
/// the operator's peak heap (docs/performance.md). Watches last for minutes and the
/// lease renewal must never queue behind the sessions' work, so neither waits here.
pub const API_REQUESTS_IN_FLIGHT: usize = 32;

/// Counts every request by kind and object, and holds all but watches and the
/// lease to `API_REQUESTS_IN_FLIGHT` at once (each request is classified once).
#[derive(Clone)]
pub struct Accounting {
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

impl<S> Layer<S> for Accounting {
    type Service = Accounted<S>;
    fn layer(&self, inner: S) -> Accounted<S> {
        Accounted { inner, metrics: self.metrics.clone(), permits: self.permits.clone() }
    }
}

#[derive(Clone)]
pub struct Accounted<S> {
    inner: S,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<Request<B>> for Accounted<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let kind = kind_of(request.method(), request.uri().query());
        let resource = resource_of(request.uri().path());
        self.metrics.kube_requests.get_or_create(&KubeRequestLabels { kind, resource }).inc();
        // The inner future is lazy: nothing is sent before the permit is held.
        let response = self.inner.call(request);
        if kind == "watch" || resource == "leases" {
            return Box::pin(response);
        }
        let permits = self.permits.clone();
        Box::pin(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            response.await
        })
    }
}

/// A client from KUBECONFIG or the in-cluster service account, with request counting
/// and at most `API_REQUESTS_IN_FLIGHT` requests in flight, and the configuration it came from.
pub async fn client(metrics: Arc<Metrics>) -> Result<(Client, kube::Config), String> {
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    Ok((client_from(config.clone(), metrics)?, config))
}

/// A client for `config`, counted and bounded like `client`'s. It must be built on
/// the runtime that will use it (the client's request queue runs as a task there).
pub fn client_from(config: kube::Config, metrics: Arc<Metrics>) -> Result<Client, String> {
    let builder = ClientBuilder::try_from(config).map_err(|e| e.to_string())?;
    let accounting = Accounting { metrics, permits: Arc::new(Semaphore::new(API_REQUESTS_IN_FLIGHT)) };
    Ok(builder.with_layer(&accounting).build())
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

    /// A stand-in API server that counts the requests it is serving at once; requests
    /// to a path ending in "/hang" never end.
    fn counting_server(
        serving: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl Service<Request<()>, Response = (), Error = std::convert::Infallible, Future: Send> + Clone {
        use std::sync::atomic::Ordering;
        tower::service_fn(move |request: Request<()>| {
            let (serving, most) = (serving.clone(), most.clone());
            async move {
                let now = serving.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if request.uri().path().ends_with("/hang") {
                    futures::future::pending::<()>().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                serving.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    }

    fn request(path: &str, query: &str) -> Request<()> {
        Request::get(format!("{path}?{query}")).body(()).unwrap()
    }

    #[tokio::test]
    async fn requests_in_flight_are_bounded_but_watches_and_the_lease_never_wait() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt;
        let (serving, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let metrics = Arc::new(Metrics::default());
        let accounting = Accounting { metrics: metrics.clone(), permits: Arc::new(Semaphore::new(4)) };
        let service = accounting.layer(counting_server(serving.clone(), most.clone()));
        let sessions = "/apis/gpushopper.dev/v1alpha1/namespaces/ns/gpusessions";
        let calls = (0..100).map(|_| service.clone().oneshot(request(sessions, "limit=1")));
        futures::future::join_all(calls).await;
        assert_eq!(most.load(Ordering::SeqCst), 4, "never more than the bound at once");
        let reads = KubeRequestLabels { kind: "read", resource: "gpusessions" };
        assert_eq!(metrics.kube_requests.get_or_create(&reads).get(), 100, "every request counted");

        // Every permit held by requests that never end: watches and the lease still go through.
        for _ in 0..4 {
            tokio::spawn(service.clone().oneshot(request(&format!("{sessions}/hang"), "")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let lease = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/gpu-shopper-d";
        let unbounded = [request(lease, ""), request(sessions, "watch=true")];
        for call in unbounded {
            tokio::time::timeout(std::time::Duration::from_secs(5), service.clone().oneshot(call))
                .await
                .expect("not queued behind the sessions' requests")
                .unwrap();
        }
        let queued = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            service.clone().oneshot(request(sessions, "limit=1")),
        );
        assert!(queued.await.is_err(), "a session's request waits for a permit");
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

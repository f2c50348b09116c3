//! The gateway's own /metrics: requests by status code, their latency, bytes
//! each way, logins to the machine, and the time with no machine behind it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

pub struct GatewayMetrics {
    registry: Registry,
    pub requests: Family<CodeLabels, Counter>,
    pub latency: Histogram,
    pub bytes: Family<DirectionLabels, Counter>,
    pub reconnects: Counter,
    pub seconds_without_machine: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gpu_shopper_gateway");
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register("requests", "Requests answered, by HTTP status code", requests.clone());
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 20));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's headers",
            latency.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register("bytes", "Body bytes carried, by direction (request, response)", bytes.clone());
        let reconnects = Counter::default();
        registry.register("logins", "SSH logins to a machine (the first, then each reconnect)", reconnects.clone());
        let seconds_without_machine = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "seconds_without_machine",
            "Time with no machine logged in behind the gateway",
            seconds_without_machine.clone(),
        );
        GatewayMetrics { registry, requests, latency, bytes, reconnects, seconds_without_machine }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics encode to a String");
        text
    }
}

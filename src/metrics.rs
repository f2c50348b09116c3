//! Prometheus metrics of the operator, served at `/metrics`. No label ever
//! carries a secret: labels are controller, phase, provider and error kinds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderErrorLabels {
    pub provider: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub provider: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
    pub provider: String,
}

/// Every metric the operator exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub providers_configured: Gauge,
    pub sessions_active: Family<PhaseLabels, Gauge>,
    pub orphans_detected: Family<ProviderLabels, Counter>,
    pub destroy_failures: Family<ProviderLabels, Counter>,
    pub ssh_verify_failures: Family<ProviderLabels, Counter>,
    pub provider_api_errors: Family<ProviderErrorLabels, Counter>,
    pub provider_call_duration: Family<ProviderCallLabels, Histogram>,
    pub time_to_ready: Histogram,
    pub accrued_cost: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            providers_configured: Gauge::default(),
            sessions_active: Family::default(),
            orphans_detected: Family::default(),
            destroy_failures: Family::default(),
            ssh_verify_failures: Family::default(),
            provider_api_errors: Family::default(),
            provider_call_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            time_to_ready: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            accrued_cost: Gauge::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "gpu_shopper_reconciliations",
            "Reconciliations run, per controller",
            m.reconciliations.clone(),
        );
        registry.register(
            "gpu_shopper_reconcile_errors",
            "Reconciliations that failed, per controller and error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "gpu_shopper_reconcile_duration_seconds",
            "Time one reconciliation took",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "gpu_shopper_providers_configured",
            "Marketplaces with credentials (0 means nothing can be rented)",
            m.providers_configured.clone(),
        );
        registry.register("gpu_sessions_active", "GpuSessions by phase and provider", m.sessions_active.clone());
        registry.register(
            "gpu_orphans_detected",
            "Instances of this deployment that no live GpuSession owned",
            m.orphans_detected.clone(),
        );
        registry.register(
            "gpu_destroy_failures",
            "Failed attempts to destroy an instance (each is retried)",
            m.destroy_failures.clone(),
        );
        registry.register(
            "gpu_ssh_verify_failures",
            "SSH logins or checks on a rented machine that failed",
            m.ssh_verify_failures.clone(),
        );
        registry.register(
            "gpu_provider_api_errors",
            "Marketplace API calls that failed, by provider and kind",
            m.provider_api_errors.clone(),
        );
        registry.register(
            "gpu_provider_call_duration_seconds",
            "Marketplace API call latency",
            m.provider_call_duration.clone(),
        );
        registry.register(
            "gpu_session_time_to_ready_seconds",
            "From GpuSession creation to Ready",
            m.time_to_ready.clone(),
        );
        registry.register(
            "gpu_accrued_cost_usd",
            "Cost accrued by the sessions this controller tracks, USD",
            m.accrued_cost.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

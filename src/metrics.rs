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
pub struct KubeRequestLabels {
    pub kind: &'static str,
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
    pub provider: String,
}

/// The name of every metric family, for the docs test and dashboards.
pub mod names {
    pub const GPU_SHOPPER_RECONCILIATIONS: &str = "gpu_shopper_reconciliations";
    pub const GPU_SHOPPER_RECONCILE_ERRORS: &str = "gpu_shopper_reconcile_errors";
    pub const GPU_SHOPPER_RECONCILE_DURATION_SECONDS: &str = "gpu_shopper_reconcile_duration_seconds";
    pub const GPU_SHOPPER_PROVIDERS_CONFIGURED: &str = "gpu_shopper_providers_configured";
    pub const GPU_SESSIONS_ACTIVE: &str = "gpu_sessions_active";
    pub const GPU_ORPHANS_DETECTED: &str = "gpu_orphans_detected";
    pub const GPU_DESTROY_FAILURES: &str = "gpu_destroy_failures";
    pub const GPU_SSH_VERIFY_FAILURES: &str = "gpu_ssh_verify_failures";
    pub const GPU_PROVIDER_API_ERRORS: &str = "gpu_provider_api_errors";
    pub const GPU_PROVIDER_CALL_DURATION_SECONDS: &str = "gpu_provider_call_duration_seconds";
    pub const GPU_SESSION_TIME_TO_READY_SECONDS: &str = "gpu_session_time_to_ready_seconds";
    pub const GPU_ACCRUED_COST_USD: &str = "gpu_accrued_cost_usd";
    pub const GPU_SHOPPER_KUBE_REQUESTS: &str = "gpu_shopper_kube_requests";
    /// Counters: Prometheus shows them with a `_total` suffix.
    pub const COUNTERS: &[&str] = &[
        GPU_SHOPPER_RECONCILIATIONS,
        GPU_SHOPPER_RECONCILE_ERRORS,
        GPU_ORPHANS_DETECTED,
        GPU_DESTROY_FAILURES,
        GPU_SSH_VERIFY_FAILURES,
        GPU_PROVIDER_API_ERRORS,
        GPU_SHOPPER_KUBE_REQUESTS,
    ];
    pub const ALL: &[&str] = &[
        GPU_SHOPPER_RECONCILIATIONS,
        GPU_SHOPPER_RECONCILE_ERRORS,
        GPU_SHOPPER_RECONCILE_DURATION_SECONDS,
        GPU_SHOPPER_PROVIDERS_CONFIGURED,
        GPU_SESSIONS_ACTIVE,
        GPU_ORPHANS_DETECTED,
        GPU_DESTROY_FAILURES,
        GPU_SSH_VERIFY_FAILURES,
        GPU_PROVIDER_API_ERRORS,
        GPU_PROVIDER_CALL_DURATION_SECONDS,
        GPU_SESSION_TIME_TO_READY_SECONDS,
        GPU_ACCRUED_COST_USD,
        GPU_SHOPPER_KUBE_REQUESTS,
    ];
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
    pub kube_requests: Family<KubeRequestLabels, Counter>,
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
            kube_requests: Family::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            names::GPU_SHOPPER_RECONCILIATIONS,
            "Reconciliations run, per controller",
            m.reconciliations.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_RECONCILE_ERRORS,
            "Reconciliations that failed, per controller and error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_RECONCILE_DURATION_SECONDS,
            "Time one reconciliation took",
            m.reconcile_duration.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_PROVIDERS_CONFIGURED,
            "Marketplaces with credentials (0 means nothing can be rented)",
            m.providers_configured.clone(),
        );
        registry.register(names::GPU_SESSIONS_ACTIVE, "GpuSessions by phase and provider", m.sessions_active.clone());
        registry.register(
            names::GPU_ORPHANS_DETECTED,
            "Instances of this deployment that no live GpuSession owned",
            m.orphans_detected.clone(),
        );
        registry.register(
            names::GPU_DESTROY_FAILURES,
            "Failed attempts to destroy an instance (each is retried)",
            m.destroy_failures.clone(),
        );
        registry.register(
            names::GPU_SSH_VERIFY_FAILURES,
            "SSH logins or checks on a rented machine that failed",
            m.ssh_verify_failures.clone(),
        );
        registry.register(
            names::GPU_PROVIDER_API_ERRORS,
            "Marketplace API calls that failed, by provider and kind",
            m.provider_api_errors.clone(),
        );
        registry.register(
            names::GPU_PROVIDER_CALL_DURATION_SECONDS,
            "Marketplace API call latency",
            m.provider_call_duration.clone(),
        );
        registry.register(
            names::GPU_SESSION_TIME_TO_READY_SECONDS,
            "From GpuSession creation to Ready",
            m.time_to_ready.clone(),
        );
        registry.register(
            names::GPU_ACCRUED_COST_USD,
            "Cost accrued by the sessions this controller tracks, USD",
            m.accrued_cost.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_KUBE_REQUESTS,
            "Requests this operator sent to the Kubernetes API server, by kind (read, watch, write)",
            m.kube_requests.clone(),
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

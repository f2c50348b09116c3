//! Prometheus metrics of the operator, served at `/metrics`. No label ever
//! carries a secret: labels are controller, phase, provider and error kinds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
pub struct NamespaceLabels {
    pub namespace: String,
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
pub struct SpendLabels {
    pub provider: String,
    /// The session's namespace (not `namespace`, which scrapes set to the operator's own).
    pub session_namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
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
    pub const GPU_SESSIONS_ACTIVE: &str = "gpu_shopper_sessions_active";
    pub const GPU_ORPHANS_DETECTED: &str = "gpu_shopper_orphans_detected";
    pub const GPU_DESTROY_FAILURES: &str = "gpu_shopper_destroy_failures";
    pub const GPU_SHOPPER_UNWATCHED_INSTANCES: &str = "gpu_shopper_unwatched_instances";
    pub const GPU_SHOPPER_NAMESPACE_CAP_REFUSALS: &str = "gpu_shopper_namespace_cap_refusals";
    pub const GPU_SSH_VERIFY_FAILURES: &str = "gpu_shopper_ssh_verify_failures";
    pub const GPU_PROVIDER_API_ERRORS: &str = "gpu_shopper_provider_api_errors";
    pub const GPU_PROVIDER_CALL_DURATION_SECONDS: &str = "gpu_shopper_provider_call_duration_seconds";
    pub const GPU_SESSION_TIME_TO_READY_SECONDS: &str = "gpu_shopper_session_time_to_ready_seconds";
    pub const GPU_ACCRUED_COST_USD: &str = "gpu_shopper_accrued_cost_usd";
    pub const GPU_SHOPPER_KUBE_REQUESTS: &str = "gpu_shopper_kube_requests";
    pub const GPU_SHOPPER_SPEND_USD: &str = "gpu_shopper_spend_usd";
    pub const GPU_SHOPPER_BUILD: &str = "gpu_shopper_build";
    pub const GPU_SHOPPER_LEADER: &str = "gpu_shopper_leader";
    pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
    pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds";
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
    pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
    pub const GPU_SHOPPER_HEAP_ALLOCATED_BYTES: &str = "gpu_shopper_heap_allocated_bytes";
    pub const GPU_SHOPPER_HEAP_RESIDENT_BYTES: &str = "gpu_shopper_heap_resident_bytes";
    // The names before every metric moved under `gpu_shopper_`, still exported as
    // aliases of the same series for one release so that existing alerts keep working.
    pub const OLD_SESSIONS_ACTIVE: &str = "gpu_sessions_active";
    pub const OLD_ORPHANS_DETECTED: &str = "gpu_orphans_detected";
    pub const OLD_DESTROY_FAILURES: &str = "gpu_destroy_failures";
    pub const OLD_SSH_VERIFY_FAILURES: &str = "gpu_ssh_verify_failures";
    /// Counters: Prometheus shows them with a `_total` suffix.
    pub const COUNTERS: &[&str] = &[
        GPU_SHOPPER_RECONCILIATIONS,
        GPU_SHOPPER_RECONCILE_ERRORS,
        GPU_ORPHANS_DETECTED,
        GPU_DESTROY_FAILURES,
        GPU_SSH_VERIFY_FAILURES,
        GPU_PROVIDER_API_ERRORS,
        GPU_SHOPPER_NAMESPACE_CAP_REFUSALS,
        GPU_SHOPPER_KUBE_REQUESTS,
        GPU_SHOPPER_SPEND_USD,
        PROCESS_CPU_SECONDS,
        OLD_ORPHANS_DETECTED,
        OLD_DESTROY_FAILURES,
        OLD_SSH_VERIFY_FAILURES,
    ];
    pub const ALL: &[&str] = &[
        GPU_SHOPPER_RECONCILIATIONS,
        GPU_SHOPPER_RECONCILE_ERRORS,
        GPU_SHOPPER_RECONCILE_DURATION_SECONDS,
        GPU_SHOPPER_PROVIDERS_CONFIGURED,
        GPU_SESSIONS_ACTIVE,
        GPU_ORPHANS_DETECTED,
        GPU_SHOPPER_UNWATCHED_INSTANCES,
        GPU_DESTROY_FAILURES,
        GPU_SSH_VERIFY_FAILURES,
        GPU_PROVIDER_API_ERRORS,
        GPU_SHOPPER_NAMESPACE_CAP_REFUSALS,
        GPU_PROVIDER_CALL_DURATION_SECONDS,
        GPU_SESSION_TIME_TO_READY_SECONDS,
        GPU_ACCRUED_COST_USD,
        GPU_SHOPPER_KUBE_REQUESTS,
        GPU_SHOPPER_SPEND_USD,
        GPU_SHOPPER_BUILD,
        GPU_SHOPPER_LEADER,
        PROCESS_RESIDENT_MEMORY_BYTES,
        PROCESS_CPU_SECONDS,
        PROCESS_OPEN_FDS,
        PROCESS_START_TIME_SECONDS,
        GPU_SHOPPER_HEAP_ALLOCATED_BYTES,
        GPU_SHOPPER_HEAP_RESIDENT_BYTES,
        OLD_SESSIONS_ACTIVE,
        OLD_ORPHANS_DETECTED,
        OLD_DESTROY_FAILURES,
        OLD_SSH_VERIFY_FAILURES,
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
    /// Instances labelled for a namespace this operator does not watch: they bill, and are not destroyed.
    pub unwatched_instances: Family<ProviderLabels, Gauge>,
    /// Rents not sent because the namespace's cap was reached.
    pub namespace_cap_refusals: Family<NamespaceLabels, Counter>,
    pub destroy_failures: Family<ProviderLabels, Counter>,
    pub ssh_verify_failures: Family<ProviderLabels, Counter>,
    pub provider_api_errors: Family<ProviderErrorLabels, Counter>,
    pub provider_call_duration: Family<ProviderCallLabels, Histogram>,
    pub time_to_ready: Histogram,
    pub accrued_cost: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    /// Money spent, only ever growing: it survives the sessions' deletion.
    pub spend_usd: Family<SpendLabels, Counter<f64, AtomicU64>>,
    /// 1 while this replica leads (or runs without election), 0 on a standby.
    pub leader: Gauge,
    process: ProcessGauges,
    heap: HeapGauges,
}

/// What the memory allocator reports, to tell memory in use from memory it keeps.
#[derive(Default)]
struct HeapGauges {
    allocated_bytes: Gauge,
    resident_bytes: Gauge,
}

/// The allocator's figures: bytes handed out to the program, and bytes of pages it
/// holds resident (in use, free but not yet returned, and its own metadata).
#[derive(Clone, Copy, Debug)]
pub struct HeapFigures {
    pub allocated_bytes: u64,
    pub resident_bytes: u64,
}

/// Reads the allocator's figures; set once by the binary, which chooses the allocator.
static HEAP_READER: std::sync::OnceLock<fn() -> Option<HeapFigures>> = std::sync::OnceLock::new();

/// Called by the binary that installs the global allocator; without it the heap series stay at 0.
pub fn set_heap_reader(reader: fn() -> Option<HeapFigures>) {
    let _ = HEAP_READER.set(reader);
}

impl HeapGauges {
    fn refresh(&self) {
        if let Some(figures) = HEAP_READER.get().and_then(|read| read()) {
            self.allocated_bytes.set(figures.allocated_bytes as i64);
            self.resident_bytes.set(figures.resident_bytes as i64);
        }
    }
}

/// This process as the usual `process_*` series, read from /proc at each scrape.
#[derive(Default)]
struct ProcessGauges {
    resident_memory_bytes: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    open_fds: Gauge,
    start_time_seconds: Gauge,
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
            unwatched_instances: Family::default(),
            namespace_cap_refusals: Family::default(),
            destroy_failures: Family::default(),
            ssh_verify_failures: Family::default(),
            provider_api_errors: Family::default(),
            provider_call_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            time_to_ready: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            accrued_cost: Gauge::default(),
            kube_requests: Family::default(),
            spend_usd: Family::default(),
            leader: Gauge::default(),
            process: ProcessGauges::default(),
            heap: HeapGauges::default(),
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
            names::GPU_SHOPPER_UNWATCHED_INSTANCES,
            "Instances labelled for a namespace this operator does not watch (they bill and are not destroyed)",
            m.unwatched_instances.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_NAMESPACE_CAP_REFUSALS,
            "Rents not sent because the namespace's spending cap was reached",
            m.namespace_cap_refusals.clone(),
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
        registry.register(
            names::GPU_SHOPPER_SPEND_USD,
            "Money spent on rented machines, USD, by marketplace and namespace (never decreases)",
            m.spend_usd.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register(names::GPU_SHOPPER_BUILD, "The running build (always 1)", build);
        registry.register(names::GPU_SHOPPER_LEADER, "1 while this replica leads, 0 on a standby", m.leader.clone());
        registry.register(
            names::PROCESS_RESIDENT_MEMORY_BYTES,
            "Resident memory size in bytes",
            m.process.resident_memory_bytes.clone(),
        );
        registry.register(
            names::PROCESS_CPU_SECONDS,
            "User and system CPU time spent in seconds",
            m.process.cpu_seconds.clone(),
        );
        registry.register(names::PROCESS_OPEN_FDS, "Number of open file descriptors", m.process.open_fds.clone());
        registry.register(
            names::PROCESS_START_TIME_SECONDS,
            "Start time of the process since the Unix epoch in seconds",
            m.process.start_time_seconds.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_HEAP_ALLOCATED_BYTES,
            "Bytes the program holds from its memory allocator",
            m.heap.allocated_bytes.clone(),
        );
        registry.register(
            names::GPU_SHOPPER_HEAP_RESIDENT_BYTES,
            "Bytes of resident pages the memory allocator holds, in use or kept",
            m.heap.resident_bytes.clone(),
        );
        let deprecated = |new: &str| format!("Deprecated alias of {new}, removed in the next release");
        registry.register(
            names::OLD_SESSIONS_ACTIVE,
            deprecated(names::GPU_SESSIONS_ACTIVE),
            m.sessions_active.clone(),
        );
        registry.register(
            names::OLD_ORPHANS_DETECTED,
            deprecated(names::GPU_ORPHANS_DETECTED),
            m.orphans_detected.clone(),
        );
        registry.register(
            names::OLD_DESTROY_FAILURES,
            deprecated(names::GPU_DESTROY_FAILURES),
            m.destroy_failures.clone(),
        );
        registry.register(
            names::OLD_SSH_VERIFY_FAILURES,
            deprecated(names::GPU_SSH_VERIFY_FAILURES),
            m.ssh_verify_failures.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        self.process.refresh();
        self.heap.refresh();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl ProcessGauges {
    /// Reads /proc/self (Linux); elsewhere the series stay at 0.
    fn refresh(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        {
            self.resident_memory_bytes.set(kb * 1024);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(entries.count() as i64);
        }
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // Fields after the command name (which may hold spaces) in parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = clock_ticks_per_second();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name; starttime is 22 (19).
        if let (Some(user), Some(system)) = (number(11), number(12)) {
            let total = (user + system) / ticks;
            let counted = self.cpu_seconds.get();
            if total > counted {
                self.cpu_seconds.inc_by(total - counted);
            }
        }
        if let (Some(started), Some(boot)) = (number(19), boot_time_seconds()) {
            self.start_time_seconds.set((boot + started / ticks) as i64);
        }
    }
}

/// USER_HZ: 100 on every Linux this runs on (the kernel's ABI constant for /proc).
fn clock_ticks_per_second() -> f64 {
    100.0
}

fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_series_show_what_the_allocator_reports() {
        set_heap_reader(|| Some(HeapFigures { allocated_bytes: 1_000, resident_bytes: 4_096 }));
        let text = Metrics::default().encode();
        assert!(text.contains("gpu_shopper_heap_allocated_bytes 1000"), "{text}");
        assert!(text.contains("gpu_shopper_heap_resident_bytes 4096"), "{text}");
    }
}

//! `GpuSession`: one rented GPU machine for one purpose, from shopping to
//! destruction.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::requirements::{OfferRequirements, ProviderName};

/// One rented GPU machine. The operator shops across marketplaces, rents the best offer, proves the machine works, and destroys it when the session ends or is deleted.
// kube's repeated printcolumn(...) attributes trip clippy::duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "gpushopper.dev",
    version = "v1alpha1",
    kind = "GpuSession",
    plural = "gpusessions",
    shortname = "gs",
    category = "gpushopper",
    namespaced,
    status = "GpuSessionStatus",
    doc = "One rented GPU machine: shopped for, rented, proven to work, handed over through a Secret, and destroyed when done.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the session is in its life"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Every readiness stage passed"
    ),
    printcolumn(name = "GPU", type_ = "string", json_path = ".status.gpu", description = "GPUs rented"),
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".status.provider",
        description = "Marketplace rented from"
    ),
    printcolumn(
        name = "$/h",
        type_ = "number",
        json_path = ".status.pricePerHour",
        description = "Price per hour, USD"
    ),
    printcolumn(
        name = "Cost",
        type_ = "number",
        json_path = ".status.accruedCostUsd",
        description = "Cost so far, USD"
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = 1),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.endpoints[0].url",
        priority = 1,
        description = "In-cluster address of an Inference session's model"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.offerFilterRef) || has(self.requirements)").message("set spec.offerFilterRef, spec.requirements, or both: the operator needs constraints to shop with"))]
#[serde(rename_all = "camelCase")]
pub struct GpuSessionSpec {
    /// A GpuOfferFilter in the same namespace whose constraints apply. Combined with `requirements`, the stricter of each wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_filter_ref: Option<OfferFilterRef>,

    /// Inline constraints on the offer. Combined with the referenced filter, the stricter of each wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<OfferRequirements>,

    /// Container image to run on the machine. Defaults to a CUDA base image. TensorDock rents whole VMs: there the machine runs Ubuntu 24.04 and this image is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Shell script run once when the machine starts, before the workload. Its output is kept on the machine and its tail surfaced in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub start_script: Option<String>,

    /// Environment variables for the start script and the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// TCP ports to expose on the machine, besides SSH.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,

    /// Disk space to rent, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 4096))]
    pub disk_gb: Option<u32>,

    /// What runs on the machine and how the operator knows it works.
    #[serde(default)]
    pub workload: Workload,

    /// How long each readiness stage may take before the machine is given up on. Unset stages use defaults that depend on the workload kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<StageTimeouts>,

    /// Limits on how long the machine is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,

    /// Spending limit for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,

    /// Who the cost of this session is reported against (a team, a user, a project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub consumer: Option<String>,

    /// How many offers may be tried before the session fails. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: Option<u32>,

    /// What to do when the machine is lost after it was rented (destroyed behind the operator's back, stopped, preempted): `Replace` rents another machine with the same key Secret, `Fail` ends the session. Default: Replace for Inference, Fail for Interactive and Job (their state on the machine is gone; renting again would spend money on a blank box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_instance_loss: Option<InstanceLossPolicy>,
}

/// What to do when a rented machine is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum InstanceLossPolicy {
    /// Rent another machine (recorded as an attempt; the new host key is pinned).
    Replace,
    /// End the session as Failed.
    Fail,
}

impl GpuSessionSpec {
    /// The loss policy in force: the spec's, else the workload kind's default.
    pub fn instance_loss_policy(&self) -> InstanceLossPolicy {
        self.on_instance_loss.unwrap_or(match self.workload.kind {
            WorkloadKind::Inference => InstanceLossPolicy::Replace,
            WorkloadKind::Interactive | WorkloadKind::Job => InstanceLossPolicy::Fail,
        })
    }
}

/// A reference to a GpuOfferFilter in the session's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct OfferFilterRef {
    /// Name of the GpuOfferFilter.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An environment variable set on the machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.valueFrom) || !has(self.value) || self.value == ''").message("set value or valueFrom, not both"))]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name: letters, digits and underscores, not starting with a digit.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// Variable value. It travels in the marketplace's create request: put secrets in `valueFrom`.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
    /// The value from a key of a Secret or ConfigMap in the session's namespace. The operator reads it and writes it to the machine over the pinned SSH login, in a file only the login user can read that the workload sources; it never goes into the GpuSession, its status or Events, logs, or a marketplace request. A missing Secret or key keeps the session Pending, before anything is rented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)").message("set exactly one of secretKeyRef and configMapKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap in the session's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct KeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Something the machine needs before the workload starts, at `path`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.secret), has(self.url), has(self.s3)].filter(x, x).size() == 1").message("an input takes exactly one source: configMap, secret, url or s3"))]
#[x_kube(validation = Rule::new("!self.path.contains('..')").message("an input's path may not contain '..'"))]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// Where it goes on the machine: relative paths are under the session's working directory (`~/.gpu-shopper/<session uid>/`); a ConfigMap or Secret without `key`, and an S3 `prefix`, make it a directory.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// A ConfigMap's key (or all its keys), copied over SSH. For small files (a ConfigMap holds at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ObjectKeys>,
    /// A Secret's key (or all its keys), copied over SSH, readable only by the login user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectKeys>,
    /// A file the machine downloads itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// An object, or every object under a prefix, of an S3-compatible bucket: the operator signs short-lived GET URLs and the machine downloads them directly (the bucket's credentials never leave the cluster, and the bytes never pass through the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
}

/// A ConfigMap or Secret, and optionally one key of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct ObjectKeys {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// One key, written at `path`; unset: every key, each a file under `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// A file fetched from a URL by the machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct UrlSource {
    /// Where to fetch it (https; plain http only for addresses you trust).
    #[schemars(regex(pattern = r"^https?://"), length(max = 4096))]
    pub url: String,
    /// The file's SHA-256 (hex): verified on the machine; a mismatch fails the session (the source is wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// Where in an S3-compatible store, and the credentials to sign with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The store's URL (`https://s3.us-east-1.amazonaws.com`, `https://<account>.r2.cloudflarestorage.com`, ...).
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub endpoint: String,
    /// Default "us-east-1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the session's namespace with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`). Read by the operator only, to sign.
    pub credentials_secret_ref: SecretRef,
    /// Virtual-host style URLs (`bucket.endpoint`) instead of path style (`endpoint/bucket`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_hosted: Option<bool>,
}

/// A Secret in the session's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Objects of a bucket to download.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.key) != has(self.prefix)").message("set exactly one of key (one object) and prefix (every object under it)"))]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    #[serde(flatten)]
    pub location: S3Location,
    /// One object, written at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub key: Option<String>,
    /// Every object under this prefix, each at its rest of the key under `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
}

/// A file or directory on the machine saved to a bucket when the Job exits (whether it succeeded or failed), before the machine is destroyed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// A file or directory on the machine (relative: under the session's working directory).
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// Where it goes: a file to `<prefix><file name>`, a directory's files to `<prefix><path under it>`.
    pub s3: S3Destination,
}

/// Where outputs go in an S3-compatible store.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[serde(flatten)]
    pub location: S3Location,
    /// Key prefix, for example "runs/2026-12-04/".
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub prefix: String,
}

/// What kind of work the machine does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum WorkloadKind {
    /// A machine to log into over SSH. Ready once SSH and CUDA are proven.
    #[default]
    Interactive,
    /// A model server with an OpenAI-compatible HTTP API. Ready once it lists the model and answers the test prompt.
    Inference,
    /// A command whose exit ends the session; the exit code and log tail land in status.
    Job,
}

/// The workload and how to tell that it works.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.kind != 'Job' || (has(self.command) && size(self.command) > 0)").message("a Job workload needs workload.command: the command whose exit ends the session"))]
#[x_kube(validation = Rule::new("self.kind != 'Inference' || has(self.inference)").message("an Inference workload needs workload.inference with at least the model name"))]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Interactive (default), Inference, or Job.
    #[serde(default)]
    pub kind: WorkloadKind,

    /// Shell command to run. Required for Job; for Inference it starts the model server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub command: Option<String>,

    /// How to probe an Inference workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceProbe>,

    /// What the machine needs before the workload starts: checked before anything is rented, put in place by the InputsReady stage (sizes and checksums verified).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub inputs: Vec<Input>,

    /// A Job's results, saved to buckets when it exits (whether it succeeded or failed), each confirmed in the store before the machine is destroyed; the job's full log is saved beside them. Bounded by `spec.timeouts.outputs` (default 30m), counted in the budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub outputs: Vec<Output>,
}

/// How to tell that a model server really answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceProbe {
    /// Model name the server must list at `/v1/models`.
    #[schemars(length(min = 1, max = 512))]
    pub model: String,
    /// Port the server listens on. Default 8000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Path that lists the served models. Default "/v1/models".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub health_path: Option<String>,
    /// Prompt sent to `/v1/completions`; the workload is ready only when it is answered. Default "Say hello.".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub test_prompt: Option<String>,
    /// The API key in-cluster clients must send (`Authorization: Bearer <key>`): a key of a Secret of your own in the session's namespace. Unset: the operator creates the Secret `<name>-api-key` with a random key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// The gateway in front of the model (overrides the operator's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
}

/// A key of a Secret in the session's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret. Default "api-key".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or(API_KEY_FIELD)
    }
}

/// The key of the API key in the Secret the operator creates, and the default of a user's Secret.
pub const API_KEY_FIELD: &str = "api-key";

/// The gateway Deployment in front of an Inference session's model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateway replicas. Default: the operator's (`GATEWAY_REPLICAS`, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: Option<i32>,
    /// Resources of each gateway container. Default: the operator's (`GATEWAY_RESOURCES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Who may call the Service: a NetworkPolicy lets only these peers reach the gateway. Unset: the operator's default (`GATEWAY_NETWORK_POLICY`: none, or the session's namespace only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub allowed_from: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

/// The model port when `workload.inference.port` is not given.
pub const DEFAULT_INFERENCE_PORT: u16 = 8000;

impl InferenceProbe {
    /// The port the model server listens on, on the machine.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_INFERENCE_PORT)
    }
}

/// Time allowed for each readiness stage, as durations such as "90s", "15m" or "1h30m".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageTimeouts {
    /// From create until the marketplace reports the machine running with an SSH endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub instance_running: Option<String>,
    /// From running until an SSH login with the session's key succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub ssh_ready: Option<String>,
    /// For every input to be in place and verified on the machine (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub inputs_ready: Option<String>,
    /// After a Job exits, for its outputs to be saved and confirmed (default 30m); then the machine is destroyed anyway and the lost outputs named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub outputs: Option<String>,
    /// For `nvidia-smi` over SSH to report the real GPU, driver and CUDA version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub cuda_verified: Option<String>,
    /// From CUDA verified until the workload answers (an Inference server can take long to pull and load a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub workload_ready: Option<String>,
}

/// Limits on how long the machine is kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifetime {
    /// Longest time the machine is kept once running, for example "8h". Capped by the operator-wide maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub max_duration: Option<String>,
    /// End the session when the GPUs have been idle this long, for example "30m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 24))]
    pub idle_timeout: Option<String>,
}

/// Spending limit for one session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// End the session when its accrued cost reaches this many US dollars. Must be greater than 0.
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1000000.0").message("budget.maxCostUsd must be greater than 0 and at most 1000000"))]
    pub max_cost_usd: f64,
}

/// Where a session is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SessionPhase {
    /// Accepted, not yet shopping.
    Pending,
    /// Shopping for an offer and renting it.
    Provisioning,
    /// Rented; proving that it works stage by stage.
    Verifying,
    /// Proven and handed over.
    Running,
    /// Ended as intended (a Job exited 0, the lifetime or budget was reached).
    Succeeded,
    /// Ended without a working machine, or a Job exited non-zero.
    Failed,
    /// Being destroyed.
    Terminating,
}

/// What the operator knows about the session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSessionStatus {
    /// Where the session is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// Machine-readable reason of the last phase change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// Human-readable explanation of the last phase change, with what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub message: Option<String>,
    /// The `metadata.generation` of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Readiness stages: InstanceRunning, SSHReady, CUDAVerified, WorkloadReady, and Ready when all
    /// passed (Unknown while shopping or proving, False when it cannot be ready); Complete or Failed
    /// once the session has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Marketplace the machine is rented from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// The marketplace's id of the offer rented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<String>,
    /// The marketplace's id of the machine, when the offer named one (Vast); a
    /// machine that fails a stage is avoided by every session for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The marketplace's id of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// GPUs rented, for example "1x RTX 4090".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Why this offer was chosen over the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub selection: Option<String>,
    /// Price for the machine, in US dollars per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
    /// Cost accrued so far, in US dollars, as of `accruedCostAt`. While the machine runs it is refreshed every few minutes (price x time gives it at any moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accrued_cost_usd: Option<f64>,
    /// When `accruedCostUsd` was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accrued_cost_at: Option<Time>,
    /// When the machine was rented and started billing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rented_at: Option<Time>,
    /// When the first create was sent for this session; MAX_SESSION_DURATION counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_started_at: Option<Time>,
    /// A host being destroyed and replaced, stored before its destroy is sent: a
    /// reconcile that finds it (the status written after the destroy was lost)
    /// finishes the replacement instead of taking the machine for a lost one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<Replacement>,
    /// The session's end, stored before its machine's destroy is sent: a reconcile
    /// that finds it (the status written after the destroy was lost) finishes the
    /// end as what it was, never takes the machine for a lost one. The phase and the
    /// terminal condition are written only once the machine is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
    /// Creates sent whose outcome is not known yet (the answer was lost or never came): each stays until that marketplace's listing shows what landed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_creates: Vec<CreateIntent>,
    /// When the machine was proven and handed over; the lifetime counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Since when the GPUs have been idle, while they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,
    /// When billing ended: the marketplace confirmed the instance destroyed, or, for a lost instance, the last time it was seen alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// When the session ends at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// How to reach the machine over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshEndpoint>,
    /// What `nvidia-smi` on the machine really reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<VerifiedMachine>,
    /// Name of the Secret that holds the SSH key pair (`ssh-privatekey`, `ssh-publickey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Offers tried, in order, and why each was left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub attempts: Vec<Attempt>,
    /// How a Job workload ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobResult>,
    /// The last re-key asked for with the `gpushopper.dev/rekey` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<RekeyStatus>,
    /// Where an Inference session's model is served: in the cluster through the session's Service, and on the machine's public address only for a port `spec.ports` exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 33))]
    pub endpoints: Vec<ServedEndpoint>,
}

/// The annotation on an Inference session's gateway Lease naming the instance the
/// gateway serves ("" for none): how the operator knows the endpoint answers.
pub const GATEWAY_SERVING_ANNOTATION: &str = "gpushopper.dev/serving-instance";
/// How often a gateway renews its Lease; three missed renewals and it counts as gone.
pub const GATEWAY_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// One served port of the session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedEndpoint {
    /// What is served ("model").
    pub name: String,
    /// The port clients call.
    pub port: u16,
    /// In-cluster URL: `http://<name>.<namespace>.svc:<port>`; OpenAI-compatible paths (`/v1/...`) pass through.
    pub url: String,
    /// The machine's public address for this port, only when `spec.ports` exposes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// Re-keying a running machine: set the annotation `gpushopper.dev/rekey` to a new
/// value (for example the date); the controller puts a fresh key pair on the machine
/// and in the Secret, then removes the old key from the machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RekeyStatus {
    /// The annotation value this is about.
    pub request: String,
    /// True once the new key logs in, is in the Secret, and the old key no longer logs in.
    pub done: bool,
    /// What happened, or why it has not happened yet.
    #[serde(default)]
    pub message: String,
    /// When the re-key completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// SHA256 fingerprint of the public key that logs in now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

/// SSH endpoint of the machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshEndpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User to log in as.
    pub user: String,
    /// SHA256 fingerprint of the host key seen on first contact; later connections must present the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
}

/// The machine as `nvidia-smi` really reported it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedMachine {
    /// GPU name.
    pub gpu_name: String,
    /// Number of GPUs.
    pub gpu_count: u32,
    /// Memory per GPU, in MiB.
    pub vram_mib: u64,
    /// NVIDIA driver version.
    pub driver_version: String,
    /// Highest CUDA version the driver supports.
    pub cuda_version: String,
}

/// One offer tried for this session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Marketplace of the offer.
    pub provider: Option<ProviderName>,
    /// The marketplace's id of the offer.
    pub offer_id: String,
    /// Price of the offer, in US dollars per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
    /// Machine-readable outcome, for example OfferGone, CreateFailed, CUDAMismatch, Unreachable.
    pub reason: String,
    /// What this attempt's machine cost, in US dollars, when one was rented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// What happened.
    #[schemars(length(max = 8192))]
    pub message: String,
    /// When the attempt ended.
    pub time: Time,
}

/// A create sent to a marketplace, recorded before the call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateIntent {
    /// Marketplace the create went to.
    pub provider: ProviderName,
    /// The offer rented.
    pub offer_id: String,
    /// When the create was sent; once its call ended without an answer, when it ended (a listing sent after this shows whether it landed).
    pub sent_at: Time,
    /// The offer's price per hour: what a machine adopted from this create is costed at when its marketplace reports no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
}

impl CreateIntent {
    /// A listing sent after this moment shows whether the create landed.
    pub fn settled_by_listings_after(&self) -> jiff::Timestamp {
        after_stored(&self.sent_at)
    }
}

/// How the session is ending, while its machine is being destroyed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ending {
    /// The instance being destroyed.
    #[schemars(length(max = 256))]
    pub instance_id: String,
    pub phase: SessionPhase,
    #[schemars(length(max = 128))]
    pub reason: String,
    #[schemars(length(max = 8192))]
    pub message: String,
}

/// Why the current machine is being destroyed and replaced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    /// The instance being destroyed.
    #[schemars(length(max = 256))]
    pub instance_id: String,
    #[schemars(length(max = 128))]
    pub reason: String,
    #[schemars(length(max = 8192))]
    pub message: String,
}

/// The earliest moment surely after a time read back from status: stored times
/// keep whole seconds only, so the next whole second is the safe bound.
pub fn after_stored(time: &Time) -> jiff::Timestamp {
    time.0.checked_add(jiff::SignedDuration::from_secs(1)).unwrap_or(time.0)
}

/// How a Job workload ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// Exit code of the command.
    pub exit_code: i32,
    /// Last lines of the command's output.
    #[serde(default)]
    #[schemars(length(max = 8192))]
    pub log_tail: String,
    /// What was saved to the buckets, each confirmed in the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub outputs: Vec<SavedObject>,
    /// Where the job's full log was saved (`s3://bucket/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub log: Option<String>,
    /// Outputs that could not be saved before the machine went, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub lost: Option<String>,
}

/// One object saved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavedObject {
    /// `s3://bucket/key`.
    pub url: String,
    pub bytes: u64,
}

//! Operator configuration: the settings `gpu-shopper controller` takes as
//! flags or environment variables (`args`), checked and typed here. The
//! variable names are the names the Helm chart and the docs use.

mod args;

pub use args::{ControllerArgs, blank_env_is_unset, markdown, variables};

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The environment variables the operator reads (each also a flag, see `args`).
pub mod env {
    pub const VASTAI_API_KEY: &str = "VASTAI_API_KEY";
    pub const TENSORDOCK_AUTH_ID: &str = "TENSORDOCK_AUTH_ID";
    pub const TENSORDOCK_API_TOKEN: &str = "TENSORDOCK_API_TOKEN";
    pub const RUNPOD_API_KEY: &str = "RUNPOD_API_KEY";
    pub const DEPLOYMENT_ID: &str = "DEPLOYMENT_ID";
    /// This cluster's short id, folded into every instance label (default: read from the
    /// `kube-system` namespace's UID at start). Set it only where that read is not allowed.
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const VASTAI_BASE_URL: &str = "VASTAI_BASE_URL";
    pub const TENSORDOCK_BASE_URL: &str = "TENSORDOCK_BASE_URL";
    pub const RUNPOD_BASE_URL: &str = "RUNPOD_BASE_URL";
    pub const HTTP_ADDR: &str = "HTTP_ADDR";
    /// Watch only these namespaces, comma-separated, instead of the whole cluster (unset: all namespaces).
    pub const WATCH_NAMESPACE: &str = "WATCH_NAMESPACE";
    /// Operator-wide hard maximum of a session's lifetime (default 12h).
    pub const MAX_SESSION_DURATION: &str = "MAX_SESSION_DURATION";
    /// How often each marketplace's inventory is listed, orphans and strays swept, and running machines checked (default 30s).
    pub const ORPHAN_SWEEP_INTERVAL: &str = "ORPHAN_SWEEP_INTERVAL";
    /// How long an instance labelled for a live session, but not its recorded one, is left alone before it is destroyed (default 60s).
    pub const STRAY_GRACE_PERIOD: &str = "STRAY_GRACE_PERIOD";
    /// How long an unowned instance is left alone before it is destroyed (default 10m).
    pub const ORPHAN_GRACE_PERIOD: &str = "ORPHAN_GRACE_PERIOD";
    /// How often a running machine is checked over SSH for a Job's exit or GPU idleness (default 60s).
    pub const MACHINE_CHECK_INTERVAL: &str = "MACHINE_CHECK_INTERVAL";
    /// How long a host that failed verification is avoided (default 1h).
    pub const BAD_HOST_TTL: &str = "BAD_HOST_TTL";
    /// Time allowed to one marketplace API call (default 20s).
    pub const PROVIDER_CALL_TIMEOUT: &str = "PROVIDER_CALL_TIMEOUT";
    /// Least time between two calls to one Vast.ai endpoint (default 100ms; Vast does not publish it, "0s" turns pacing off).
    pub const VASTAI_ENDPOINT_INTERVAL: &str = "VASTAI_ENDPOINT_INTERVAL";
    /// Reconciles of one kind run at once (default 64): the rest wait their turn as a
    /// name in the queue instead of each holding its working state and a request.
    pub const MAX_CONCURRENT_RECONCILES: &str = "MAX_CONCURRENT_RECONCILES";
    /// "false" turns leader election off (a single replica only).
    pub const LEADER_ELECTION: &str = "LEADER_ELECTION";
    /// Name of the leader-election Lease (default "gpu-shopper-<DEPLOYMENT_ID>").
    pub const LEASE_NAME: &str = "LEASE_NAME";
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else WATCH_NAMESPACE, else "default").
    pub const LEASE_NAMESPACE: &str = "LEASE_NAMESPACE";
    /// How long a leader's lease lasts without renewal (default 15s).
    pub const LEASE_DURATION: &str = "LEASE_DURATION";
    /// Namespace the operator's pod runs in (set by the chart through the downward API).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Name of the pod the operator runs in (set by the chart through the downward API); names the reporter of Events.
    pub const POD_NAME: &str = "POD_NAME";
    /// The image an Inference session's gateway runs (the chart sets the operator's own image).
    pub const GATEWAY_IMAGE: &str = "GATEWAY_IMAGE";
    /// Gateway replicas per Inference session (default 1; a session's `gateway.replicas` overrides).
    pub const GATEWAY_REPLICAS: &str = "GATEWAY_REPLICAS";
    /// Resources of each gateway container, as the JSON of a ResourceRequirements (default: 10m CPU, 32Mi requested; 64Mi limit).
    pub const GATEWAY_RESOURCES: &str = "GATEWAY_RESOURCES";
    /// Who may call an Inference session's Service by default: "none" (no NetworkPolicy) or "namespace" (only pods of the session's namespace).
    pub const GATEWAY_NETWORK_POLICY: &str = "GATEWAY_NETWORK_POLICY";
}

pub const DEFAULT_VASTAI_BASE_URL: &str = "https://console.vast.ai/api/v0";
pub const DEFAULT_TENSORDOCK_BASE_URL: &str = "https://dashboard.tensordock.com/api/v2";
pub const DEFAULT_RUNPOD_BASE_URL: &str = "https://api.runpod.io/graphql";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// A configuration problem that stops the operator from starting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "GATEWAY_RESOURCES {0:?} is not the JSON of a ResourceRequirements (e.g. {{\"requests\": {{\"memory\": \"32Mi\"}}}})"
    )]
    InvalidGatewayResources(String),
    #[error("GATEWAY_NETWORK_POLICY {0:?} is not valid: use \"none\" or \"namespace\"")]
    InvalidGatewayNetworkPolicy(String),
    #[error(
        "DEPLOYMENT_ID is not set: it names this installation so that the orphan sweeper only ever destroys instances this deployment created. Set it to a stable id unique to this cluster/installation (for example DEPLOYMENT_ID=prod-eu-1)."
    )]
    MissingDeploymentId,
    #[error(
        "DEPLOYMENT_ID {0:?} is not valid: use 1 to 40 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidDeploymentId(String),
    #[error(
        "DEPLOYMENT_ID {0:?} is a placeholder or an example from the docs: every installation that shares a marketplace account needs its own id, so choose one that names this installation (for example <team>-<cluster>)"
    )]
    PlaceholderDeploymentId(String),
    #[error("CLUSTER_ID {0:?} is not valid: use 1 to 12 characters of a-z and 0-9")]
    InvalidClusterId(String),
    #[error("{set} is set but {missing} is not: TensorDock needs both (or neither, to leave TensorDock out)")]
    IncompleteTensorDock { set: &'static str, missing: &'static str },
    #[error("LOG_FORMAT {0:?} is not valid: use \"json\" or \"text\"")]
    InvalidLogFormat(String),
    #[error("HTTP_ADDR {0:?} is not a socket address such as 0.0.0.0:8080")]
    InvalidHttpAddr(String),
    #[error("{name} {value:?} is not a duration such as 90s, 15m or 12h")]
    InvalidDuration { name: &'static str, value: String },
    #[error("{name} {value:?} is not a whole number from 1 to 65535")]
    InvalidCount { name: &'static str, value: String },
    #[error("{name} {value:?} is not an http(s) URL")]
    InvalidBaseUrl { name: &'static str, value: String },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// TensorDock authenticates with an id and a token together.
#[derive(Clone, Debug)]
pub struct TensorDockCredentials {
    pub auth_id: String,
    pub api_token: SecretString,
}

/// Credentials of each marketplace; `None` leaves that marketplace out.
#[derive(Clone, Debug, Default)]
pub struct ProviderCredentials {
    pub vastai: Option<SecretString>,
    pub tensordock: Option<TensorDockCredentials>,
    pub runpod: Option<SecretString>,
}

/// API base URLs, overridable so a real client can talk to a simulated marketplace.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseUrls {
    pub vastai: String,
    pub tensordock: String,
    pub runpod: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The human part of this installation's identity.
    pub deployment_id: String,
    /// This cluster's short id; the controller fills it at start (see `controller::identity`).
    pub cluster_id: Option<String>,
    pub credentials: ProviderCredentials,
    pub base_urls: BaseUrls,
    pub log_level: String,
    pub log_format: LogFormat,
    pub http_addr: SocketAddr,
    pub instance_name: Option<String>,
    /// The namespaces watched; empty watches every namespace.
    pub watch_namespaces: Vec<String>,
    pub max_session_duration: Duration,
    pub orphan_sweep_interval: Duration,
    pub orphan_grace_period: Duration,
    pub stray_grace_period: Duration,
    pub machine_check_interval: Duration,
    pub bad_host_ttl: Duration,
    pub provider_call_timeout: Duration,
    /// The Vast.ai client's least interval between calls to one endpoint.
    pub vastai_endpoint_interval: Duration,
    /// Reconciles of one kind (sessions, filters) running at once.
    pub max_concurrent_reconciles: u16,
    /// `None`: leader election is off.
    pub leader_election: Option<LeaderElection>,
    /// How Inference sessions' gateways run.
    pub gateway: GatewayDefaults,
}

/// How an Inference session's gateway runs unless the session says otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayDefaults {
    pub image: String,
    pub replicas: i32,
    pub resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// Only pods of the session's namespace may call its Service.
    pub namespace_only: bool,
}

/// The gateway image when GATEWAY_IMAGE is not set: this build's own.
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!("ghcr.io/gpu-shopper/gpu-shopper:", env!("CARGO_PKG_VERSION"));

/// 10m CPU and 32Mi requested, 64Mi limit: the gateway's measured 26 MiB with headroom (docs/inference.md).
pub const DEFAULT_GATEWAY_RESOURCES: &str = r#"{"requests":{"cpu":"10m","memory":"32Mi"},"limits":{"memory":"64Mi"}}"#;

#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease_duration: Duration,
}

impl ProviderCredentials {
    /// Names of the marketplaces that have credentials.
    pub fn configured(&self) -> Vec<crate::crd::ProviderName> {
        use crate::crd::ProviderName;
        let mut names = Vec::new();
        if self.vastai.is_some() {
            names.push(ProviderName::Vastai);
        }
        if self.tensordock.is_some() {
            names.push(ProviderName::Tensordock);
        }
        if self.runpod.is_some() {
            names.push(ProviderName::Runpod);
        }
        names
    }
}

impl Config {
    /// Checks the settings, types them and fills what depends on others. Empty values count as unset.
    pub fn from_args(args: ControllerArgs) -> Result<Self, ConfigError> {
        // Values are trimmed as they were when only the environment was read.
        let set = |value: Option<String>| value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let text = |value: String| value.trim().to_string();
        let key = |value: Option<SecretString>| value.filter(|k| !k.expose_secret().is_empty());

        let deployment_id = set(args.deployment_id).ok_or(ConfigError::MissingDeploymentId)?;
        if !valid_deployment_id(&deployment_id) {
            return Err(ConfigError::InvalidDeploymentId(deployment_id));
        }
        if PLACEHOLDER_DEPLOYMENT_IDS.contains(&deployment_id.as_str()) {
            return Err(ConfigError::PlaceholderDeploymentId(deployment_id));
        }
        let cluster_id = set(args.cluster_id);
        if let Some(id) = cluster_id.as_ref().filter(|id| !valid_cluster_id(id)) {
            return Err(ConfigError::InvalidClusterId(id.clone()));
        }

        let tensordock = match (set(args.tensordock_auth_id), key(args.tensordock_api_token)) {
            (Some(auth_id), Some(api_token)) => Some(TensorDockCredentials { auth_id, api_token }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::IncompleteTensorDock {
                    set: env::TENSORDOCK_AUTH_ID,
                    missing: env::TENSORDOCK_API_TOKEN,
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::IncompleteTensorDock {
                    set: env::TENSORDOCK_API_TOKEN,
                    missing: env::TENSORDOCK_AUTH_ID,
                });
            }
        };
        let credentials =
            ProviderCredentials { vastai: key(args.vastai_api_key), tensordock, runpod: key(args.runpod_api_key) };

        let base_url = |name: &'static str, value: String| -> Result<String, ConfigError> {
            let value = text(value);
            if value.starts_with("http://") || value.starts_with("https://") {
                Ok(value.trim_end_matches('/').to_string())
            } else {
                Err(ConfigError::InvalidBaseUrl { name, value })
            }
        };
        let base_urls = BaseUrls {
            vastai: base_url(env::VASTAI_BASE_URL, args.vastai_base_url)?,
            tensordock: base_url(env::TENSORDOCK_BASE_URL, args.tensordock_base_url)?,
            runpod: base_url(env::RUNPOD_BASE_URL, args.runpod_base_url)?,
        };

        let log_format = match text(args.log_format.clone()).to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(ConfigError::InvalidLogFormat(args.log_format)),
        };
        let http_addr =
            text(args.http_addr.clone()).parse().map_err(|_| ConfigError::InvalidHttpAddr(args.http_addr.clone()))?;

        let duration = |name: &'static str, value: String| -> Result<Duration, ConfigError> {
            crate::crd::duration::parse(value.trim()).ok_or(ConfigError::InvalidDuration { name, value })
        };
        let count = |name: &'static str, value: String| -> Result<u16, ConfigError> {
            value.trim().parse().ok().filter(|n| *n > 0).ok_or(ConfigError::InvalidCount { name, value })
        };
        let watch_namespaces = namespace_list(args.watch_namespace.as_deref());
        let leader_election = match text(args.leader_election).to_ascii_lowercase().as_str() {
            "false" | "0" | "off" => None,
            _ => Some(LeaderElection {
                lease_name: set(args.lease_name).unwrap_or_else(|| format!("gpu-shopper-{deployment_id}")),
                lease_namespace: set(args.lease_namespace)
                    .or_else(|| set(args.pod_namespace.clone()))
                    .or_else(|| watch_namespaces.first().cloned())
                    .unwrap_or_else(|| "default".into()),
                lease_duration: duration(env::LEASE_DURATION, args.lease_duration)?,
            }),
        };
        let gateway = GatewayDefaults {
            image: text(args.gateway_image),
            replicas: i32::from(count(env::GATEWAY_REPLICAS, args.gateway_replicas)?),
            resources: serde_json::from_str(&args.gateway_resources).map_err(|_| {
                ConfigError::InvalidGatewayResources(args.gateway_resources.chars().take(200).collect())
            })?,
            namespace_only: match text(args.gateway_network_policy).as_str() {
                "none" => false,
                "namespace" => true,
                other => return Err(ConfigError::InvalidGatewayNetworkPolicy(other.to_string())),
            },
        };
        Ok(Config {
            gateway,
            leader_election,
            max_session_duration: duration(env::MAX_SESSION_DURATION, args.max_session_duration)?,
            orphan_sweep_interval: duration(env::ORPHAN_SWEEP_INTERVAL, args.orphan_sweep_interval)?
                .max(Duration::from_millis(200)),
            stray_grace_period: duration(env::STRAY_GRACE_PERIOD, args.stray_grace_period)?,
            machine_check_interval: duration(env::MACHINE_CHECK_INTERVAL, args.machine_check_interval)?,
            orphan_grace_period: duration(env::ORPHAN_GRACE_PERIOD, args.orphan_grace_period)?,
            bad_host_ttl: duration(env::BAD_HOST_TTL, args.bad_host_ttl)?,
            provider_call_timeout: duration(env::PROVIDER_CALL_TIMEOUT, args.provider_call_timeout)?,
            vastai_endpoint_interval: match set(args.vastai_endpoint_interval) {
                None => crate::provider::vastai::DEFAULT_ENDPOINT_INTERVAL,
                Some(value) => duration(env::VASTAI_ENDPOINT_INTERVAL, value)?,
            },
            max_concurrent_reconciles: count(env::MAX_CONCURRENT_RECONCILES, args.max_concurrent_reconciles)?,
            deployment_id,
            cluster_id,
            credentials,
            base_urls,
            log_level: text(args.log_level),
            log_format,
            http_addr,
            instance_name: set(args.pod_name),
            watch_namespaces,
        })
    }
}

/// Ids that the docs, examples and old defaults use: two installations that
/// kept one would sweep each other's machines on a shared account.
pub const PLACEHOLDER_DEPLOYMENT_IDS: &[&str] =
    &["change-me", "changeme", "replace-me", "placeholder", "example", "default", "my-cluster"];

/// "a, b,,c" -> [a, b, c]: a comma-separated list, blanks dropped, each once.
pub fn namespace_list(text: Option<&str>) -> Vec<String> {
    let mut namespaces: Vec<String> = Vec::new();
    for namespace in text.unwrap_or_default().split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !namespaces.iter().any(|n| n == namespace) {
            namespaces.push(namespace.to_string());
        }
    }
    namespaces
}

fn valid_cluster_id(id: &str) -> bool {
    (1..=12).contains(&id.len()) && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

impl Config {
    /// What this installation's instances are labelled with: the deployment id
    /// and the cluster's short id, so that two clusters installed the same way
    /// never take each other's machines for their own.
    pub fn installation(&self) -> String {
        match &self.cluster_id {
            Some(cluster) => format!("{}-{cluster}", self.deployment_id),
            None => self.deployment_id.clone(),
        }
    }

    /// Every label this installation lists as its own: today's, then the one
    /// instances rented before the cluster id was folded in still carry (the
    /// sweeper destroys those only for sessions it can see; see docs/upgrading.md).
    pub fn installations(&self) -> Vec<String> {
        let mut all = vec![self.installation()];
        if self.cluster_id.is_some() {
            all.push(self.deployment_id.clone());
        }
        all
    }
}

/// The id goes into provider labels and Kubernetes label values, so keep it short and plain.
fn valid_deployment_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration from these variables, each given as its flag (so the
    /// test's own environment cannot leak in where a variable is set).
    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let command = ControllerArgs::command();
        let argv = vars.iter().map(|(name, value)| {
            let arg = command.get_arguments().find(|a| a.get_env().is_some_and(|e| e == *name)).expect("a variable");
            format!("--{}={value}", arg.get_long().expect("a flag"))
        });
        Config::from_args(ControllerArgs::parse_flags_only(argv).expect("parsed"))
    }

    #[test]
    fn placeholder_ids_from_the_docs_are_refused() {
        for placeholder in ["change-me", "my-cluster", "default"] {
            let error = config(&[(env::DEPLOYMENT_ID, placeholder)]).unwrap_err();
            assert_eq!(error, ConfigError::PlaceholderDeploymentId(placeholder.into()));
            assert!(error.to_string().contains("placeholder"), "{error}");
        }
    }

    #[test]
    fn the_installation_folds_the_cluster_into_the_deployment_id() {
        let mut config = config(&[(env::DEPLOYMENT_ID, "team-a")]).unwrap();
        assert_eq!(config.installations(), vec!["team-a".to_string()], "no cluster known yet");
        config.cluster_id = Some("3f9a0c12".into());
        assert_eq!(config.installation(), "team-a-3f9a0c12");
        assert_eq!(config.installations(), vec!["team-a-3f9a0c12".to_string(), "team-a".to_string()]);
        let refused = super::tests::config(&[(env::DEPLOYMENT_ID, "team-a"), (env::CLUSTER_ID, "Not.Valid")]);
        assert_eq!(refused.unwrap_err(), ConfigError::InvalidClusterId("Not.Valid".into()));
    }

    #[test]
    fn missing_deployment_id_is_a_startup_error_that_says_what_to_do() {
        let err = config(&[(env::VASTAI_API_KEY, "k")]).unwrap_err();
        assert_eq!(err, ConfigError::MissingDeploymentId);
        assert!(err.to_string().contains("Set it to a stable id"));
        assert_eq!(config(&[(env::DEPLOYMENT_ID, "  ")]).unwrap_err(), ConfigError::MissingDeploymentId);
    }

    #[test]
    fn malformed_deployment_id_is_refused() {
        for bad in ["Prod", "a b", "-x", &"x".repeat(41)] {
            assert!(matches!(config(&[(env::DEPLOYMENT_ID, bad)]), Err(ConfigError::InvalidDeploymentId(_))), "{bad}");
        }
    }

    #[test]
    fn no_credentials_means_no_providers_not_an_error() {
        let config = config(&[(env::DEPLOYMENT_ID, "test-1")]).unwrap();
        assert!(config.credentials.configured().is_empty());
        assert_eq!(config.base_urls.vastai, DEFAULT_VASTAI_BASE_URL);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn half_configured_tensordock_names_the_missing_variable() {
        let err = config(&[(env::DEPLOYMENT_ID, "d"), (env::TENSORDOCK_AUTH_ID, "id")]).unwrap_err();
        assert!(err.to_string().contains("TENSORDOCK_API_TOKEN is not"), "{err}");
    }

    #[test]
    fn reads_every_provider_and_override() {
        let config = config(&[
            (env::DEPLOYMENT_ID, "d"),
            (env::VASTAI_API_KEY, "vast-secret"),
            (env::TENSORDOCK_AUTH_ID, "id"),
            (env::TENSORDOCK_API_TOKEN, "td-secret"),
            (env::RUNPOD_API_KEY, "rp-secret"),
            (env::VASTAI_BASE_URL, "http://127.0.0.1:9000/api/v0/"),
            (env::LOG_FORMAT, "JSON"),
            (env::HTTP_ADDR, "127.0.0.1:0"),
        ])
        .unwrap();
        assert_eq!(config.credentials.configured().len(), 3);
        assert_eq!(config.credentials.vastai.as_ref().unwrap().expose_secret(), "vast-secret");
        assert_eq!(config.base_urls.vastai, "http://127.0.0.1:9000/api/v0");
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn vasts_unpublished_endpoint_interval_can_be_set_or_turned_off() {
        let default = config(&[(env::DEPLOYMENT_ID, "d")]).unwrap();
        assert_eq!(default.vastai_endpoint_interval, Duration::from_millis(100));
        let off = config(&[(env::DEPLOYMENT_ID, "d"), (env::VASTAI_ENDPOINT_INTERVAL, "0s")]).unwrap();
        assert_eq!(off.vastai_endpoint_interval, Duration::ZERO);
        let wrong = config(&[(env::DEPLOYMENT_ID, "d"), (env::VASTAI_ENDPOINT_INTERVAL, "fast")]);
        assert!(matches!(wrong, Err(ConfigError::InvalidDuration { name: env::VASTAI_ENDPOINT_INTERVAL, .. })));
    }

    #[test]
    fn reconcile_concurrency_is_a_positive_count() {
        let default = config(&[(env::DEPLOYMENT_ID, "d")]).unwrap();
        assert_eq!(default.max_concurrent_reconciles, 64);
        let set = config(&[(env::DEPLOYMENT_ID, "d"), (env::MAX_CONCURRENT_RECONCILES, "8")]).unwrap();
        assert_eq!(set.max_concurrent_reconciles, 8);
        for bad in ["0", "-1", "many", "70000"] {
            let error = config(&[(env::DEPLOYMENT_ID, "d"), (env::MAX_CONCURRENT_RECONCILES, bad)]).unwrap_err();
            assert!(error.to_string().contains("MAX_CONCURRENT_RECONCILES"), "{error}");
        }
    }

    #[test]
    fn values_are_trimmed_as_a_secret_file_leaves_them() {
        let config = config(&[
            (env::DEPLOYMENT_ID, "d\n"),
            (env::VASTAI_API_KEY, "vast-key\n"),
            (env::RUNPOD_API_KEY, "  "),
            (env::LEADER_ELECTION, "false "),
            (env::LOG_FORMAT, " json"),
            (env::HTTP_ADDR, "127.0.0.1:9 "),
        ])
        .unwrap();
        assert_eq!(config.credentials.vastai.as_ref().unwrap().expose_secret(), "vast-key");
        assert!(config.credentials.runpod.is_none(), "a blank key is no key");
        assert!(config.leader_election.is_none());
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.http_addr.port(), 9);
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let config = config(&[
            (env::DEPLOYMENT_ID, "d"),
            (env::VASTAI_API_KEY, "vast-secret"),
            (env::RUNPOD_API_KEY, "rp-secret"),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("vast-secret") && !debug.contains("rp-secret"), "{debug}");
    }
}

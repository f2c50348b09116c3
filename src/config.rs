//! Operator configuration, read from environment variables in this one place.
//! The names here are the names the Helm chart and the docs use.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

/// Every environment variable the operator reads.
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

    /// All of the above, for documentation and for tests that hold the chart equal.
    pub const ALL: &[&str] = &[
        VASTAI_API_KEY,
        TENSORDOCK_AUTH_ID,
        TENSORDOCK_API_TOKEN,
        RUNPOD_API_KEY,
        DEPLOYMENT_ID,
        CLUSTER_ID,
        LOG_LEVEL,
        LOG_FORMAT,
        VASTAI_BASE_URL,
        TENSORDOCK_BASE_URL,
        RUNPOD_BASE_URL,
        HTTP_ADDR,
        WATCH_NAMESPACE,
        MAX_SESSION_DURATION,
        ORPHAN_SWEEP_INTERVAL,
        ORPHAN_GRACE_PERIOD,
        STRAY_GRACE_PERIOD,
        MACHINE_CHECK_INTERVAL,
        BAD_HOST_TTL,
        PROVIDER_CALL_TIMEOUT,
        VASTAI_ENDPOINT_INTERVAL,
        MAX_CONCURRENT_RECONCILES,
        LEADER_ELECTION,
        LEASE_NAME,
        LEASE_NAMESPACE,
        LEASE_DURATION,
        POD_NAMESPACE,
        POD_NAME,
        GATEWAY_IMAGE,
        GATEWAY_REPLICAS,
        GATEWAY_RESOURCES,
        GATEWAY_NETWORK_POLICY,
    ];
}

pub const DEFAULT_VASTAI_BASE_URL: &str = "https://console.vast.ai/api/v0";
pub const DEFAULT_TENSORDOCK_BASE_URL: &str = "https://dashboard.tensordock.com/api/v2";
pub const DEFAULT_RUNPOD_BASE_URL: &str = "https://api.runpod.io/graphql";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
/// Enough to keep the API server's 32 requests, 32 SSH logins and every marketplace's
/// calls busy at once; each reconcile in flight holds about 20 KB (docs/performance.md).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 64;

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

fn default_gateway_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }))
    .expect("a valid ResourceRequirements")
}

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
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());

        let deployment_id = get(env::DEPLOYMENT_ID).ok_or(ConfigError::MissingDeploymentId)?;
        if !valid_deployment_id(&deployment_id) {
            return Err(ConfigError::InvalidDeploymentId(deployment_id));
        }
        if PLACEHOLDER_DEPLOYMENT_IDS.contains(&deployment_id.as_str()) {
            return Err(ConfigError::PlaceholderDeploymentId(deployment_id));
        }
        let cluster_id = get(env::CLUSTER_ID);
        if let Some(id) = cluster_id.as_ref().filter(|id| !valid_cluster_id(id)) {
            return Err(ConfigError::InvalidClusterId(id.clone()));
        }

        let tensordock = match (get(env::TENSORDOCK_AUTH_ID), get(env::TENSORDOCK_API_TOKEN)) {
            (Some(auth_id), Some(token)) => Some(TensorDockCredentials { auth_id, api_token: token.into() }),
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
        let credentials = ProviderCredentials {
            vastai: get(env::VASTAI_API_KEY).map(SecretString::from),
            tensordock,
            runpod: get(env::RUNPOD_API_KEY).map(SecretString::from),
        };

        let base_url = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            let value = get(name).unwrap_or_else(|| default.to_string());
            if value.starts_with("http://") || value.starts_with("https://") {
                Ok(value.trim_end_matches('/').to_string())
            } else {
                Err(ConfigError::InvalidBaseUrl { name, value })
            }
        };
        let base_urls = BaseUrls {
            vastai: base_url(env::VASTAI_BASE_URL, DEFAULT_VASTAI_BASE_URL)?,
            tensordock: base_url(env::TENSORDOCK_BASE_URL, DEFAULT_TENSORDOCK_BASE_URL)?,
            runpod: base_url(env::RUNPOD_BASE_URL, DEFAULT_RUNPOD_BASE_URL)?,
        };

        let log_format = match get(env::LOG_FORMAT).as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(ConfigError::InvalidLogFormat(get(env::LOG_FORMAT).unwrap_or_default())),
        };
        let http_addr_text = get(env::HTTP_ADDR).unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
        let http_addr = http_addr_text.parse().map_err(|_| ConfigError::InvalidHttpAddr(http_addr_text))?;

        let duration = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(value) => crate::crd::duration::parse(&value).ok_or(ConfigError::InvalidDuration { name, value }),
            }
        };
        let count = |name: &'static str, default: u16| -> Result<u16, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(value) => value.parse().ok().filter(|n| *n > 0).ok_or(ConfigError::InvalidCount { name, value }),
            }
        };
        let watch_namespaces = namespace_list(get(env::WATCH_NAMESPACE).as_deref());
        let leader_election = match get(env::LEADER_ELECTION).as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("false") | Some("0") | Some("off") => None,
            _ => Some(LeaderElection {
                lease_name: get(env::LEASE_NAME).unwrap_or_else(|| format!("gpu-shopper-{deployment_id}")),
                lease_namespace: get(env::LEASE_NAMESPACE)
                    .or_else(|| get(env::POD_NAMESPACE))
                    .or_else(|| watch_namespaces.first().cloned())
                    .unwrap_or_else(|| "default".into()),
                lease_duration: duration(env::LEASE_DURATION, Duration::from_secs(15))?,
            }),
        };
        let gateway = GatewayDefaults {
            image: get(env::GATEWAY_IMAGE).unwrap_or_else(|| DEFAULT_GATEWAY_IMAGE.to_string()),
            replicas: i32::from(count(env::GATEWAY_REPLICAS, 1)?),
            resources: match get(env::GATEWAY_RESOURCES) {
                None => default_gateway_resources(),
                Some(value) => serde_json::from_str(&value)
                    .map_err(|_| ConfigError::InvalidGatewayResources(value.chars().take(200).collect()))?,
            },
            namespace_only: match get(env::GATEWAY_NETWORK_POLICY).as_deref() {
                None | Some("none") => false,
                Some("namespace") => true,
                Some(other) => return Err(ConfigError::InvalidGatewayNetworkPolicy(other.to_string())),
            },
        };
        Ok(Config {
            gateway,
            leader_election,
            max_session_duration: duration(env::MAX_SESSION_DURATION, Duration::from_secs(12 * 3600))?,
            orphan_sweep_interval: duration(env::ORPHAN_SWEEP_INTERVAL, Duration::from_secs(30))?
                .max(Duration::from_millis(200)),
            stray_grace_period: duration(env::STRAY_GRACE_PERIOD, Duration::from_secs(60))?,
            machine_check_interval: duration(env::MACHINE_CHECK_INTERVAL, Duration::from_secs(60))?,
            orphan_grace_period: duration(env::ORPHAN_GRACE_PERIOD, Duration::from_secs(600))?,
            bad_host_ttl: duration(env::BAD_HOST_TTL, Duration::from_secs(3600))?,
            provider_call_timeout: duration(env::PROVIDER_CALL_TIMEOUT, Duration::from_secs(20))?,
            vastai_endpoint_interval: duration(
                env::VASTAI_ENDPOINT_INTERVAL,
                crate::provider::vastai::DEFAULT_ENDPOINT_INTERVAL,
            )?,
            max_concurrent_reconciles: count(env::MAX_CONCURRENT_RECONCILES, DEFAULT_MAX_CONCURRENT_RECONCILES)?,
            deployment_id,
            cluster_id,
            credentials,
            base_urls,
            log_level: get(env::LOG_LEVEL).unwrap_or_else(|| "info".to_string()),
            log_format,
            http_addr,
            instance_name: get(env::POD_NAME),
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
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
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
        let refused = super::Config::from_lookup(|name| match name {
            env::DEPLOYMENT_ID => Some("team-a".into()),
            env::CLUSTER_ID => Some("Not.Valid".into()),
            _ => None,
        });
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
        assert_eq!(default.max_concurrent_reconciles, DEFAULT_MAX_CONCURRENT_RECONCILES);
        let set = config(&[(env::DEPLOYMENT_ID, "d"), (env::MAX_CONCURRENT_RECONCILES, "8")]).unwrap();
        assert_eq!(set.max_concurrent_reconciles, 8);
        for bad in ["0", "-1", "many", "70000"] {
            let error = config(&[(env::DEPLOYMENT_ID, "d"), (env::MAX_CONCURRENT_RECONCILES, bad)]).unwrap_err();
            assert!(error.to_string().contains("MAX_CONCURRENT_RECONCILES"), "{error}");
        }
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

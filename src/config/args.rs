//! The operator's settings as `gpu-shopper controller` takes them: each one a
//! flag and an environment variable (the chart sets the variables), listed
//! with its default by `gpu-shopper controller --help`. Parsing into typed
//! values, and the checks that span settings, are in `Config::from_args`.

use clap::builder::TypedValueParser;
use secrecy::SecretString;

use super::env;

/// Keys are read into a `SecretString`, so that neither Debug nor an error can show them;
/// trimmed, as a Secret made with `--from-file` ends in a newline no marketplace accepts.
fn secret() -> impl TypedValueParser<Value = SecretString> {
    clap::builder::NonEmptyStringValueParser::new().map(|key| SecretString::from(key.trim().to_string()))
}

/// The operator's settings (the `controller` command's help says what each is for).
#[derive(clap::Args, Debug, Default)]
#[command(after_help = "Example: DEPLOYMENT_ID=dev-1 VASTAI_API_KEY=... gpu-shopper controller")]
pub struct ControllerArgs {
    /// Required: names this installation. Instances are labelled with it and the orphan
    /// sweeper only touches its own, so every installation sharing a marketplace account
    /// needs its own: 1-40 characters of a-z, 0-9 and '-'.
    #[arg(long, env = env::DEPLOYMENT_ID, value_name = "ID", help_heading = "Identity")]
    pub deployment_id: Option<String>,
    /// This cluster's short id, folded into every instance label (1-12 of a-z, 0-9).
    /// Unset: read from the kube-system namespace's UID at start; set it only where that read is not allowed.
    #[arg(long, env = env::CLUSTER_ID, value_name = "ID", help_heading = "Identity")]
    pub cluster_id: Option<String>,

    /// Vast.ai API key (unset: Vast.ai is not used).
    #[arg(long, env = env::VASTAI_API_KEY, value_name = "KEY", hide_env_values = true, value_parser = secret(), help_heading = "Marketplaces")]
    pub vastai_api_key: Option<SecretString>,
    /// TensorDock authorization id; TensorDock needs it and the token together.
    #[arg(long, env = env::TENSORDOCK_AUTH_ID, value_name = "ID", hide_env_values = true, help_heading = "Marketplaces")]
    pub tensordock_auth_id: Option<String>,
    /// TensorDock API token (unset, with the id: TensorDock is not used).
    #[arg(long, env = env::TENSORDOCK_API_TOKEN, value_name = "TOKEN", hide_env_values = true, value_parser = secret(), help_heading = "Marketplaces")]
    pub tensordock_api_token: Option<SecretString>,
    /// RunPod API key (unset: RunPod is not used).
    #[arg(long, env = env::RUNPOD_API_KEY, value_name = "KEY", hide_env_values = true, value_parser = secret(), help_heading = "Marketplaces")]
    pub runpod_api_key: Option<SecretString>,
    /// Vast.ai API base URL (the simulated marketplaces' in tests).
    #[arg(long, env = env::VASTAI_BASE_URL, value_name = "URL", default_value = super::DEFAULT_VASTAI_BASE_URL, help_heading = "Marketplaces")]
    pub vastai_base_url: String,
    /// TensorDock API base URL.
    #[arg(long, env = env::TENSORDOCK_BASE_URL, value_name = "URL", default_value = super::DEFAULT_TENSORDOCK_BASE_URL, help_heading = "Marketplaces")]
    pub tensordock_base_url: String,
    /// RunPod GraphQL URL.
    #[arg(long, env = env::RUNPOD_BASE_URL, value_name = "URL", default_value = super::DEFAULT_RUNPOD_BASE_URL, help_heading = "Marketplaces")]
    pub runpod_base_url: String,
    /// Time allowed to one marketplace API call.
    #[arg(long, env = env::PROVIDER_CALL_TIMEOUT, value_name = "DURATION", default_value = "20s", help_heading = "Marketplaces")]
    pub provider_call_timeout: String,
    /// Least time between two calls to one Vast.ai endpoint (default: the client's 100ms). Vast does
    /// not publish it: a guess that widens itself after a 429; "0s" turns pacing off.
    #[arg(long, env = env::VASTAI_ENDPOINT_INTERVAL, value_name = "DURATION", help_heading = "Marketplaces")]
    pub vastai_endpoint_interval: Option<String>,

    /// Operator-wide hard maximum of a session's lifetime.
    #[arg(long, env = env::MAX_SESSION_DURATION, value_name = "DURATION", default_value = "12h", help_heading = "Limits and timers")]
    pub max_session_duration: String,
    /// How often each marketplace's instances are listed: orphans and strays are swept and running
    /// machines checked against that listing, so a lost machine shows in status within one interval.
    #[arg(long, env = env::ORPHAN_SWEEP_INTERVAL, value_name = "DURATION", default_value = "30s", help_heading = "Limits and timers")]
    pub orphan_sweep_interval: String,
    /// How long an instance of this installation that no session owns is left alone before it is destroyed.
    #[arg(long, env = env::ORPHAN_GRACE_PERIOD, value_name = "DURATION", default_value = "10m", help_heading = "Limits and timers")]
    pub orphan_grace_period: String,
    /// How long an instance labelled for a live session, but not its machine (a create that
    /// landed late), is left alone before it is destroyed.
    #[arg(long, env = env::STRAY_GRACE_PERIOD, value_name = "DURATION", default_value = "60s", help_heading = "Limits and timers")]
    pub stray_grace_period: String,
    /// How often a running machine is checked over SSH for a Job's exit or GPU idleness.
    #[arg(long, env = env::MACHINE_CHECK_INTERVAL, value_name = "DURATION", default_value = "60s", help_heading = "Limits and timers")]
    pub machine_check_interval: String,
    /// How long a host that failed verification is avoided.
    #[arg(long, env = env::BAD_HOST_TTL, value_name = "DURATION", default_value = "1h", help_heading = "Limits and timers")]
    pub bad_host_ttl: String,
    /// Reconciles of one kind (sessions; filters apart) run at once; the rest wait their turn in
    /// the queue. Each in flight holds about 20 KB and may hold an API request or a marketplace call.
    #[arg(long, env = env::MAX_CONCURRENT_RECONCILES, value_name = "COUNT", default_value = "64", help_heading = "Limits and timers")]
    pub max_concurrent_reconciles: String,

    /// Watch only these namespaces, comma-separated (unset: every namespace).
    #[arg(long, env = env::WATCH_NAMESPACE, value_name = "NAMESPACES", help_heading = "Cluster")]
    pub watch_namespace: Option<String>,
    /// "false" turns leader election off (a single replica only).
    #[arg(long, env = env::LEADER_ELECTION, value_name = "BOOL", default_value = "true", help_heading = "Cluster")]
    pub leader_election: String,
    /// Name of the leader-election Lease (default: gpu-shopper-<DEPLOYMENT_ID>).
    #[arg(long, env = env::LEASE_NAME, value_name = "NAME", help_heading = "Cluster")]
    pub lease_name: Option<String>,
    /// Namespace of the Lease (default: POD_NAMESPACE, else the first WATCH_NAMESPACE, else "default").
    #[arg(long, env = env::LEASE_NAMESPACE, value_name = "NAMESPACE", help_heading = "Cluster")]
    pub lease_namespace: Option<String>,
    /// How long a leader's lease lasts without renewal.
    #[arg(long, env = env::LEASE_DURATION, value_name = "DURATION", default_value = "15s", help_heading = "Cluster")]
    pub lease_duration: String,
    /// The namespace the operator's pod runs in (the chart sets it through the downward API).
    #[arg(long, env = env::POD_NAMESPACE, value_name = "NAMESPACE", help_heading = "Cluster")]
    pub pod_namespace: Option<String>,
    /// The operator's pod name (the chart sets it through the downward API); names the reporter of Events.
    #[arg(long, env = env::POD_NAME, value_name = "NAME", help_heading = "Cluster")]
    pub pod_name: Option<String>,

    /// The image an Inference session's gateway runs (the chart sets the operator's own).
    #[arg(long, env = env::GATEWAY_IMAGE, value_name = "IMAGE", default_value = super::DEFAULT_GATEWAY_IMAGE, help_heading = "Inference gateways")]
    pub gateway_image: String,
    /// Gateway replicas per Inference session (a session's workload.inference.gateway.replicas overrides).
    #[arg(long, env = env::GATEWAY_REPLICAS, value_name = "COUNT", default_value = "1", help_heading = "Inference gateways")]
    pub gateway_replicas: String,
    /// Resources of each gateway container, as the JSON of a ResourceRequirements.
    #[arg(long, env = env::GATEWAY_RESOURCES, value_name = "JSON", default_value = super::DEFAULT_GATEWAY_RESOURCES, help_heading = "Inference gateways")]
    pub gateway_resources: String,
    /// Who may call a session's Service by default: "none" (no NetworkPolicy) or "namespace"
    /// (only pods of the session's namespace).
    #[arg(long, env = env::GATEWAY_NETWORK_POLICY, value_name = "WHO", default_value = "none", help_heading = "Inference gateways")]
    pub gateway_network_policy: String,

    /// A tracing filter, for example info,gpu_shopper=debug.
    #[arg(long, env = env::LOG_LEVEL, value_name = "FILTER", default_value = "info", help_heading = "Logs and metrics")]
    pub log_level: String,
    /// "text" or "json".
    #[arg(long, env = env::LOG_FORMAT, value_name = "FORMAT", default_value = "text", help_heading = "Logs and metrics")]
    pub log_format: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = env::HTTP_ADDR, value_name = "ADDRESS", default_value = super::DEFAULT_HTTP_ADDR, help_heading = "Logs and metrics")]
    pub http_addr: String,
}

impl ControllerArgs {
    /// The settings as `controller` reads them from `argv` and the environment.
    pub fn parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_with(argv, blank_env_is_unset)
    }

    /// The settings from `argv` alone, whatever the environment holds (for tests).
    pub fn parse_flags_only<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_with(argv, |arg| arg.env(None::<&'static str>))
    }

    /// `argv` parsed after `each_arg` has adjusted where each argument may come from.
    fn parse_with<I, T>(argv: I, each_arg: impl FnMut(clap::Arg) -> clap::Arg) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches;
        let command = Self::command().no_binary_name(true).mut_args(each_arg);
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    /// The command as `controller --help` shows it.
    pub fn command() -> clap::Command {
        use clap::Args;
        Self::augment_args(clap::Command::new("controller"))
    }
}

/// A variable set to nothing (or blanks) counts as unset, so its default holds:
/// a chart's `VALUE: ""` then means "not set", as it did before clap read them.
pub fn blank_env_is_unset(arg: clap::Arg) -> clap::Arg {
    let blank = arg.get_env().and_then(std::env::var_os).is_some_and(|value| value.to_string_lossy().trim().is_empty());
    if blank { arg.env(None::<&'static str>) } else { arg }
}

/// Every environment variable the operator reads, in the order `--help` lists them.
pub fn variables() -> Vec<String> {
    ControllerArgs::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|name| name.to_string_lossy().into_owned()))
        .collect()
}

/// docs/configuration.md: every setting with its variable, flag and default, from the arguments above.
pub fn markdown() -> String {
    let command = ControllerArgs::command();
    let mut out = String::from(
        "# Configuration\n\n<!-- Generated from src/config/args.rs by `GPU_SHOPPER_BLESS=1 cargo test --test configuration_doc`. -->\n\n\
         `gpu-shopper controller` reads each setting from a flag or from the environment variable beside it \
         (the chart sets the variables). `gpu-shopper controller --help` prints the same list.\n",
    );
    let mut heading = None;
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env() else { continue };
        if arg.get_help_heading() != heading {
            heading = arg.get_help_heading();
            out.push_str(&format!(
                "\n## {}\n\n| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n",
                heading.unwrap_or("Other")
            ));
        }
        let default: Vec<String> =
            arg.get_default_values().iter().map(|v| format!("`{}`", v.to_string_lossy())).collect();
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | `--{}` | {} | {} |\n",
            name.to_string_lossy(),
            arg.get_long().unwrap_or_default(),
            if default.is_empty() { "".to_string() } else { default.join(", ") },
            help.replace('\n', " ").replace('|', "\\|"),
        ));
    }
    out
}

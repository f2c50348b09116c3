//! The commands users run (also as the kubectl plugin `kubectl gpu-shopper`):
//! the live market, SSH into a session, costs, a readable session status, and
//! waiting for a session. They take kubectl's flags (`--context`,
//! `--kubeconfig`, `-n`, `-o`).

pub mod cost;
pub mod doctor;
pub mod guard;
pub mod offers;
pub mod output;
pub mod ssh;
pub mod status;
mod table;
pub mod wait;

use std::path::PathBuf;
use std::sync::OnceLock;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// kubectl's own flags, accepted before or after any command.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GlobalFlags {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub output: Option<output::Format>,
}

/// `--provider NAME` of every command.
pub(crate) fn parse_provider(text: &str) -> Result<crate::crd::ProviderName, String> {
    crate::crd::ProviderName::ALL
        .into_iter()
        .find(|p| p.as_str() == text)
        .ok_or_else(|| format!("unknown marketplace {text:?}: use vastai, tensordock or runpod"))
}

/// `--timeout 90s|30m|2h` of every command.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::crd::duration::parse(text).ok_or_else(|| format!("{text:?} is not a duration such as 90s, 30m or 2h"))
}

static GLOBALS: OnceLock<GlobalFlags> = OnceLock::new();

/// Records the global flags (once, before a command runs).
pub fn set_globals(flags: GlobalFlags) {
    let _ = GLOBALS.set(flags);
}

fn globals() -> &'static GlobalFlags {
    GLOBALS.get_or_init(GlobalFlags::default)
}

/// A failure a user can act on; printed as "gpu-shopper: <message>".
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the cluster (set KUBECONFIG or --context): {0}")]
    Cluster(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl From<kube::Error> for CliError {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 404 => CliError::Usage(format!("not found: {}", status.message)),
            kube::Error::Api(status) if status.code == 403 => CliError::Usage(format!(
                "the cluster refused access: {} (ask for read access to gpusessions and their Secrets)",
                status.message
            )),
            other => CliError::Cluster(other.to_string()),
        }
    }
}

/// The cluster connection as kubectl would make it from `--kubeconfig` and `--context`.
async fn kube_config() -> Result<kube::Config, CliError> {
    let flags = globals();
    let options = KubeConfigOptions { context: flags.context.clone(), ..Default::default() };
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Cluster(format!("cannot read {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None if flags.context.is_some() => kube::Config::from_kubeconfig(&options).await,
        None => return kube::Config::infer().await.map_err(|e| CliError::Cluster(e.to_string())),
    };
    config.map_err(|e| CliError::Cluster(e.to_string()))
}

/// The API server's address as a file name ("10.0.0.1_6443"): per-cluster caches
/// never mix two clusters' sessions of the same name.
pub async fn cluster_dir_name() -> Result<String, CliError> {
    let config = kube_config().await?;
    let authority = config.cluster_url.authority().map(|a| a.to_string()).unwrap_or_else(|| "cluster".into());
    Ok(authority.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect())
}

pub async fn client() -> Result<Client, CliError> {
    Client::try_from(kube_config().await?).map_err(|e| CliError::Cluster(e.to_string()))
}

/// The namespace to use: the flag, else the kubeconfig context's, else "default".
pub async fn namespace(flag: Option<String>) -> String {
    if let Some(ns) = flag {
        return ns;
    }
    kube_config().await.map(|c| c.default_namespace).unwrap_or_else(|_| "default".into())
}

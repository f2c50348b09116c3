//! The cluster connection, made as kubectl makes it from `--kubeconfig`,
//! `--context` and the context's namespace.

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::CliError;
use super::flags::globals;

/// The cluster connection as kubectl would make it from `--kubeconfig`, `--context`,
/// `--as`, `--as-group` and `--request-timeout`.
async fn kube_config() -> Result<kube::Config, CliError> {
    let mut config = kubeconfig_config().await?;
    let flags = globals();
    if let Some(user) = &flags.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !flags.as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(flags.as_group.clone());
    }
    if let Some(timeout) = flags.request_timeout {
        let timeout = (timeout != std::time::Duration::MAX).then_some(timeout);
        config.read_timeout = timeout;
        config.write_timeout = timeout;
        config.connect_timeout = timeout;
    }
    Ok(config)
}

async fn kubeconfig_config() -> Result<kube::Config, CliError> {
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

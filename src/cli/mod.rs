//! The commands users run (also as the kubectl plugin `kubectl-gpu`): the
//! live market, SSH into a session, costs, and a readable session status.

pub mod cost;
pub mod doctor;
pub mod offers;
pub mod ssh;
pub mod status;
mod table;

use kube::Client;

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

pub async fn client() -> Result<Client, CliError> {
    Client::try_default().await.map_err(|e| CliError::Cluster(e.to_string()))
}

/// The namespace to use: the flag, else the kubeconfig context's, else "default".
pub async fn namespace(flag: Option<String>) -> String {
    if let Some(ns) = flag {
        return ns;
    }
    kube::Config::infer().await.map(|c| c.default_namespace).unwrap_or_else(|_| "default".into())
}

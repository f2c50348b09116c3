//! The failures the CLI reports to its user.

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

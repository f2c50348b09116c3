//! Errors of the operator's reconcilers.

/// Anything that can make one reconcile fail. Each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer bookkeeping failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{kind} has no namespace; gpu-shopper resources are namespaced")]
    MissingNamespace { kind: &'static str },
    #[error("could not encode status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{0}")]
    Provider(#[from] crate::provider::ProviderError),
    #[error("SSH key: {0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("the SSH key Secret {0} is missing its keys")]
    SecretIncomplete(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Serialize(_) => "serialize",
            Error::Provider(_) => "provider",
            Error::Key(_) => "key",
            Error::SecretIncomplete(_) => "secret",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    #[error(
        "{provider}: a create sent at {sent_at} may have landed; waiting for a listing of {provider} to show what exists"
    )]
    WaitingForListing { provider: crate::crd::ProviderName, sent_at: String },
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
            Error::WaitingForListing { .. } => "waiting_for_listing",
        }
    }
}

/// HTTP code of a Kubernetes API refusal, looking through the finalizer helper's wrapping.
fn api_code(error: &Error) -> Option<u16> {
    use kube::runtime::finalizer::Error as F;
    let kube_error = match error {
        Error::Kube(e) => e,
        Error::Finalizer(boxed) => match boxed.as_ref() {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => return api_code(inner),
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => e,
            _ => return None,
        },
        _ => return None,
    };
    match kube_error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl Error {
    /// A write refused because our copy of the object was older than the server's (409).
    /// Not a fault: the fresh object is on its way through the watch.
    pub fn is_stale_copy(&self) -> bool {
        api_code(self) == Some(409)
    }

    /// The finalizer could not be removed because the object is already gone: a
    /// second cleanup of a deleted object raced the watch. Nothing is left to do.
    pub fn is_finalizer_of_deleted_object(&self) -> bool {
        matches!(self, Error::Finalizer(boxed)
            if matches!(boxed.as_ref(), kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::runtime::finalizer::Error as F;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("refused", reason).with_code(code).boxed())
    }

    #[test]
    fn a_409_from_a_status_write_inside_the_finalizer_helper_is_a_stale_copy() {
        let wrapped = Error::Finalizer(Box::new(F::ApplyFailed(Error::Kube(api(409, "Conflict")))));
        assert!(wrapped.is_stale_copy());
        assert!(!Error::Finalizer(Box::new(F::ApplyFailed(Error::Kube(api(500, "InternalError"))))).is_stale_copy());
        assert!(!Error::SecretIncomplete("s".into()).is_stale_copy());
    }

    #[test]
    fn only_a_404_on_finalizer_removal_means_the_object_is_already_gone() {
        assert!(Error::Finalizer(Box::new(F::RemoveFinalizer(api(404, "NotFound")))).is_finalizer_of_deleted_object());
        assert!(!Error::Finalizer(Box::new(F::AddFinalizer(api(404, "NotFound")))).is_finalizer_of_deleted_object());
        assert!(!Error::Finalizer(Box::new(F::RemoveFinalizer(api(409, "Conflict")))).is_finalizer_of_deleted_object());
    }
}

//! Leader election through a `coordination.k8s.io/v1` Lease: replicas wait as
//! standbys; only the holder reconciles. A leader that loses the lease exits
//! at once (its replacement starts from what the API server holds), so no
//! session is ever reconciled by two replicas.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Holds leadership while alive.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    _task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Waits until this process holds the lease `name` in `namespace`.
pub async fn acquire(
    client: Client,
    name: &str,
    namespace: &str,
    identity: &str,
    duration: Duration,
) -> Result<Leadership, LeaseManagerError> {
    let seconds = duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .with_field_manager("gpu-shopper-leader-election")
        .build()
        .await?;
    let (mut receiver, task) = manager.watch().await;
    tracing::info!(lease = %name, %namespace, %identity, "waiting to become the leader");
    while !*receiver.borrow_and_update() {
        if receiver.changed().await.is_err() {
            break;
        }
    }
    tracing::info!(lease = %name, %identity, "acquired leadership");
    Ok(Leadership { receiver, _task: task })
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(mut self) {
        loop {
            if !*self.receiver.borrow_and_update() {
                return;
            }
            if self.receiver.changed().await.is_err() {
                return;
            }
        }
    }
}

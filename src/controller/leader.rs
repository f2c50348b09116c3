//! Leader election through a `coordination.k8s.io/v1` Lease: replicas wait as
//! standbys; only the holder reconciles. Fencing, as controller-runtime does it:
//! the lease is renewed when two thirds of it remain (a renewal and its
//! read-back then have five twelfths of the lease, not a quarter, before the
//! deadline, which a saturated API server needs), and a leader that cannot see
//! its own renewal within the renew deadline (three quarters of the lease)
//! closes the marketplace gate and exits, a quarter of a lease before any
//! standby may take over. On a graceful stop the lease is released. The lease
//! is held on a thread and runtime of its own, apart from the reconciles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{oneshot, watch};

use super::kube_client;
use crate::metrics::Metrics;
use crate::provider::gate::Gate;

/// How leadership ended while this process held it.
#[derive(Debug, PartialEq, Eq)]
pub enum Loss {
    /// Another replica holds the lease.
    Lost,
    /// This replica could not confirm its renewal in time: it stops before the lease can expire.
    Fenced,
}

/// The timing of one lease, all derived from its duration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Whole seconds: the Lease keeps seconds.
    pub duration: Duration,
    /// Renew when this much of the lease remains.
    pub grace: Duration,
    /// The longest a leader acts without seeing its renewal.
    pub renew_deadline: Duration,
    /// How often the leader reads its Lease back.
    pub check_every: Duration,
}

impl Timing {
    pub fn new(duration: Duration) -> Self {
        let seconds = duration.as_secs().max(2);
        let duration = Duration::from_secs(seconds);
        Timing {
            duration,
            grace: Duration::from_secs((seconds * 2).div_ceil(3).min(seconds - 1)),
            renew_deadline: duration * 3 / 4,
            check_every: (duration / 6).max(Duration::from_millis(250)),
        }
    }
}

/// Holds leadership while alive.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    fenced: watch::Receiver<bool>,
    /// Asks the leader-election thread to give the lease up, and is told when it has.
    release: oneshot::Sender<oneshot::Sender<()>>,
}

/// Where the Lease is and who this replica is.
pub struct Candidate {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

/// Waits until this process holds the lease, then keeps renewing it; from then
/// on `gate` is closed as soon as the renewal cannot be confirmed in time.
///
/// The lease is held on a thread of its own, with its own runtime and its own
/// API client: a controller whose runtime is saturated (every worker busy
/// reconciling thousands of sessions, a CPU limit throttling it) still renews on
/// time, instead of fencing itself because its renewal task was not polled. It
/// cannot help when the API server itself is too slow to answer.
pub async fn acquire(
    connect: kube::Config,
    metrics: Arc<Metrics>,
    candidate: Candidate,
    gate: Arc<Gate>,
) -> Result<Leadership, String> {
    let (acquired, leadership) = oneshot::channel();
    std::thread::Builder::new()
        .name("leader-election".into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(hold_lease(connect, metrics, candidate, gate, acquired)),
            Err(error) => {
                let _ = acquired.send(Err(format!("cannot start the leader-election runtime: {error}")));
            }
        })
        .map_err(|e| format!("cannot start the leader-election thread: {e}"))?;
    leadership.await.map_err(|_| "the leader-election thread stopped".to_string())?
}

/// Runs on the leader-election thread: waits to lead (or for the caller to stop
/// waiting), reports leadership and fencing, and releases the lease when asked.
async fn hold_lease(
    connect: kube::Config,
    metrics: Arc<Metrics>,
    candidate: Candidate,
    gate: Arc<Gate>,
    mut acquired: oneshot::Sender<Result<Leadership, String>>,
) {
    let Candidate { lease_name: name, namespace, identity, duration } = candidate;
    let timing = Timing::new(duration);
    let client = match kube_client::client_from(connect, metrics) {
        Ok(client) => client,
        Err(error) => {
            let _ = acquired.send(Err(error));
            return;
        }
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(timing.duration.as_secs())
        .with_grace(timing.grace.as_secs())
        .with_field_manager("gpu-shopper-leader-election")
        .build()
        .await;
    let manager = match manager {
        Ok(manager) => manager,
        Err(error) => {
            let _ = acquired.send(Err(error.to_string()));
            return;
        }
    };
    let (mut receiver, manager) = manager.watch().await;
    tracing::info!(lease = %name, %namespace, %identity, "waiting to become the leader");
    while !*receiver.borrow_and_update() {
        tokio::select! {
            changed = receiver.changed() => if changed.is_err() {
                let _ = acquired.send(Err("the lease manager stopped".into()));
                return;
            },
            // The caller stopped waiting (told to stop while a standby): nothing is held.
            _ = acquired.closed() => return,
        }
    }
    tracing::info!(lease = %name, %identity, "acquired leadership");
    let (fence, fenced) = watch::channel(false);
    let (lead, leading) = watch::channel(true);
    let (release, mut release_requested) = oneshot::channel::<oneshot::Sender<()>>();
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let watchdog = tokio::spawn(watch_renewals(leases, name.clone(), identity, timing, gate, fence));
    if acquired.send(Ok(Leadership { leading, fenced, release })).is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = receiver.changed() => {
                let still = changed.is_ok() && *receiver.borrow_and_update();
                let _ = lead.send(still);
                if !still {
                    return; // lost: not ours to release
                }
            }
            request = &mut release_requested => {
                // Dropped without a request: lost or fenced, and not ours to release.
                let Ok(done) = request else { return };
                watchdog.abort();
                // Dropping the last receiver tells the manager to release the lease and stop.
                drop(receiver);
                match tokio::time::timeout(Duration::from_secs(5), manager).await {
                    Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
                    Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the leader lease; it expires on its own"),
                    _ => tracing::warn!("could not release the leader lease in time; it expires on its own"),
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

impl Leadership {
    /// Resolves when leadership is lost or fenced.
    pub async fn lost(&mut self) -> Loss {
        loop {
            if *self.fenced.borrow_and_update() {
                return Loss::Fenced;
            }
            if !*self.leading.borrow_and_update() {
                return Loss::Lost;
            }
            tokio::select! {
                changed = self.leading.changed() => if changed.is_err() { return Loss::Lost },
                changed = self.fenced.changed() => if changed.is_err() { return Loss::Fenced },
            }
        }
    }

    /// Gives the lease up (a graceful stop), so a standby need not wait for it to expire.
    pub async fn release(self) {
        let (done, released) = oneshot::channel();
        if self.release.send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(6), released).await;
        }
    }
}

/// Reads the Lease back every `check_every`: while it names this replica, the
/// deadline moves to its renewal time plus the renew deadline; when it names
/// another, or the deadline passes unconfirmed (the API server unreachable, the
/// renewal failing), the gate closes and `fence` says so.
async fn watch_renewals(
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    gate: Arc<Gate>,
    fence: watch::Sender<bool>,
) {
    // Acquired just now: the renewal behind it is at most this old.
    let mut deadline = Instant::now() + timing.renew_deadline;
    let why = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break format!("the lease's renewal was not confirmed within {:?}", timing.renew_deadline);
        }
        tokio::time::sleep(timing.check_every.min(left)).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            continue;
        }
        // A slow answer still counts: the renewal time it shows is the server's record, so
        // the read may take until the deadline (a saturated API server answers in seconds).
        let Ok(Ok(lease)) = tokio::time::timeout(left, leases.get(&name)).await else {
            continue; // unconfirmed: the deadline stands
        };
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(identity.as_str()) {
            break format!("the lease is held by {:?}", spec.holder_identity.unwrap_or_default());
        }
        if let Some(renewed) = spec.renew_time {
            let age = jiff::Timestamp::now().duration_since(renewed.0).try_into().unwrap_or(Duration::ZERO);
            deadline = Instant::now() + timing.renew_deadline.saturating_sub(age);
        }
    };
    gate.close();
    tracing::error!(lease = %name, %identity, reason = %why, "no longer sure to lead: marketplace calls stopped; exiting before the lease can expire");
    let _ = fence.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_renews_at_a_third_and_fences_before_any_standby_may_take_over() {
        for seconds in [2, 3, 4, 15, 60] {
            let t = Timing::new(Duration::from_secs(seconds));
            let renews_after = t.duration - t.grace;
            assert!(
                renews_after + t.check_every < t.renew_deadline,
                "{t:?}: a normal renewal is seen before the deadline"
            );
            assert!(t.renew_deadline < t.duration, "{t:?}: fenced before the lease can expire");
        }
        let chart = Timing::new(Duration::from_secs(15));
        assert_eq!(chart.renew_deadline, Duration::from_millis(11_250));
        assert_eq!(chart.duration - chart.grace, Duration::from_secs(5), "renewed 5 s after the last renewal");
    }
}

//! A finished Job stops billing at once: one SSH login per running Job holds a
//! command that returns when the job's exit code appears (checked on the
//! machine every second), and wakes the session. No status write and no login
//! per check; a dropped login just ends the watch (the machine check every
//! MACHINE_CHECK_INTERVAL, and the next reconcile, take over).

use std::sync::Arc;
use std::time::Duration;

use super::launcher::work_dir;
use super::secret::SessionKey;
use super::step::Step;
use crate::crd::WorkloadKind;
use crate::keys;
use crate::probe::ssh::{self, Target};

/// How long the login of a watch may take.
const LOGIN: Duration = Duration::from_secs(20);

/// Starts waiting on the Job's exit unless a watch already runs.
pub fn ensure(step: &Step<'_>, key: &SessionKey) {
    if step.session.spec.workload.kind != WorkloadKind::Job {
        return;
    }
    let uid = step.session.metadata.uid.clone().unwrap_or_default();
    let watches = step.ctx.exit_watches.clone();
    let Some(endpoint) = step.status.ssh.clone() else { return };
    let Some(pinned) = endpoint.host_key_fingerprint.clone() else { return };
    if !watches.may_start(&uid) {
        return;
    }
    // The private key is parsed for this one login and dropped with it.
    let Ok(private) = keys::parse_private(&key.private_openssh) else { return };
    let wake = step.ctx.waker(step.session);
    let command = format!("cd \"{}\" && while [ ! -e exit_code ]; do sleep 1; done; echo exited", work_dir(step));
    let task_uid = uid.clone();
    let task_watches = watches.clone();
    let task = tokio::spawn(async move {
        let target = Target {
            host: &endpoint.host,
            port: endpoint.port,
            user: &endpoint.user,
            pinned_fingerprint: Some(&pinned),
        };
        let exited = match ssh::connect(&target, Arc::new(private), LOGIN).await {
            // The command ends when the job does; a login lost meanwhile ends it too.
            Ok(connection) => connection.stream(&command, |_| {}).await.ok().flatten() == Some(0),
            Err(_) => false,
        };
        if exited {
            task_watches.ended(&task_uid, true);
            wake();
        } else {
            // A watch that could not be held is not retried at once: the machine check covers it.
            tokio::time::sleep(Duration::from_secs(30)).await;
            task_watches.ended(&task_uid, false);
        }
    });
    watches.started(&uid, task.abort_handle());
}

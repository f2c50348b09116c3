//! SSHReady: the session's key logs in, and the host key is pinned. A changed
//! host key, or no login within the stage's time limit, is the host's failure.

use super::super::login::count_ssh_failure;
use super::super::stage::{Pass, Verdict};
use super::super::step::{PROVISIONING_POLL, Step};
use crate::crd::conditions::{Status, types};
use crate::error::Result;
use crate::probe::ssh::SshError;

pub async fn prove<'a>(step: &mut Step<'a>, pass: &mut Pass<'a, '_>) -> Result<Verdict> {
    match pass.login.open(step, pass.key).await {
        Ok(host_fingerprint) => {
            let endpoint = step.status.ssh.as_mut().expect("InstanceRunning recorded the endpoint");
            endpoint.host_key_fingerprint.get_or_insert(host_fingerprint.clone());
            let message = format!(
                "logged in as {}@{}:{} with the session's key; host key {host_fingerprint} pinned",
                endpoint.user, endpoint.host, endpoint.port
            );
            step.condition(types::SSH_READY, true, "LoggedIn", message);
            Ok(Verdict::Proved)
        }
        Err(error @ SshError::HostKeyChanged { .. }) => {
            count_ssh_failure(step);
            Ok(Verdict::host_failed("HostKeyChanged", error.to_string()))
        }
        Err(error) => {
            count_ssh_failure(step);
            let since = step.true_since(types::INSTANCE_RUNNING).unwrap_or(step.now);
            let limit = pass.timeouts.ssh_ready;
            if step.seconds_since(since) > limit.as_secs_f64() {
                let message = format!("no SSH login within {}s: {error}", limit.as_secs());
                return Ok(Verdict::host_failed("SSHUnreachable", message));
            }
            step.condition(types::SSH_READY, Status::Unknown, "Waiting", format!("not yet: {error}"));
            Ok(Verdict::NotYet(PROVISIONING_POLL))
        }
    }
}

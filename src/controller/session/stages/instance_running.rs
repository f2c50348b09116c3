//! InstanceRunning: the marketplace shows the machine running, with an SSH
//! endpoint. Never running within its time limit, or unknown to the marketplace
//! after a fresh create had time to show, is the host's failure.

use std::time::Duration;

use super::super::machine::{Sighting, current_instance};
use super::super::secret;
use super::super::stage::{Pass, Verdict};
use super::super::step::{PROVISIONING_POLL, Step};
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::crd::session::SshEndpoint;
use crate::error::Result;
use crate::provider::InstanceState;

/// How long a just-created instance may be unknown to the marketplace's lookups.
const NOT_VISIBLE_YET: Duration = Duration::from_secs(30);

pub async fn prove(step: &mut Step<'_>, pass: &mut Pass<'_, '_>) -> Result<Verdict> {
    let instance = match current_instance(step, |i| i.ssh.is_some()).await? {
        Sighting::Seen(instance) => instance,
        // The condition still says the machine was created and is awaited: nothing new to write.
        Sighting::AwaitingListing => return Ok(Verdict::NotYet(PROVISIONING_POLL)),
        Sighting::Unknown => {
            // A fresh create can take a moment to show in the marketplace's lookups.
            let rented = step.status.rented_at.as_ref().map(|t| t.0).unwrap_or(step.now);
            if step.seconds_since(rented) < NOT_VISIBLE_YET.as_secs_f64() {
                step.condition(types::INSTANCE_RUNNING, false, "Starting", "not visible at the marketplace yet");
                return Ok(Verdict::NotYet(PROVISIONING_POLL));
            }
            return Ok(Verdict::host_failed("InstanceLost", "the marketplace no longer knows the instance"));
        }
    };
    if let (InstanceState::Running, Some(target)) = (&instance.state, &instance.ssh) {
        step.status.ssh = Some(SshEndpoint {
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            host_key_fingerprint: None,
        });
        secret::record_endpoint(step.session, step.ctx, &target.host, target.port, &target.user).await?;
        let message = format!(
            "{} reports the instance running; SSH at {}@{}:{}",
            instance.provider, target.user, target.host, target.port
        );
        step.condition(types::INSTANCE_RUNNING, true, "Running", message.clone());
        step.phase(SessionPhase::Verifying, "InstanceRunning", message);
        return Ok(Verdict::Proved);
    }
    let since = step.status.rented_at.as_ref().map(|t| t.0).unwrap_or(step.now);
    let limit = pass.timeouts.instance_running;
    if step.seconds_since(since) > limit.as_secs_f64() {
        let message =
            format!("not running with an SSH endpoint after {}s (state {:?})", limit.as_secs(), instance.state);
        return Ok(Verdict::host_failed("InstanceNeverRan", message));
    }
    step.condition(
        types::INSTANCE_RUNNING,
        false,
        "Starting",
        format!("state {:?}, no SSH endpoint yet", instance.state),
    );
    Ok(Verdict::NotYet(PROVISIONING_POLL))
}

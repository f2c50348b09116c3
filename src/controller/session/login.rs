//! Running commands on a session's machine over SSH, with the session's key and
//! the host key pinned in its status.
//!
//! The readiness stages that pass in one reconcile (SSHReady, CUDAVerified,
//! WorkloadReady) share one login: each login is a key exchange and a signature
//! on both ends, and at a thousand sessions those handshakes were the CPU the
//! ramp waited on. Everything else (job and idle checks, the key rotation's
//! proofs that a key is or is not accepted) logs in afresh each time.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::sync::SemaphorePermit;

use super::secret::SessionKey;
use super::step::Step;
use crate::crd::session::SshEndpoint;
use crate::keys;
use crate::metrics::ProviderLabels;
use crate::probe::ssh::{self, CommandOutput, Connection, SshError, Target};

/// Time allowed to one SSH login, and to one command.
const SSH_CALL: Duration = Duration::from_secs(20);

/// Logs in and runs `command` on the session's machine.
pub async fn run_on_machine(
    step: &Step<'_>,
    key: &SessionKey,
    command: &str,
) -> std::result::Result<CommandOutput, SshError> {
    let (endpoint, private) = endpoint_and_key(step, key)?;
    let _permit = step.ctx.ssh_permits.acquire().await.expect("the SSH semaphore is never closed");
    ssh::run(&target(&endpoint), private, command, SSH_CALL).await
}

/// Logs in and runs `command` with `input` on its standard input.
pub async fn run_with_input_on_machine(
    step: &Step<'_>,
    key: &SessionKey,
    command: &str,
    input: &[u8],
) -> std::result::Result<CommandOutput, SshError> {
    let (endpoint, private) = endpoint_and_key(step, key)?;
    let _permit = step.ctx.ssh_permits.acquire().await.expect("the SSH semaphore is never closed");
    let connection = ssh::connect(&target(&endpoint), private, SSH_CALL).await?;
    let result = connection.exec_with_input(command, input, SSH_CALL).await;
    connection.close().await;
    result
}

/// One login kept for the stages of one reconcile, with its share of the SSH
/// bound held until it is dropped.
#[derive(Default)]
pub struct StageLogin<'a> {
    open: Option<(Connection, SemaphorePermit<'a>)>,
}

impl<'a> StageLogin<'a> {
    /// Logs in unless already logged in; the connection's host key fingerprint.
    pub async fn open(&mut self, step: &Step<'a>, key: &SessionKey) -> Result<String, SshError> {
        if let Some((connection, _)) = &self.open {
            return Ok(connection.host_fingerprint.clone());
        }
        let (endpoint, private) = endpoint_and_key(step, key)?;
        let permit = step.ctx.ssh_permits.acquire().await.expect("the SSH semaphore is never closed");
        let connection = ssh::connect(&target(&endpoint), private, SSH_CALL).await?;
        let fingerprint = connection.host_fingerprint.clone();
        self.open = Some((connection, permit));
        Ok(fingerprint)
    }

    /// Runs `command` on the kept login (logging in first if needed). A command
    /// that failed at the SSH level drops the login, so the next one starts clean.
    pub async fn run(&mut self, step: &Step<'a>, key: &SessionKey, command: &str) -> Result<CommandOutput, SshError> {
        self.open(step, key).await?;
        let (connection, _) = self.open.as_ref().expect("just opened");
        let result = connection.exec(command, SSH_CALL).await;
        if result.is_err() {
            self.open = None;
        }
        result
    }

    /// The kept login (logging in first if needed), to carry connections to the machine's loopback.
    pub async fn connection(&mut self, step: &Step<'a>, key: &SessionKey) -> Result<&Connection, SshError> {
        self.open(step, key).await?;
        Ok(&self.open.as_ref().expect("just opened").0)
    }

    /// Drops the login (and its share of the SSH bound) once no stage of this reconcile needs it.
    pub fn close(&mut self) {
        self.open = None;
    }
}

/// Counts a failed SSH proof against the session's marketplace.
pub fn count_ssh_failure(step: &Step<'_>) {
    let provider = step.status.provider.map(|p| p.as_str()).unwrap_or("unknown");
    step.ctx.metrics.ssh_verify_failures.get_or_create(&ProviderLabels { provider }).inc();
}

fn endpoint_and_key(step: &Step<'_>, key: &SessionKey) -> Result<(SshEndpoint, Arc<PrivateKey>), SshError> {
    let endpoint = step
        .status
        .ssh
        .clone()
        .ok_or_else(|| SshError::Connect { addr: "?".into(), message: "no SSH endpoint known".into() })?;
    let private = keys::parse_private(&key.private_openssh)
        .map_err(|e| SshError::Protocol { addr: endpoint.host.clone(), message: e.to_string() })?;
    Ok((endpoint, Arc::new(private)))
}

fn target(endpoint: &SshEndpoint) -> Target<'_> {
    Target {
        host: &endpoint.host,
        port: endpoint.port,
        user: &endpoint.user,
        pinned_fingerprint: endpoint.host_key_fingerprint.as_deref(),
    }
}

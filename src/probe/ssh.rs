//! A real SSH client for the readiness stages: log in with the session's key,
//! record the host key on first contact and insist on it afterwards, run
//! commands and collect their output and exit codes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, AuthResult};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::keys::fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the host key of {addr} changed: expected {expected}, got {actual}")]
    HostKeyChanged { addr: String, expected: String, actual: String },
    #[error("{user}@{addr} refused the session's key")]
    AuthRejected { user: String, addr: String },
    #[error("SSH to {addr} timed out after {}s", timeout.as_secs())]
    Timeout { addr: String, timeout: Duration },
    #[error("SSH protocol error with {addr}: {message}")]
    Protocol { addr: String, message: String },
}

/// Where and as whom to log in, and the host key fingerprint seen before, if any.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub pinned_fingerprint: Option<&'a str>,
}

pub struct CommandOutput {
    pub exit_code: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    /// The host key's SHA256 fingerprint, to pin on first contact.
    pub host_fingerprint: String,
}

struct Verifier {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, offered: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // Machines present plain host keys; a certificate is not something we pin.
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else { return Ok(false) };
        let actual = fingerprint(key);
        let accepted = self.pinned.as_deref().is_none_or(|pinned| pinned == actual);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(actual);
        Ok(accepted)
    }
}

/// The most of a command's stdout (and of its stderr) that is kept; the rest is
/// read and dropped, so a machine printing without end cannot exhaust memory
/// (the call's timeout ends it).
pub const OUTPUT_MAX: usize = 64 * 1024;

fn keep_capped(buffer: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_MAX.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

/// Logs in and runs `command`, all within `timeout`.
pub async fn run(
    target: &Target<'_>,
    key: Arc<PrivateKey>,
    command: &str,
    timeout: Duration,
) -> Result<CommandOutput, SshError> {
    let addr = format!("{}:{}", target.host, target.port);
    let login_and_run = async {
        let connection = connect_inner(target, &addr, key).await?;
        let output = connection.exec_inner(command).await;
        connection.close().await;
        output
    };
    within(timeout, &addr, login_and_run).await
}

/// `work`'s result, or a Timeout error naming `addr` once `timeout` has passed.
async fn within<T>(
    timeout: Duration,
    addr: &str,
    work: impl std::future::Future<Output = Result<T, SshError>>,
) -> Result<T, SshError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(SshError::Timeout { addr: addr.to_string(), timeout }))
}

/// A logged-in SSH connection that runs commands one after another, each on its
/// own channel: a caller with several commands for one machine pays for one
/// key exchange and one authentication, not one per command.
pub struct Connection {
    session: client::Handle<Verifier>,
    addr: String,
    /// The host key's SHA256 fingerprint, to pin on first contact.
    pub host_fingerprint: String,
}

/// Logs in within `timeout`.
pub async fn connect(target: &Target<'_>, key: Arc<PrivateKey>, timeout: Duration) -> Result<Connection, SshError> {
    let addr = format!("{}:{}", target.host, target.port);
    within(timeout, &addr, connect_inner(target, &addr, key)).await
}

async fn connect_inner(target: &Target<'_>, addr: &str, key: Arc<PrivateKey>) -> Result<Connection, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let verifier = Verifier { pinned: target.pinned_fingerprint.map(str::to_string), seen: seen.clone() };
    // Nagle off: a forwarded request is many small writes, and delayed ACKs held some for 40 ms.
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(60)),
        nodelay: true,
        ..Default::default()
    });
    let protocol = |e: russh::Error| SshError::Protocol { addr: addr.to_string(), message: e.to_string() };
    let mut session = match client::connect(config, (target.host, target.port), verifier).await {
        Ok(session) => session,
        Err(error) => {
            let actual = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let (Some(expected), Some(actual)) = (target.pinned_fingerprint, actual)
                && expected != actual
            {
                return Err(SshError::HostKeyChanged {
                    addr: addr.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
            return Err(match error {
                russh::Error::IO(e) => SshError::Connect { addr: addr.to_string(), message: e.to_string() },
                other => protocol(other),
            });
        }
    };
    let host_fingerprint = seen.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let hash = session.best_supported_rsa_hash().await.map_err(protocol)?.flatten();
    let auth =
        session.authenticate_publickey(target.user, PrivateKeyWithHashAlg::new(key, hash)).await.map_err(protocol)?;
    if !matches!(auth, AuthResult::Success) {
        return Err(SshError::AuthRejected { user: target.user.to_string(), addr: addr.to_string() });
    }
    Ok(Connection { session, addr: addr.to_string(), host_fingerprint })
}

impl Connection {
    /// Runs `command` on a new channel and collects its output and exit code within `timeout`.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<CommandOutput, SshError> {
        within(timeout, &self.addr, self.exec_inner(command)).await
    }

    /// Runs `command` with `input` on its standard input (a file's content goes
    /// over the login this way, never on a command line), within `timeout`.
    pub async fn exec_with_input(
        &self,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, SshError> {
        within(timeout, &self.addr, self.exec_inner_with(command, Some(input))).await
    }

    /// Runs `command` and hands its output to `sink` as it arrives, until it ends; its exit code.
    pub async fn stream(&self, command: &str, mut sink: impl FnMut(&[u8])) -> Result<Option<u32>, SshError> {
        let protocol = |e: russh::Error| SshError::Protocol { addr: self.addr.clone(), message: e.to_string() };
        let mut channel = self.session.channel_open_session().await.map_err(protocol)?;
        channel.exec(true, command).await.map_err(protocol)?;
        let mut exit_code = None;
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => sink(&data),
                ChannelMsg::ExitStatus { exit_status } => exit_code = Some(exit_status),
                _ => {}
            }
        }
        Ok(exit_code)
    }

    async fn exec_inner(&self, command: &str) -> Result<CommandOutput, SshError> {
        self.exec_inner_with(command, None).await
    }

    async fn exec_inner_with(&self, command: &str, input: Option<&[u8]>) -> Result<CommandOutput, SshError> {
        let protocol = |e: russh::Error| SshError::Protocol { addr: self.addr.clone(), message: e.to_string() };
        let mut channel = self.session.channel_open_session().await.map_err(protocol)?;
        channel.exec(true, command).await.map_err(protocol)?;
        // Standard input: what is given, then EOF (as `ssh -n` for a command given nothing).
        if let Some(input) = input {
            channel.data(input).await.map_err(protocol)?;
        }
        channel.eof().await.map_err(protocol)?;
        let (mut stdout, mut stderr, mut exit_code) = (Vec::new(), Vec::new(), None);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => keep_capped(&mut stdout, &data),
                ChannelMsg::ExtendedData { data, .. } => keep_capped(&mut stderr, &data),
                ChannelMsg::ExitStatus { exit_status } => exit_code = Some(exit_status),
                _ => {}
            }
        }
        Ok(CommandOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            host_fingerprint: self.host_fingerprint.clone(),
        })
    }

    /// A TCP connection to `port` on the machine's own loopback, carried over this
    /// login (SSH "direct-tcpip" port forwarding): the model port never has to be
    /// exposed on the machine's public address.
    pub async fn tunnel(&self, port: u16) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel =
            self.session.channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0).await.map_err(
                |e| SshError::Protocol { addr: self.addr.clone(), message: format!("forwarding to port {port}: {e}") },
            )?;
        Ok(channel.into_stream())
    }

    /// Whether the connection still stands (the machine has not gone away).
    pub fn is_open(&self) -> bool {
        !self.session.is_closed()
    }

    /// Says goodbye; dropping the connection closes it too, without the courtesy.
    pub async fn close(self) {
        let _ = self.session.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

//! `gpu-shopper port-forward SESSION [LOCAL:]PORT`: the model (or any port) on
//! the machine's loopback, on a local port of this computer, carried over the
//! session's SSH login with the host key the operator pinned: the same
//! forwarding the in-cluster gateway does, from a laptop.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::CliError;
use crate::crd::GpuSession;
use crate::probe::ssh::{self, Connection, Target};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper port-forward llama-inference 8000          # the model on localhost:8000
  gpu-shopper port-forward llama-inference 18000:8000    # on localhost:18000
  curl -H \"Authorization: Bearer $OPENAI_API_KEY\" localhost:8000/v1/models   # (no key needed locally)")]
pub struct PortForwardArgs {
    /// Name of the GpuSession.
    pub session: String,
    /// `PORT`, or `LOCAL:PORT`: the port on the machine's loopback, and where to listen here.
    pub ports: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

/// `8000` -> (8000, 8000); `18000:8000` -> (18000, 8000).
fn parse_ports(text: &str) -> Result<(u16, u16), CliError> {
    let bad = || CliError::Usage(format!("{text:?} is not PORT or LOCAL:PORT"));
    match text.split_once(':') {
        Some((local, remote)) => Ok((local.parse().map_err(|_| bad())?, remote.parse().map_err(|_| bad())?)),
        None => {
            let port = text.parse().map_err(|_| bad())?;
            Ok((port, port))
        }
    }
}

/// The session's login: where, as whom, the pinned host key, and the private key from its Secret.
pub(crate) struct Login {
    host: String,
    port: u16,
    user: String,
    fingerprint: String,
    key: Arc<russh::keys::PrivateKey>,
}

impl Login {
    pub(crate) async fn of(session_name: &str, namespace: &str) -> Result<Login, CliError> {
        let client = super::client().await?;
        let session = Api::<GpuSession>::namespaced(client.clone(), namespace).get(session_name).await?;
        let status = session.status.unwrap_or_default();
        let ssh = status.ssh.ok_or_else(|| {
            CliError::Usage(format!("{session_name} has no machine yet; see `gpu-shopper status {session_name}`"))
        })?;
        let fingerprint = ssh.host_key_fingerprint.ok_or_else(|| {
            CliError::Usage(format!(
                "{session_name}'s host key is not pinned yet (the machine is being proven); try again soon"
            ))
        })?;
        let secret_name = status.secret_name.unwrap_or_else(|| format!("{session_name}-ssh"));
        let secret = Api::<Secret>::namespaced(client, namespace).get(&secret_name).await?;
        let text = secret
            .data
            .as_ref()
            .and_then(|d| d.get(crate::keys::SECRET_PRIVATE_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| CliError::Failed(format!("Secret {secret_name} has no private key")))?;
        let key = crate::keys::parse_private(&secrecy::SecretString::from(text))
            .map_err(|e| CliError::Failed(format!("the key in {secret_name} cannot be read: {e}")))?;
        Ok(Login { host: ssh.host, port: ssh.port, user: ssh.user, fingerprint, key: Arc::new(key) })
    }

    pub(crate) async fn connect(&self) -> Result<Connection, CliError> {
        let target =
            Target { host: &self.host, port: self.port, user: &self.user, pinned_fingerprint: Some(&self.fingerprint) };
        ssh::connect(&target, self.key.clone(), Duration::from_secs(20))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))
    }
}

pub async fn run(args: PortForwardArgs) -> Result<String, CliError> {
    let (local, remote) = parse_ports(&args.ports)?;
    let namespace = super::namespace(args.namespace.clone()).await;
    let login = Login::of(&args.session, &namespace).await?;
    let listener = tokio::net::TcpListener::bind((args.address.as_str(), local))
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {}:{local}: {e}", args.address)))?;
    let mut connection = Arc::new(login.connect().await?);
    eprintln!(
        "Forwarding from {}:{local} -> port {remote} on {}'s loopback (over SSH, host key {})",
        args.address, args.session, login.fingerprint
    );
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tokio::signal::ctrl_c() => return Ok(String::new()),
        };
        let Ok((mut client, _)) = accepted else { continue };
        if !connection.is_open() {
            connection = Arc::new(login.connect().await?);
        }
        let connection = connection.clone();
        tokio::spawn(async move {
            match connection.tunnel(remote).await {
                Ok(mut stream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                }
                Err(error) => eprintln!("gpu-shopper: port {remote} on the machine: {error}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_port_or_local_and_remote() {
        assert_eq!(parse_ports("8000").unwrap(), (8000, 8000));
        assert_eq!(parse_ports("18000:8000").unwrap(), (18000, 8000));
        assert!(parse_ports("a:8000").is_err());
        assert!(parse_ports("99999").is_err());
    }
}

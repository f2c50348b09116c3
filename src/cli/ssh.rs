//! `gpu-shopper ssh SESSION`: log in with the session's key from its Secret,
//! insisting on the host key the operator pinned.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

use super::CliError;
use crate::crd::GpuSession;
use crate::keys;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper ssh interactive-4090
  gpu-shopper ssh interactive-4090 -- nvidia-smi
  gpu-shopper ssh interactive-4090 --print     # show the ssh command instead of running it")]
pub struct SshArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    pub print: bool,
    /// Command to run on the machine (default: an interactive shell).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Where the key and known_hosts of a session are kept for the ssh command (0600).
fn key_dir() -> PathBuf {
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache"));
    base.join("gpu-shopper").join("ssh")
}

fn write_private(path: &PathBuf, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents)
}

/// The host's key line from ssh-keyscan whose fingerprint is the pinned one.
fn pinned_host_key(host: &str, port: u16, fingerprint: &str) -> Result<String, CliError> {
    let out = Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "-T", "10", host])
        .output()
        .map_err(|e| CliError::Failed(format!("ssh-keyscan is needed (OpenSSH client): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.splitn(2, ' ');
        let (_host, key) = (parts.next(), parts.next().unwrap_or(""));
        if let Ok(public) = keys::parse_public(key)
            && keys::fingerprint(&public) == fingerprint
        {
            return Ok(key.to_string());
        }
    }
    Err(CliError::Failed(format!(
        "the machine at {host}:{port} does not present the pinned host key {fingerprint}: refusing to connect (it may have been replaced; check `gpu-shopper status`)"
    )))
}

/// Removes the cached keys and host keys of sessions that no longer exist in
/// this namespace; a failed listing removes nothing.
async fn prune_gone_sessions(dir: &Path, sessions: &Api<GpuSession>) {
    let Ok(list) = sessions.list_metadata(&ListParams::default()).await else { return };
    let alive: HashSet<String> = list.items.into_iter().filter_map(|s| s.metadata.name).collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let session = name.strip_suffix(".known_hosts").unwrap_or(&name);
        if !alive.contains(session) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The session's login, ready for OpenSSH: its key and pinned known_hosts written to
/// this user's cache (0600), and the endpoint.
pub(crate) struct Prepared {
    pub key_path: PathBuf,
    pub known_hosts: PathBuf,
    pub strict: &'static str,
    pub endpoint: crate::crd::session::SshEndpoint,
}

pub(crate) async fn prepare(session_name: &str, namespace: Option<String>) -> Result<Prepared, CliError> {
    let namespace = super::namespace(namespace).await;
    let client = super::client().await?;
    let sessions = Api::<GpuSession>::namespaced(client.clone(), &namespace);
    let session = sessions.get(session_name).await?;
    let status = session.status.unwrap_or_default();
    let Some(endpoint) = status.ssh else {
        return Err(CliError::Usage(format!(
            "{session_name} has no SSH endpoint yet (phase {:?}); see `gpu-shopper status {session_name}`",
            status.phase
        )));
    };
    let secret_name = status.secret_name.unwrap_or_else(|| format!("{session_name}-ssh"));
    let secret = Api::<Secret>::namespaced(client, &namespace).get(&secret_name).await?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ssh-privatekey"))
        .ok_or_else(|| CliError::Failed(format!("Secret {secret_name} has no ssh-privatekey")))?;

    // One folder per cluster and namespace, holding only sessions that still exist.
    let dir = key_dir().join(super::cluster_dir_name().await?).join(&namespace);
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    prune_gone_sessions(&dir, &sessions).await;
    let key_path = dir.join(session_name);
    write_private(&key_path, &key.0)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", key_path.display())))?;
    let known_hosts = dir.join(format!("{session_name}.known_hosts"));
    let host_pattern =
        if endpoint.port == 22 { endpoint.host.clone() } else { format!("[{}]:{}", endpoint.host, endpoint.port) };
    let strict = match &endpoint.host_key_fingerprint {
        Some(fingerprint) => {
            let host_key = pinned_host_key(&endpoint.host, endpoint.port, fingerprint)?;
            write_private(&known_hosts, format!("{host_pattern} {host_key}\n").as_bytes())
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", known_hosts.display())))?;
            "yes"
        }
        None => "accept-new", // not verified by the operator yet
    };
    Ok(Prepared { key_path, known_hosts, strict, endpoint })
}

pub async fn run(args: SshArgs) -> Result<i32, CliError> {
    let Prepared { key_path, known_hosts, strict, endpoint } = prepare(&args.session, args.namespace.clone()).await?;
    let mut ssh_args = vec![
        "-i".to_string(),
        key_path.display().to_string(),
        "-p".into(),
        endpoint.port.to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        format!("StrictHostKeyChecking={strict}"),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        format!("{}@{}", endpoint.user, endpoint.host),
    ];
    ssh_args.extend(args.command.iter().cloned());
    if args.print {
        println!("ssh {}", ssh_args.join(" "));
        return Ok(0);
    }
    let status = Command::new("ssh")
        .args(&ssh_args)
        .status()
        .map_err(|e| CliError::Failed(format!("cannot run ssh (OpenSSH client): {e}")))?;
    Ok(status.code().unwrap_or(255))
}

//! `gpu-shopper ssh-config SESSION`: a Host block for ~/.ssh/config (IDEs, scp,
//! rsync), with the session's key and the pinned host key in files of their own.

use super::CliError;
use super::ssh::{Prepared, prepare};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper ssh-config interactive-4090 >> ~/.ssh/config   # then: ssh gs-interactive-4090")]
pub struct SshConfigArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
}

pub async fn run(args: SshConfigArgs) -> Result<String, CliError> {
    let Prepared { key_path, known_hosts, strict, endpoint } = prepare(&args.session, args.namespace.clone()).await?;
    Ok(format!(
        "Host gs-{name}\n  HostName {host}\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking {strict}\n",
        name = args.session,
        host = endpoint.host,
        port = endpoint.port,
        user = endpoint.user,
        key = key_path.display(),
        known = known_hosts.display(),
    ))
}

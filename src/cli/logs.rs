//! `gpu-shopper logs SESSION [-f] [--tail N]`: the workload's output (stdout
//! and stderr, in one known file on the machine), read over the session's
//! pinned SSH login; `-f` follows it as it grows. Once the machine is gone, it
//! says where the saved log is (a Job with outputs saves it beside them) and
//! shows the tail kept in status.

use std::io::Write;

use kube::Api;

use super::CliError;
use super::port_forward::Login;
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper logs finetune-job
  gpu-shopper logs finetune-job -f --tail 20")]
pub struct LogsArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Keep printing lines as the workload writes them.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines from the end to start with.
    #[arg(long, default_value_t = 100)]
    pub tail: u32,
}

/// The workload's log on the machine, relative to the login user's home.
pub fn log_path(uid: &str) -> String {
    format!("$HOME/.gpu-shopper/{uid}/job.log")
}

pub async fn run(args: LogsArgs) -> Result<String, CliError> {
    let namespace = super::namespace(args.namespace.clone()).await;
    let client = super::client().await?;
    let session = Api::<GpuSession>::namespaced(client, &namespace).get(&args.session).await?;
    let status = session.status.clone().unwrap_or_default();
    let gone = status.released_at.is_some() || status.ssh.is_none();
    if gone {
        let job = status.job.unwrap_or_default();
        let saved = match &job.log {
            Some(url) => format!("the machine is gone; the full log was saved to {url}"),
            None => "the machine is gone and its log was not saved (give the Job outputs to keep it)".to_string(),
        };
        let tail = if job.log_tail.is_empty() {
            String::new()
        } else {
            format!("\nlast lines kept in status:\n{}", job.log_tail)
        };
        return Ok(format!("{saved}{tail}\n"));
    }
    let login = Login::of(&args.session, &namespace).await?;
    let connection = login.connect().await?;
    let uid = session.metadata.uid.unwrap_or_default();
    let follow = if args.follow { " -F" } else { "" };
    let command = format!("tail -n {}{follow} \"{}\" 2>/dev/null || echo 'no output yet'", args.tail, log_path(&uid));
    let mut stdout = std::io::stdout();
    // To a terminal, the log's control sequences are shown, not obeyed; to a pipe, bytes pass as they are.
    let to_terminal = std::io::IsTerminal::is_terminal(&stdout);
    let stream = connection.stream(&command, |data| {
        let _ = if to_terminal {
            stdout.write_all(&super::terminal::printable_bytes(data))
        } else {
            stdout.write_all(data)
        };
        let _ = stdout.flush();
    });
    tokio::select! {
        result = stream => { result.map_err(|e| CliError::Failed(e.to_string()))?; }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(String::new())
}

//! `gpu-shopper cp SRC DST`: copy a file or directory to or from a session's
//! machine (`SESSION:PATH` names the machine's side), over the session's
//! pinned SSH login. Files go through the login's standard input and output;
//! a directory as a tar stream. (The simulated machines have no SFTP server,
//! so this uses what every sshd has: exec.)

use std::path::Path;

use super::CliError;
use super::port_forward::Login;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper cp finetune-job:ckpt/model.bin ./model.bin
  gpu-shopper cp ./data finetune-job:data            # a directory
Relative machine paths are under the login user's home.")]
pub struct CpArgs {
    /// `SESSION:PATH` or a local path.
    pub source: String,
    /// `SESSION:PATH` or a local path.
    pub destination: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
}

fn remote(text: &str) -> Option<(&str, &str)> {
    let (session, path) = text.split_once(':')?;
    (!session.is_empty() && !session.contains('/')).then_some((session, path))
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub async fn run(args: CpArgs) -> Result<String, CliError> {
    let namespace = super::namespace(args.namespace.clone()).await;
    match (remote(&args.source), remote(&args.destination)) {
        (Some((session, path)), None) => download(session, path, &args.destination, &namespace).await,
        (None, Some((session, path))) => upload(&args.source, session, path, &namespace).await,
        _ => Err(CliError::Usage("name exactly one side as SESSION:PATH".into())),
    }
}

async fn download(session: &str, path: &str, local: &str, namespace: &str) -> Result<String, CliError> {
    let connection = Login::of(session, namespace).await?.connect().await?;
    let probe = connection
        .exec(&format!("[ -d {} ] && echo dir", quote(path)), std::time::Duration::from_secs(30))
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let directory = probe.stdout.trim() == "dir";
    let command = if directory { format!("tar -C {} -cf - .", quote(path)) } else { format!("cat {}", quote(path)) };
    let mut bytes = Vec::new();
    let code = connection
        .stream(&command, |data| bytes.extend_from_slice(data))
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if code != Some(0) {
        return Err(CliError::Failed(format!("{session}:{path} cannot be read")));
    }
    if directory {
        std::fs::create_dir_all(local).map_err(|e| CliError::Failed(format!("{local}: {e}")))?;
        let mut untar = std::process::Command::new("tar")
            .args(["-C", local, "-xf", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| CliError::Failed(format!("tar: {e}")))?;
        use std::io::Write;
        untar.stdin.take().expect("piped").write_all(&bytes).map_err(|e| CliError::Failed(e.to_string()))?;
        untar.wait().map_err(|e| CliError::Failed(e.to_string()))?;
    } else {
        std::fs::write(local, &bytes).map_err(|e| CliError::Failed(format!("{local}: {e}")))?;
    }
    Ok(format!("copied {session}:{path} to {local} ({} bytes)\n", bytes.len()))
}

async fn upload(local: &str, session: &str, path: &str, namespace: &str) -> Result<String, CliError> {
    let connection = Login::of(session, namespace).await?.connect().await?;
    let (bytes, command) = if Path::new(local).is_dir() {
        let out = std::process::Command::new("tar")
            .args(["-C", local, "-cf", "-", "."])
            .output()
            .map_err(|e| CliError::Failed(format!("tar: {e}")))?;
        (out.stdout, format!("mkdir -p {p} && tar -C {p} -xf -", p = quote(path)))
    } else {
        let bytes = std::fs::read(local).map_err(|e| CliError::Failed(format!("{local}: {e}")))?;
        (bytes, format!("mkdir -p \"$(dirname {p})\" && cat > {p}", p = quote(path)))
    };
    let out = connection
        .exec_with_input(&command, &bytes, std::time::Duration::from_secs(600))
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if out.exit_code != Some(0) {
        return Err(CliError::Failed(format!("{session}:{path} cannot be written: {}", out.stderr.trim())));
    }
    Ok(format!("copied {local} to {session}:{path} ({} bytes)\n", bytes.len()))
}

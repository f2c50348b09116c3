//! The SSH server of a simulated instance: a real SSH endpoint on a loopback
//! port that accepts only the keys the instance was given, offers its own host
//! key, answers `nvidia-smi` with the host's real GPU, driver and CUDA, and
//! runs any other command with `sh -c`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{Auth, Msg, Server as _, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

/// What the machine really is.
#[derive(Clone, Debug)]
pub struct Machine {
    pub gpu_name: String,
    pub gpu_count: u32,
    pub vram_mib: u64,
    pub driver: String,
    pub cuda: String,
    /// No NVIDIA driver in the image: `nvidia-smi` is not found.
    pub driver_missing: bool,
    /// A VM whose driver cloud-init is still repairing: until then `nvidia-smi`
    /// cannot talk to the driver and `cloud-init status` says running.
    pub driver_works_from: Option<std::time::Instant>,
    /// The VM has cloud-init (TensorDock VMs; containers have none): `cloud-init
    /// status` says running until this moment, done after.
    pub cloud_init_done_at: Option<std::time::Instant>,
    /// The repair rebooted the VM: no login is accepted in this window.
    pub rebooting: Option<(std::time::Instant, std::time::Instant)>,
    pub env: BTreeMap<String, String>,
    /// Users that may log in (TensorDock: root and user; others: root).
    pub users: Vec<String>,
    /// The login user's home: `.ssh/authorized_keys` there is read at every login,
    /// so a key attached later, or removed, counts at once, as with OpenSSH.
    pub home: PathBuf,
    /// GPU utilisation in percent, shared with the simulator's control endpoint.
    pub gpu_utilization: Arc<std::sync::atomic::AtomicU32>,
    /// Keys are refused before this moment (propagation delay).
    pub keys_accepted_after: std::time::Instant,
    /// Every command prints this many bytes more after its output (a machine that will not stop talking).
    pub extra_output_bytes: u64,
    /// Successful logins, counted across every machine of the simulator.
    pub logins: Arc<std::sync::atomic::AtomicU64>,
    /// What listens on the machine's own loopback: its port -> the real loopback port
    /// here (machines share this computer's loopback, so each has its own map). SSH port
    /// forwarding reaches these and nothing else.
    pub loopback_ports: BTreeMap<u16, u16>,
}

pub fn authorized_keys_path(home: &Path) -> PathBuf {
    home.join(".ssh").join("authorized_keys")
}

/// The lines of `~/.ssh/authorized_keys` in `home` now (none when it does not exist).
pub fn authorized_keys(home: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(authorized_keys_path(home)).unwrap_or_default();
    text.lines().map(|line| line.trim().to_string()).filter(|line| !line.is_empty()).collect()
}

/// nvidia-smi's words when the kernel module is not loaded.
const DRIVER_NOT_LOADED: &str = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n";

/// Binds a loopback port and serves SSH on it until the task is aborted.
pub fn serve(machine: Machine) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let host_key = crate::keys::random_ed25519().map_err(std::io::Error::other)?;
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        auth_rejection_time: std::time::Duration::from_millis(50),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        inactivity_timeout: Some(std::time::Duration::from_secs(600)),
        // As OpenSSH's sshd does for interactive and forwarded traffic.
        nodelay: true,
        ..Default::default()
    });
    let mut server = Server { machine: Arc::new(machine) };
    let task = tokio::spawn(async move {
        let _ = server.run_on_socket(config, &listener).await;
    });
    Ok((port, task))
}

#[derive(Clone)]
struct Server {
    machine: Arc<Machine>,
}

impl russh::server::Server for Server {
    type Handler = Connection;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Connection {
        Connection { machine: self.machine.clone(), stdins: Default::default(), running: Default::default() }
    }
}

struct Connection {
    machine: Arc<Machine>,
    /// Each running command's standard input, until the client sends EOF.
    stdins: std::collections::HashMap<ChannelId, tokio::process::ChildStdin>,
    /// Each running command, killed when its channel closes first (a `tail -f` interrupted).
    running: std::collections::HashMap<ChannelId, tokio::task::AbortHandle>,
}

impl Connection {
    fn authorized(&self, user: &str, key: &PublicKey) -> bool {
        let now = std::time::Instant::now();
        if !self.machine.users.iter().any(|u| u == user) || now < self.machine.keys_accepted_after {
            return false;
        }
        authorized_keys(&self.machine.home)
            .iter()
            .filter_map(|line| PublicKey::from_openssh(line).ok())
            .any(|k| k.key_data() == key.key_data())
    }

    /// `nvidia-smi` as the host really is: the banner, or the fields a
    /// `--query-gpu=` asks for, one line per GPU.
    fn nvidia_smi(&self, command: &str) -> (String, u32) {
        let m = &self.machine;
        if m.driver_missing {
            return ("".into(), 127);
        }
        if m.driver_works_from.is_some_and(|from| std::time::Instant::now() < from) {
            // What nvidia-smi prints, exit code 9, while no driver module is loaded.
            return (DRIVER_NOT_LOADED.into(), 9);
        }
        let util = m.gpu_utilization.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(fields) = command.split("--query-gpu=").nth(1).and_then(|rest| rest.split_whitespace().next()) {
            let line: Vec<String> = fields
                .split(',')
                .map(|field| match field.trim() {
                    "name" => format!("NVIDIA {}", m.gpu_name),
                    "memory.total" => m.vram_mib.to_string(),
                    "driver_version" => m.driver.clone(),
                    "utilization.gpu" => util.to_string(),
                    "count" => m.gpu_count.to_string(),
                    _ => "[N/A]".to_string(),
                })
                .collect();
            return ((0..m.gpu_count).map(|_| format!("{}\n", line.join(", "))).collect(), 0);
        }
        let mut out = format!(
            "+-----------------------------------------------------------------------------------------+\n\
             | NVIDIA-SMI {}              Driver Version: {}      CUDA Version: {}     |\n\
             |-----------------------------------------+------------------------+----------------------+\n",
            m.driver, m.driver, m.cuda
        );
        for n in 0..m.gpu_count {
            out.push_str(&format!(
                "|   {n}  NVIDIA {}   On  |   {}MiB / {}MiB |    {util:>3}%      Default |\n",
                m.gpu_name, 1, m.vram_mib
            ));
        }
        (out, 0)
    }

    /// Runs `command` in `sh -c` on this computer as the machine's user: its output
    /// streams to the client as it comes (a `tail -f` works), its standard input
    /// is what the client sends until EOF, and it is killed if the channel closes first.
    fn run_streaming(&mut self, channel: ChannelId, command: &str, session: &mut Session) -> Result<(), russh::Error> {
        use tokio::io::AsyncReadExt;
        let spawned = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .envs(&self.machine.env)
            .env("HOME", &self.machine.home)
            .current_dir(&self.machine.home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                session.extended_data(channel, 1, format!("sh: {e}\n").into_bytes())?;
                session.exit_status_request(channel, 127)?;
                session.eof(channel)?;
                return session.close(channel);
            }
        };
        if let Some(stdin) = child.stdin.take() {
            self.stdins.insert(channel, stdin);
        }
        let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let handle = session.handle();
        let extra = self.machine.extra_output_bytes;
        let task = tokio::spawn(async move {
            let (mut out, mut err) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    read = stdout.read(&mut out), if out_open => match read {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => if handle.data(channel, bytes::Bytes::copy_from_slice(&out[..n])).await.is_err() { return },
                    },
                    read = stderr.read(&mut err), if err_open => match read {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => if handle.extended_data(channel, 1, bytes::Bytes::copy_from_slice(&err[..n])).await.is_err() { return },
                    },
                }
            }
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(255) as u32;
            finish_talking(&handle, channel, extra, code).await;
        });
        self.running.insert(channel, task.abort_handle());
        Ok(())
    }

    /// `cloud-init status` as cloud-init prints it; not found on a container.
    fn cloud_init_status(&self) -> (Vec<u8>, Vec<u8>, u32) {
        match self.machine.cloud_init_done_at {
            None => (Vec::new(), b"sh: 1: cloud-init: not found\n".to_vec(), 127),
            Some(done) if std::time::Instant::now() < done => (b"status: running\n".to_vec(), Vec::new(), 0),
            Some(_) => (b"status: done\n".to_vec(), Vec::new(), 0),
        }
    }

    /// Commands made only of `nvidia-smi` calls joined by `&&` or `;` are
    /// answered here (the host has no GPU); anything else runs in `sh -c`.
    fn only_nvidia_smi(command: &str) -> Option<Vec<String>> {
        let segments: Vec<String> = command
            .split("&&")
            .flat_map(|s| s.split(';'))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        segments.iter().all(|s| s.starts_with("nvidia-smi")).then_some(segments)
    }
}

/// A machine that will not stop talking: `extra` more bytes after the command's own
/// output (sent with the channel's flow control), then the exit status and the close.
async fn finish_talking(handle: &russh::server::Handle, channel: ChannelId, extra: u64, code: u32) {
    let chunk = bytes::Bytes::from(vec![b'y'; 32 * 1024]);
    let mut sent = 0u64;
    while sent < extra {
        if handle.data(channel, chunk.clone()).await.is_err() {
            return; // the client went away
        }
        sent += chunk.len() as u64;
    }
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        // A rebooting VM drops the connection (sshd is down).
        let now = std::time::Instant::now();
        if self.machine.rebooting.is_some_and(|(from, to)| from <= now && now < to) {
            return Err(russh::Error::Disconnect);
        }
        if !self.authorized(user, key.public_key) {
            return Ok(Auth::reject());
        }
        self.machine.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        use tokio::io::AsyncWriteExt;
        if let Some(stdin) = self.stdins.get_mut(&channel)
            && stdin.write_all(data).await.is_err()
        {
            self.stdins.remove(&channel);
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.stdins.remove(&channel); // closes the command's standard input
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.stdins.remove(&channel);
        if let Some(task) = self.running.remove(&channel) {
            task.abort(); // the command is killed with it (kill_on_drop)
        }
        Ok(())
    }

    /// Port forwarding ("direct-tcpip") to the machine's own loopback only, as `sshd`
    /// with `PermitOpen localhost:*` would allow; anything else is refused.
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let loopback = matches!(host_to_connect, "127.0.0.1" | "localhost" | "::1");
        let real = u16::try_from(port_to_connect).ok().and_then(|port| self.machine.loopback_ports.get(&port)).copied();
        let (true, Some(real)) = (loopback, real) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", real)).await else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).to_string();
        session.channel_success(channel)?;
        let (stdout, stderr, code) = if command.trim() == "cloud-init status" {
            self.cloud_init_status()
        } else if let Some(segments) = Self::only_nvidia_smi(&command) {
            let (mut out, mut code) = (String::new(), 0);
            for segment in segments {
                let (text, status) = self.nvidia_smi(&segment);
                out.push_str(&text);
                code = status;
                if status != 0 {
                    break;
                }
            }
            let err = if code == 127 { b"sh: 1: nvidia-smi: not found\n".to_vec() } else { Vec::new() };
            (out.into_bytes(), err, code)
        } else {
            return self.run_streaming(channel, &command, session);
        };
        if self.machine.extra_output_bytes > 0 {
            // Streamed with flow control from a task, so neither side needs it all in memory.
            let handle = session.handle();
            let extra = self.machine.extra_output_bytes;
            tokio::spawn(async move {
                let _ = handle.data(channel, bytes::Bytes::from(stdout)).await;
                finish_talking(&handle, channel, extra, code).await;
            });
            return Ok(());
        }
        if !stdout.is_empty() {
            session.data(channel, stdout)?;
        }
        if !stderr.is_empty() {
            session.extended_data(channel, 1, stderr)?;
        }
        session.exit_status_request(channel, code)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

//! How the gateway is told what to serve, and how it fails to start.

use std::net::SocketAddr;

/// How to run: the session to follow (or a fixed machine), where to listen.
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// The GpuSession to serve (with its namespace); the cluster is found through KUBECONFIG or the in-cluster account.
    #[arg(long, env = "GATEWAY_SESSION", required_unless_present = "ssh")]
    pub session: Option<String>,
    #[arg(long, env = "GATEWAY_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The Secret and key that hold the API key clients must send.
    #[arg(long, env = "GATEWAY_API_KEY_SECRET")]
    pub api_key_secret: Option<String>,
    #[arg(long, env = "GATEWAY_API_KEY_FIELD", default_value = crate::crd::session::API_KEY_FIELD)]
    pub api_key_field: String,
    /// The Lease this gateway renews, so the operator can tell it answers.
    #[arg(long, env = "GATEWAY_LEASE")]
    pub lease: Option<String>,
    /// This replica's name (the pod's), in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "gateway")]
    pub pod_name: String,
    /// The model's port on the machine's loopback.
    #[arg(long, env = "GATEWAY_MODEL_PORT", default_value_t = crate::crd::session::DEFAULT_INFERENCE_PORT)]
    pub model_port: u16,
    /// Where clients, health checks and Prometheus call.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// A fixed machine instead of a session (`user@host:port`), for a run outside the cluster.
    #[arg(long, requires_all = ["host_key", "ssh_key_file", "api_key_file"])]
    pub ssh: Option<String>,
    /// The machine's host key fingerprint (SHA256:...), with --ssh.
    #[arg(long)]
    pub host_key: Option<String>,
    /// The private key file that logs in, with --ssh.
    #[arg(long)]
    pub ssh_key_file: Option<std::path::PathBuf>,
    /// A file holding the API key clients must send, with --ssh.
    #[arg(long)]
    pub api_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot reach the cluster: {0}")]
    Cluster(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
}

//! A TCP forwarder to the API server that a test can cut: the process behind
//! it loses the API server (as in a network partition) while everyone else
//! keeps it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct CuttableProxy {
    pub kubeconfig: PathBuf,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl CuttableProxy {
    /// Forwards a loopback port to the test API server; `kubeconfig` points at it.
    pub async fn start(name: &str) -> Self {
        let text = std::fs::read_to_string(super::kubeconfig_path()).unwrap();
        let mut config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap().to_string();
        let upstream = server.trim_start_matches("https://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The serving certificate names 127.0.0.1, whatever the port.
        config["clusters"][0]["cluster"]["server"] = serde_json::Value::String(format!("https://127.0.0.1:{port}"));
        let kubeconfig = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-proxy-{name}"));
        std::fs::write(&kubeconfig, serde_json::to_string(&config).unwrap()).unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let connections = tasks.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(task);
            }
        });
        CuttableProxy { kubeconfig, tasks, acceptor }
    }

    /// Drops every connection and accepts no more: the API server is unreachable through it.
    pub fn cut(&self) {
        self.acceptor.abort();
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

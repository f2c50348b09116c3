//! A TCP forwarder to the API server that a test can cut (the process behind
//! it loses the API server, as in a network partition, while everyone else
//! keeps it) or slow down (every answer arrives late, as from an API server
//! saturated by thousands of objects).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct CuttableProxy {
    pub kubeconfig: PathBuf,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
    /// Added before each answer the API server sends back, in milliseconds.
    latency_ms: Arc<AtomicU64>,
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
        let latency_ms: Arc<AtomicU64> = Arc::default();
        let latency = latency_ms.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, latency) = (upstream.clone(), latency.clone());
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&upstream).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        let requests = tokio::io::copy(&mut from_client, &mut to_server);
                        let answers = async {
                            let mut chunk = vec![0u8; 64 * 1024];
                            let mut last = std::time::Instant::now();
                            while let Ok(read @ 1..) = from_server.read(&mut chunk).await {
                                // Once per answer: the rest of an answer follows its first chunk closely.
                                let delay = latency.load(Ordering::Relaxed);
                                if delay > 0 && last.elapsed() > Duration::from_millis(50) {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                last = std::time::Instant::now();
                                if to_client.write_all(&chunk[..read]).await.is_err() {
                                    break;
                                }
                            }
                        };
                        tokio::select! { _ = requests => {}, _ = answers => {} }
                    }
                });
                connections.lock().unwrap().push(task);
            }
        });
        CuttableProxy { kubeconfig, tasks, acceptor, latency_ms }
    }

    /// Delays every answer the API server sends back by `latency` from now on.
    pub fn slow_down(&self, latency: Duration) {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
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

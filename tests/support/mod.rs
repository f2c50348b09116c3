//! Shared helpers for the integration tests that run against the real
//! kube-apiserver started by `tests/control-plane/start.sh`.
#![allow(dead_code)] // each test binary uses a different subset

pub mod proxy;
pub mod s3;
pub mod sessions;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Why a test is `#[ignore]`d under plain `cargo test`.
pub const NEEDS_CONTROL_PLANE: &str = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`";

/// The kubeconfig of the test control plane: $GPU_SHOPPER_TEST_KUBECONFIG, or
/// the default place start.sh writes it. Deliberately not $KUBECONFIG, so a
/// test never touches a real cluster by accident.
pub fn kubeconfig_path() -> PathBuf {
    if let Ok(path) = std::env::var("GPU_SHOPPER_TEST_KUBECONFIG") {
        return PathBuf::from(path);
    }
    let state = std::env::var("GPU_SHOPPER_CONTROL_PLANE_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        std::env::var("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/tmp"))
            .join("gpu-shopper-control-plane")
    });
    state.join("kubeconfig")
}

pub async fn client() -> Client {
    client_from(&kubeconfig_path()).await
}

pub async fn client_from(path: &std::path::Path) -> Client {
    Client::try_from(config_from(path).await).expect("client")
}

/// The test control plane's client configuration.
pub async fn config_from(path: &std::path::Path) -> Config {
    let path = path.to_path_buf();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!("no test control plane kubeconfig at {} ({e}). {NEEDS_CONTROL_PLANE}", path.display())
    });
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig")
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs the checked-in CRDs by server-side apply and waits until they are served.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/gpushopper.dev.yaml")).unwrap();
    let documents: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text).unwrap();
    for crd in documents {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("gpu-shopper-tests").force(), &Patch::Apply(&crd)).await.unwrap();
        wait_for(&format!("CRD {name} Established"), Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established =
                    crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }
}

/// A fresh namespace per test, so tests run in parallel without seeing each other.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", rand::random::<u32>());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    name
}

/// Deletes a test namespace. Objects still holding our finalizer are released
/// first (their controller is gone by then), so the namespace can go.
pub async fn delete_namespace(client: &Client, name: &str) {
    let sessions: Api<gpu_shopper::crd::GpuSession> = Api::namespaced(client.clone(), name);
    if let Ok(list) = sessions.list(&Default::default()).await {
        for session in list {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ =
                sessions.patch(&session.metadata.name.unwrap(), &PatchParams::default(), &Patch::Merge(&patch)).await;
        }
    }
    let _ = Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The operator binary, run as a separate process the way it runs in a cluster.
pub struct ControllerProcess {
    child: Option<Child>,
    pub http_port: u16,
    pub log_path: PathBuf,
    namespace: String,
    extra_env: Vec<(String, String)>,
}

impl ControllerProcess {
    /// Starts `gpu-shopper controller` watching only `namespace`.
    pub fn start(namespace: &str) -> Self {
        Self::start_with_env(namespace, &[])
    }

    pub fn start_with_env(namespace: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with_env_named(namespace, "controller", extra_env)
    }

    /// Like `start_with_env`, with its own log file named after `replica`.
    pub fn start_with_env_named(namespace: &str, replica: &str, extra_env: &[(&str, &str)]) -> Self {
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("controller-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut process = ControllerProcess {
            child: None,
            http_port: 0,
            log_path: log_dir.join(format!("{namespace}-{replica}.log")),
            namespace: namespace.to_string(),
            extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        self.http_port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        // GPU_SHOPPER_CONTROLLER_BIN: another build of the operator (the bench's heap-profiled one).
        let binary = std::env::var("GPU_SHOPPER_CONTROLLER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_gpu-shopper").to_string());
        let mut command = Command::new(binary);
        command
            .arg("controller")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig_path())
            // One deployment per test namespace: a sweeper never sees another test's instances as its own.
            .env("DEPLOYMENT_ID", &self.namespace)
            .env("WATCH_NAMESPACE", &self.namespace)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("LOG_LEVEL", "info,gpu_shopper=debug")
            .env("LOG_FORMAT", "json")
            // Short leases: a restarted controller waits for its old lease to expire.
            .env("LEASE_DURATION", "3s")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("spawn gpu-shopper controller"));
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        wait_for("controller /readyz", Duration::from_secs(30), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
    }

    /// SIGKILL, as a crash or an OOM kill would do: no graceful shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status if it did.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGTERM, as the kubelet sends on a rollout or a drain.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the named signal (TERM, USR1, ...) to the running process.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
        }
    }

    /// The operating-system pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// kubectl as the control plane's start.sh built it (its bin dir is recorded beside the kubeconfig).
pub fn kubectl_path() -> PathBuf {
    let bin =
        std::fs::read_to_string(kubeconfig_path().with_file_name("bin.path")).expect("start.sh records its bin dir");
    PathBuf::from(bin.trim()).join("kubectl")
}

/// A kubeconfig (see `token_kubeconfig`) with a fresh token of ServiceAccount `account` in
/// `namespace`: a process run with it has exactly that account's RBAC.
pub async fn service_account_kubeconfig(client: &Client, namespace: &str, account: &str, name: &str) -> PathBuf {
    let token = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(
            account,
            &PostParams::default(),
            &k8s_openapi::api::authentication::v1::TokenRequest::default(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    token_kubeconfig(&token, namespace, name).await
}

/// A kubeconfig for the test API server that authenticates with `token` (a
/// ServiceAccount's, from a TokenRequest), so a process run with it has exactly
/// that account's RBAC. Written under the target's temp dir as `<name>.kubeconfig`.
pub async fn token_kubeconfig(token: &str, namespace: &str, name: &str) -> PathBuf {
    let admin = config_from(&kubeconfig_path()).await;
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let admin_file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": "test", "cluster": {
            "server": admin.cluster_url.to_string(),
            "certificate-authority-data": admin_file["clusters"][0]["cluster"]["certificate-authority-data"],
        }}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": namespace}}],
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubeconfigs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

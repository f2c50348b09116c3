//! A real S3-compatible object store for the tests and the demo: s3s-fs (the
//! s3s project's file-system backed server, built from crates.io by
//! tests/s3/build.sh), one per test, on a loopback port, over a fresh folder.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";

pub struct ObjectStore {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store binary: $GPU_SHOPPER_S3_SERVER (set by tests/run.sh), else built now.
fn binary() -> String {
    if let Ok(path) = std::env::var("GPU_SHOPPER_S3_SERVER") {
        return path;
    }
    let out =
        Command::new(format!("{}/tests/s3/build.sh", env!("CARGO_MANIFEST_DIR"))).output().expect("tests/s3/build.sh");
    assert!(out.status.success(), "building the object store failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl ObjectStore {
    /// Starts a store holding `buckets` (each an empty folder, as s3s-fs keeps them).
    pub async fn start(buckets: &[&str]) -> ObjectStore {
        let root = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        }
        let port = free_port();
        let child = Command::new(binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let endpoint = format!("http://127.0.0.1:{port}");
        let probe = endpoint.clone();
        wait_for("the object store to listen", Duration::from_secs(20), || {
            let probe = probe.clone();
            async move { tokio::net::TcpStream::connect(probe.trim_start_matches("http://")).await.ok().map(|_| ()) }
        })
        .await;
        ObjectStore { child, endpoint, root }
    }

    /// The bytes of an object, read from the store's folder (not through the store).
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(bucket).join(key)).ok()
    }

    /// Puts an object by writing its file (s3s-fs serves the folder as the bucket).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.root.path().join(bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

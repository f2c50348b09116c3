//! The OCI image, built without a container engine (scripts/image.sh: crane from
//! the Go module proxy, the C runtime from pinned Debian packages), pushed to a
//! registry on loopback: same binary, same digest; the entrypoint, command and
//! user the chart expects; and what it holds runs on its own, in a root of
//! nothing but the image.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tools() -> PathBuf {
    let out = Command::new(format!("{ROOT}/tests/oci/build.sh")).output().expect("tests/oci/build.sh runs");
    assert!(out.status.success(), "building crane: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn sh(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs Go and the Debian archive: run `make test`"]
fn the_image_is_reproducible_runs_as_non_root_and_holds_everything_it_needs() {
    let tools = tools();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _registry = Registry(
        Command::new(tools.join("registry"))
            .args(["-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let build = |tag: &str| {
        let reference = format!("127.0.0.1:{port}/gpu-shopper:{tag}");
        let printed = sh(Command::new(format!("{ROOT}/scripts/image.sh"))
            .arg(&reference)
            .env("BINARY", env!("CARGO_BIN_EXE_gpu-shopper")));
        let digest = printed.trim().rsplit_once('@').map(|(_, d)| d.to_string()).unwrap();
        (reference, digest)
    };
    let (first, digest) = build("a");
    let (_, again) = build("b");
    assert_eq!(digest, again, "the same binary gives the same image");
    assert!(digest.starts_with("sha256:"));

    let crane = tools.join("crane");
    let config: serde_json::Value = serde_json::from_str(&sh(Command::new(&crane).args(["config", &first]))).unwrap();
    let image = &config["config"];
    assert_eq!(image["Entrypoint"], serde_json::json!(["/usr/local/bin/gpu-shopper"]));
    assert_eq!(image["Cmd"], serde_json::json!(["controller"]), "the chart's args: [\"controller\"]");
    assert_eq!(image["User"], "65532:65532", "the chart runs it as 65532");
    assert_eq!(config["os"], "linux");
    let manifest: serde_json::Value =
        serde_json::from_str(&sh(Command::new(&crane).args(["manifest", &first]))).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);

    // Unpacked alone, as the root of a process: the binary finds its C runtime in the image.
    let rootfs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("image-root-{port}"));
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs).unwrap();
    let tar = rootfs.with_extension("tar");
    sh(Command::new(&crane).args(["export", &first, tar.to_str().unwrap()]));
    sh(Command::new("tar").args(["-xf", tar.to_str().unwrap(), "-C", rootfs.to_str().unwrap()]));
    let version = sh(Command::new("unshare").args([
        "--map-root-user",
        "--root",
        rootfs.to_str().unwrap(),
        "/usr/local/bin/gpu-shopper",
        "--version",
    ]));
    assert_eq!(version.trim(), format!("gpu-shopper {}", env!("CARGO_PKG_VERSION")));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");
}

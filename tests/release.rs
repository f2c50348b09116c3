//! `make release`: every artifact from one command, the same bytes twice, and an
//! installation from them alone: the image and the chart pushed to a registry on
//! loopback, the chart installed from there into the real API server.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn release(dist: &Path) -> PathBuf {
    let printed = sh(Command::new(format!("{ROOT}/scripts/release.sh"))
        .arg(VERSION)
        .env("DIST", dist)
        .env("BINARY", env!("CARGO_BIN_EXE_gpu-shopper")));
    PathBuf::from(printed.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go, Helm, the Debian archive and a real API server: run `make test`"]
async fn a_release_is_the_same_bytes_twice_and_installs_from_a_registry_alone() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("release");
    let _ = std::fs::remove_dir_all(&tmp);
    let first = release(&tmp.join("a"));
    let second = release(&tmp.join("b"));
    let sums = std::fs::read_to_string(first.join("SHA256SUMS")).unwrap();
    assert_eq!(sums, std::fs::read_to_string(second.join("SHA256SUMS")).unwrap(), "reproducible");
    for artifact in [
        format!("gpu-shopper-{VERSION}-linux-amd64.tar.gz"),
        format!("gpu-shopper-image-{VERSION}.oci.tar"),
        format!("gpu-shopper-{VERSION}.tgz"),
        "gpu-shopper.krew.yaml".to_string(),
        "RELEASE_NOTES.md".to_string(),
    ] {
        assert!(sums.contains(&format!("  {artifact}\n")), "{artifact} not in SHA256SUMS:\n{sums}");
    }
    sh(Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&first));
    // The krew manifest names the archive's own sum; the notes are this version's.
    let archive_sum = sums.lines().find(|l| l.ends_with("-linux-amd64.tar.gz")).unwrap().split(' ').next().unwrap();
    let krew = std::fs::read_to_string(first.join("gpu-shopper.krew.yaml")).unwrap();
    assert!(krew.contains(&format!("sha256: {archive_sum}")) && krew.contains("bin: kubectl-gpu_shopper"), "{krew}");
    let notes = std::fs::read_to_string(first.join("RELEASE_NOTES.md")).unwrap();
    assert!(notes.contains("Image digest: sha256:") && notes.contains("### Added"), "{notes}");

    // A registry on loopback receives the image and the chart, as a user's own would.
    let oci = PathBuf::from(sh(&mut Command::new(format!("{ROOT}/tests/oci/build.sh"))).trim());
    let port = free_port();
    let _registry = Registry(
        Command::new(oci.join("registry"))
            .args(["-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let layout = tmp.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let image_tar = first.join(format!("gpu-shopper-image-{VERSION}.oci.tar"));
    sh(Command::new("tar").arg("-xf").arg(&image_tar).arg("-C").arg(&layout));
    let repository = format!("127.0.0.1:{port}/platform/gpu-shopper");
    sh(Command::new(oci.join("crane")).arg("push").arg(&layout).arg(format!("{repository}:{VERSION}")));
    let digest = sh(Command::new(oci.join("crane")).args(["digest", &format!("{repository}:{VERSION}")]));
    assert!(notes.contains(digest.trim()), "the pushed image is the one the notes name");

    let helm = std::env::var("GPU_SHOPPER_HELM").expect("GPU_SHOPPER_HELM: run `make test`");
    let chart = first.join(format!("gpu-shopper-{VERSION}.tgz"));
    sh(Command::new(&helm).arg("push").arg(&chart).arg(format!("oci://127.0.0.1:{port}/charts")).arg("--plain-http"));
    let client = client().await;
    let ns = namespace(&client, "release").await;
    sh(Command::new(&helm).args([
        "install",
        &ns,
        &format!("oci://127.0.0.1:{port}/charts/gpu-shopper"),
        "--version",
        VERSION,
        "--plain-http",
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig_path().to_str().unwrap(),
        "--set",
        &format!("deploymentId={ns}"),
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.digest={}", digest.trim()),
        "--set",
        "crds.install=false",
        "--set",
        "uninstallGuard.enabled=false",
        "--set",
        &format!("watchNamespaces={{{ns}}}"),
    ]));
    let deployment =
        Api::<Deployment>::namespaced(client.clone(), &ns).get(&format!("{ns}-gpu-shopper")).await.unwrap();
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap();
    assert_eq!(image, format!("{repository}@{}", digest.trim()), "the operator runs the pushed image by digest");
    sh(Command::new(&helm).args([
        "uninstall",
        &ns,
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig_path().to_str().unwrap(),
    ]));
    delete_namespace(&client, &ns).await;
}

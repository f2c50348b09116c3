//! The user commands: `offers` against the simulated marketplaces, and
//! `status`, `ssh` and `cost` against a session the operator runs on the real
//! API server.

mod support;

use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use gpu_shopper::crd::conditions::{find, types};
use gpu_shopper::crd::{GpuSession, ProviderName};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::Faults;
use gpu_shopper::simulator::{self, SimulatorHandle};
use support::*;

fn gpu_shopper(env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-shopper"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", env!("CARGO_TARGET_TMPDIR"));
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

fn output(command: &mut Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn fast_sim() -> SimulatorHandle {
    let mut market = Market::builtin();
    market.timings.created_ms = 50;
    market.timings.loading_ms = 100;
    simulator::start(market, 0).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_lists_the_ranked_market_as_a_table_or_json() {
    let sim = fast_sim().await;
    let env = sim.env();
    let (code, stdout, stderr) = output(gpu_shopper(&env).args(["offers", "--gpu", "RTX 4090", "--max-price", "0.5"]));
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("#  PROVIDER"), "{stdout}");
    assert!(lines[1].contains("vastai") && lines[1].contains("0.290"), "cheapest first: {stdout}");
    assert!(stdout.contains("4 matching offers"), "{stdout}");

    let (code, stdout, _) =
        output(gpu_shopper(&env).args(["offers", "--min-vram", "80", "--provider", "runpod", "--json"]));
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let offers = parsed["offers"].as_array().unwrap();
    assert!(!offers.is_empty() && offers.iter().all(|o| o["provider"] == "runpod" && o["vramGb"].as_u64() >= Some(80)));

    let (code, _, stderr) = output(gpu_shopper(&[]).args(["offers"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("no marketplace credentials: set VASTAI_API_KEY"), "{stderr}");
    let (code, _, stderr) = output(gpu_shopper(&env).args(["offers", "--provider", "aws"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown marketplace \"aws\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn status_ssh_and_cost_describe_a_running_session() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "cli").await;
    let sim = fast_sim().await;
    let sim_env = sim.env();
    let env_refs: Vec<(&str, &str)> = sim_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = ControllerProcess::start_with_env(&ns, &env_refs);
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let session: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "box"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]}, "consumer": "team-vision"},
    }))
    .unwrap();
    sessions.create(&PostParams::default(), &session).await.unwrap();
    let orphaned_ref: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "lost"},
        "spec": {"offerFilterRef": {"name": "nope"}},
    }))
    .unwrap();
    sessions.create(&PostParams::default(), &orphaned_ref).await.unwrap();
    wait_for("box Ready", Duration::from_secs(60), || async {
        let s = sessions.get("box").await.ok()?;
        find(&s.status.as_ref()?.conditions, types::READY).is_some_and(|c| c.status == "True").then_some(())
    })
    .await;
    wait_for("lost to explain itself", Duration::from_secs(30), || async {
        (sessions.get("lost").await.ok()?.status?.reason.as_deref() == Some("OfferFilterNotFound")).then_some(())
    })
    .await;

    let kube_env = vec![("KUBECONFIG", kubeconfig_path().display().to_string())];
    let (code, stdout, stderr) = output(gpu_shopper(&kube_env).args(["status", "box", "-n", &ns]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Running (Ready)"), "{stdout}");
    let cuda_row = stdout.lines().find(|l| l.starts_with("CUDAVerified")).unwrap_or_default();
    assert_eq!(cuda_row.split_whitespace().nth(1), Some("True"), "{stdout}");
    assert!(stdout.contains("verified: 1x NVIDIA RTX 4090, driver 550.54.15, CUDA 12.8"), "{stdout}");

    // The same binary as a kubectl plugin.
    let plugin_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubectl-plugin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let link = plugin_dir.join("kubectl-gpu");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gpu-shopper"), &link).unwrap();
    let bin_dir = std::fs::read_to_string(kubeconfig_path().with_file_name("bin.path")).unwrap();
    let kubectl = format!("{}/kubectl", bin_dir.trim());
    let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (code, stdout, stderr) = output(
        Command::new(kubectl)
            .args(["gpu", "status", "box", "-n", &ns])
            .env("PATH", path)
            .env("KUBECONFIG", kubeconfig_path()),
    );
    assert_eq!(code, 0, "kubectl gpu: {stderr}");
    assert!(stdout.contains("Running (Ready)"), "{stdout}");

    let (_, stdout, _) = output(gpu_shopper(&kube_env).args(["status", "lost", "-n", &ns]));
    assert!(stdout.contains("next: create the GpuOfferFilter"), "{stdout}");
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["status", "missing", "-n", &ns]));
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");

    // ssh with the Secret's key and the pinned host key, through the real OpenSSH client.
    let (code, stdout, stderr) = output(gpu_shopper(&kube_env).args(["ssh", "box", "-n", &ns, "--", "nvidia-smi"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("CUDA Version: 12.8"), "{stdout}");
    let (code, stdout, _) = output(gpu_shopper(&kube_env).args(["ssh", "box", "-n", &ns, "--print"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ssh -i ") && stdout.contains("StrictHostKeyChecking=yes"), "{stdout}");

    let (code, stdout, _) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns, "--json"]));
    assert_eq!(code, 0);
    let cost: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(cost["consumers"]["team-vision"].as_f64().is_some(), "{stdout}");
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns, "--since", "yesterday"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a date"), "{stderr}");

    sessions.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    wait_for("sessions gone", Duration::from_secs(60), || async {
        sessions.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(sim.instances().iter().all(|i| i.destroyed));
    drop(controller);
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_every_marketplace_read_only_and_names_the_one_that_refuses_the_key() {
    let sim = fast_sim().await;
    let env = sim.env();
    let (code, stdout, stderr) = output(gpu_shopper(&env).args(["doctor"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    for name in ["vastai", "tensordock", "runpod"] {
        let row = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} row: {stdout}"));
        assert!(row.trim_end().ends_with("ok"), "{row}");
    }
    assert!(stdout.contains("90 calls per 60s"), "TensorDock's pacing is shown: {stdout}");
    assert!(sim.instances().is_empty(), "doctor rents nothing");

    sim.set_faults(ProviderName::Runpod, Faults { auth_failure: true, ..Default::default() });
    let (code, stdout, stderr) = output(gpu_shopper(&env).args(["doctor", "--json"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    let key = &sim.sim.world().market.keys.runpod.clone();
    assert!(!stderr.contains(key.as_str()), "the key never shows");
    let json_start = stderr.find('{').unwrap();
    let report: serde_json::Value = serde_json::from_str(&stderr[json_start..]).unwrap();
    let runpod = report["marketplaces"].as_array().unwrap().iter().find(|m| m["provider"] == "runpod").unwrap();
    assert_eq!(runpod["ok"], false);
    assert!(runpod["searchError"].as_str().unwrap().contains("authentication failed"), "{runpod}");
    let vast = report["marketplaces"].as_array().unwrap().iter().find(|m| m["provider"] == "vastai").unwrap();
    assert_eq!(vast["ok"], true);
}

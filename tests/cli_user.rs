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

    // kubectl's --as: the request is made as that user, whom nothing allows to read sessions.
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["status", "box", "-n", &ns, "--as", "mallory"]));
    assert_ne!(code, 0);
    assert!(stderr.contains("mallory") && stderr.contains("forbidden"), "{stderr}");
    let (code, _, stderr) =
        output(gpu_shopper(&kube_env).args(["status", "box", "-n", &ns, "--request-timeout", "20s"]));
    assert_eq!(code, 0, "{stderr}");

    // The same binary as a kubectl plugin.
    let plugin_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubectl-plugin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let link = plugin_dir.join("kubectl-gpu_shopper");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gpu-shopper"), &link).unwrap();
    let kubectl = kubectl_path();
    let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (code, stdout, stderr) = output(
        Command::new(&kubectl)
            .args(["gpu-shopper", "status", "box", "-n", &ns, "-o", "yaml"])
            .env("PATH", &path)
            .env("KUBECONFIG", kubeconfig_path()),
    );
    assert_eq!(code, 0, "kubectl gpu-shopper: {stderr}");
    let as_yaml: serde_json::Value = serde_saphyr::from_str(&stdout).unwrap();
    assert_eq!(as_yaml["status"]["phase"], "Running", "{stdout}");
    let (_, help, _) = output(Command::new(&link).arg("--help"));
    assert!(help.contains("Usage: kubectl gpu-shopper"), "help names the plugin as kubectl runs it: {help}");
    // A user's commands are listed; the operator's are named apart, not mixed in.
    let commands = help.split("Options:").next().unwrap();
    assert!(commands.contains("  status") && commands.contains("  logs"), "{help}");
    assert!(!commands.contains("  controller ") && !commands.contains("  uninstall-guard"), "{help}");
    assert!(help.contains("Operator commands"), "{help}");
    // kubectl completes the plugin's words through kubectl_complete-gpu_shopper: commands, then sessions.
    let completer = plugin_dir.join("kubectl_complete-gpu_shopper");
    let _ = std::fs::remove_file(&completer);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gpu-shopper"), &completer).unwrap();
    let complete = |words: &[&str]| {
        let (code, stdout, stderr) = output(
            Command::new(&kubectl)
                .arg("__complete")
                .arg("gpu-shopper")
                .args(words)
                .env("PATH", &path)
                .env("KUBECONFIG", kubeconfig_path()),
        );
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let commands = complete(&["st"]);
    assert!(commands.lines().any(|l| l == "status"), "{commands}");
    assert!(!complete(&["con"]).lines().any(|l| l == "controller"), "operator commands are not offered");
    let names = complete(&["status", "-n", &ns, ""]);
    assert!(names.lines().any(|l| l == "box") && names.lines().any(|l| l == "lost"), "{names}");
    assert!(names.lines().last().unwrap().starts_with(":4"), "no file names: {names}");

    // kubectl's connection flags instead of the environment; a context that does not exist is named.
    let kubeconfig_flag = kubeconfig_path().display().to_string();
    let (code, stdout, stderr) =
        output(gpu_shopper(&[]).args(["status", "box", "-n", &ns, "--kubeconfig", &kubeconfig_flag, "-o", "json"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["metadata"]["name"], "box");
    let (code, _, stderr) = output(gpu_shopper(&[]).args([
        "status",
        "box",
        "-n",
        &ns,
        "--kubeconfig",
        &kubeconfig_flag,
        "--context",
        "nope",
    ]));
    assert_eq!(code, 1);
    assert!(stderr.contains("nope"), "{stderr}");

    // wait: Ready now; a session that cannot get there times out with exit 1 and says where it is.
    let (code, stdout, stderr) = output(gpu_shopper(&kube_env).args(["wait", "box", "-n", &ns, "--timeout", "30s"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Running"), "{stdout}");
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["wait", "lost", "-n", &ns, "--timeout", "3s"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("timed out after 3s") && stderr.contains("OfferFilterNotFound"), "{stderr}");

    let (_, stdout, _) = output(gpu_shopper(&kube_env).args(["status", "lost", "-n", &ns]));
    assert!(stdout.contains("next: create the GpuOfferFilter"), "{stdout}");
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["status", "missing", "-n", &ns]));
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");

    // ssh with the Secret's key and the pinned host key, through the real OpenSSH client.
    let (code, stdout, stderr) = output(gpu_shopper(&kube_env).args(["ssh", "box", "-n", &ns, "--", "nvidia-smi"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("CUDA Version: 12.8"), "{stdout}");
    // The cached key of a session that is gone is removed on the next run; this one's stays.
    let port = kubeconfig_path_port();
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(".cache/gpu-shopper/ssh")
        .join(format!("127.0.0.1_{port}"))
        .join(&ns);
    assert!(cache.join("box").exists(), "the key is cached per cluster and namespace");
    std::fs::write(cache.join("gone"), "old key").unwrap();
    std::fs::write(cache.join("gone.known_hosts"), "old host").unwrap();
    let (code, stdout, _) = output(gpu_shopper(&kube_env).args(["ssh", "box", "-n", &ns, "--print"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ssh -i ") && stdout.contains("StrictHostKeyChecking=yes"), "{stdout}");
    assert!(
        !cache.join("gone").exists() && !cache.join("gone.known_hosts").exists(),
        "a gone session's key is removed"
    );
    assert!(cache.join("box").exists());

    // offers --filter on a machine without marketplace keys: the filter's status is the market.
    let filters: Api<gpu_shopper::crd::GpuOfferFilter> = Api::namespaced(client.clone(), &ns);
    let filter: gpu_shopper::crd::GpuOfferFilter = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuOfferFilter", "metadata": {"name": "cheap"},
        "spec": {"requirements": {"gpuModels": ["RTX 4090"]}},
    }))
    .unwrap();
    filters.create(&PostParams::default(), &filter).await.unwrap();
    wait_for("the filter's market", Duration::from_secs(30), || async {
        filters.get("cheap").await.ok()?.status?.matching_offers.filter(|n| *n > 0)
    })
    .await;
    let (code, stdout, stderr) =
        output(gpu_shopper(&kube_env).args(["offers", "--filter", "cheap", "-n", &ns, "-o", "json"]));
    assert_eq!(code, 0, "{stderr}");
    let offers: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(offers["source"], "filter status", "{stdout}");
    assert!(offers["offers"].as_array().is_some_and(|o| !o.is_empty()), "{stdout}");
    let (code, stdout, _) = output(gpu_shopper(&kube_env).args(["offers", "--filter", "cheap", "-n", &ns]));
    assert_eq!(code, 0);
    assert!(stdout.contains("from the filter's status"), "{stdout}");

    let (code, stdout, _) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns, "--json"]));
    assert_eq!(code, 0);
    let cost: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(cost["consumers"]["team-vision"].as_f64().is_some(), "{stdout}");
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns, "--since", "yesterday"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a date"), "{stderr}");

    let live_cost = |cost: &serde_json::Value, name: &str| {
        let row = cost["sessions"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned();
        row.unwrap_or_else(|| panic!("no {name} in {cost}"))
    };
    let box_row = live_cost(&cost, "box");
    assert_eq!(box_row["source"], "status");
    let cost_while_running = box_row["costUsd"].as_f64().unwrap();

    sessions.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    wait_for("sessions gone", Duration::from_secs(60), || async {
        sessions.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(sim.instances().iter().all(|i| i.destroyed));

    // Deleted, the sessions' cost is still reported, from the Events their cleanup left.
    let (code, stdout, stderr) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns, "-o", "json"]));
    assert_eq!(code, 0, "{stderr}");
    let cost: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let box_row = live_cost(&cost, "box");
    assert_eq!((box_row["source"].as_str(), box_row["phase"].as_str()), (Some("event"), Some("Deleted")), "{stdout}");
    assert_eq!(box_row["provider"], "vastai", "{stdout}");
    let final_cost = box_row["costUsd"].as_f64().unwrap();
    assert!(final_cost >= cost_while_running && final_cost > 0.0, "{final_cost} after {cost_while_running}");
    assert_eq!(cost["consumers"]["team-vision"].as_f64(), Some(final_cost), "{stdout}");
    assert!(cost["history"].as_str().unwrap().contains("CleanupComplete Events"), "{stdout}");
    let (_, table, _) = output(gpu_shopper(&kube_env).args(["cost", "-n", &ns]));
    assert!(table.contains("--event-ttl"), "the table says where deleted sessions come from: {table}");
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
    let tensordock = stdout.lines().find(|l| l.starts_with("tensordock")).unwrap();
    assert!(tensordock.contains("of burst left"), "what the checks left of the budget: {tensordock}");
    assert!(sim.instances().is_empty(), "doctor rents nothing");

    sim.set_faults(ProviderName::Runpod, Faults { auth_failure: true, ..Default::default() });
    // Vast answers 429 once: the call is retried, and the headroom says which endpoint was slowed.
    sim.set_faults(ProviderName::Vastai, Faults { rate_limits: 1, retry_after_secs: 0, ..Default::default() });
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
    assert!(vast["headroom"]["rateLimited"].as_array().is_some_and(|r| !r.is_empty()), "{vast}");
}

/// The "$0.0012 at most" figure of a rent test's report.
fn reported_cost(report: &str) -> f64 {
    let line = report.lines().find(|l| l.starts_with("cost")).unwrap_or_else(|| panic!("a cost line: {report}"));
    let amount = line.split('$').nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    amount.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_rent_test_refuses_without_a_budget_and_rents_nothing_it_cannot_afford() {
    let sim = fast_sim().await;
    let env = sim.env();
    let (code, _, stderr) = output(gpu_shopper(&env).args(["doctor", "--rent-test"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-usd"), "the missing budget is named: {stderr}");
    // The cheapest machine costs $0.29/h: an hour of it does not fit in a cent.
    let (code, stdout, stderr) =
        output(gpu_shopper(&env).args(["doctor", "--rent-test", "--max-usd", "0.01", "--timeout", "1h"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("no on-demand offer costs at most $0.01"), "{stderr}");
    assert!(sim.instances().is_empty(), "nothing was rented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_rent_test_proves_a_machine_on_each_marketplace_then_leaves_nothing_billing() {
    let sim = fast_sim().await;
    let env = sim.env();
    // TensorDock's VMs come without a working driver unless the client repairs it.
    sim.set_faults(
        ProviderName::Tensordock,
        Faults { broken_drivers: true, driver_repair_ms: 3_000, ..Default::default() },
    );
    for provider in [ProviderName::Vastai, ProviderName::Tensordock, ProviderName::Runpod] {
        let (code, stdout, stderr) = output(gpu_shopper(&env).args([
            "doctor",
            "--rent-test",
            "--max-usd",
            "2",
            "--timeout",
            "2m",
            "--provider",
            provider.as_str(),
        ]));
        assert_eq!(code, 0, "{provider}: {stdout}{stderr}");
        assert!(stdout.contains("PASSED"), "{stdout}");
        let smi = stdout.lines().find(|l| l.starts_with("nvidia-smi")).unwrap_or_else(|| panic!("{stdout}"));
        assert!(smi.contains("CUDA") && smi.contains("host key unchanged"), "{smi}");
        assert!(!format!("{stdout}{stderr}").contains("PRIVATE KEY"), "the test key never shows");
        let rented: Vec<_> = sim.instances().into_iter().filter(|i| i.provider == provider).collect();
        assert_eq!(rented.len(), 1, "{provider}: one machine rented: {rented:?}");
        assert!(rented[0].destroyed, "{provider}: the machine is destroyed when the command returns");
        let reported = reported_cost(&stdout);
        assert!(
            reported + 1e-4 >= rented[0].cost_usd,
            "{provider}: reported ${reported}, billed ${}",
            rented[0].cost_usd
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_rent_test_destroys_a_machine_that_never_answers_and_one_whose_create_answer_was_lost() {
    let sim = fast_sim().await;
    let env = sim.env();
    let rent = |timeout: &str| {
        output(gpu_shopper(&env).args([
            "doctor",
            "--rent-test",
            "--max-usd",
            "1",
            "--timeout",
            timeout,
            "--provider",
            "vastai",
        ]))
    };
    sim.set_faults(ProviderName::Vastai, Faults { unreachable_instances: true, ..Default::default() });
    let (code, stdout, stderr) = rent("15s");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not proved within --timeout 15s"), "{stderr}");
    assert!(stderr.contains("nothing is left running"), "{stderr}");
    assert!(sim.instances().iter().all(|i| i.destroyed), "{:?}", sim.instances());

    // The create lands but its answer is lost: the label finds the machine, which is destroyed.
    sim.set_faults(ProviderName::Vastai, Faults { lose_create_responses: 1, ..Default::default() });
    let (code, stdout, stderr) = rent("2m");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(sim.instances().len(), 2, "{:?}", sim.instances());
    assert!(sim.instances().iter().all(|i| i.destroyed), "{:?}", sim.instances());
    assert!(stderr.contains("nothing is left running"), "{stderr}");
}

/// The test API server's port, from its kubeconfig.
fn kubeconfig_path_port() -> String {
    let text = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_string();
    server.rsplit(':').next().unwrap().to_string()
}

/// The status the operator would write, written by the test (no operator runs here).
fn status_patch(phase: &str, conditions: &[(&str, &str)]) -> kube::api::Patch<serde_json::Value> {
    let now = jiff::Timestamp::now().to_string();
    let conditions: Vec<_> = conditions
        .iter()
        .map(|(type_, status)| {
            json!({"type": type_, "status": status, "reason": "Test", "message": "", "lastTransitionTime": now})
        })
        .collect();
    kube::api::Patch::Merge(json!({"status": {"phase": phase, "conditions": conditions}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn wait_follows_the_session_through_a_watch_until_it_completes_or_is_deleted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "wait").await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    for name in ["job", "doomed"] {
        // The test's own finalizer holds "doomed" while it is deleted, as the operator's would.
        let session: GpuSession = serde_json::from_value(json!({
            "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession",
            "metadata": {"name": name, "finalizers": ["test.gpushopper.dev/hold"]},
            "spec": {"requirements": {"gpuModels": ["RTX 4090"]}},
        }))
        .unwrap();
        sessions.create(&PostParams::default(), &session).await.unwrap();
    }
    let kube_env = vec![("KUBECONFIG", kubeconfig_path().display().to_string())];
    let spawn_wait = |args: &[&str]| {
        gpu_shopper(&kube_env)
            .args(["wait", "-n", &ns, "--timeout", "60s"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let finished = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let params = kube::api::PatchParams::default();

    // Ready is not complete: the wait stays until the Job's Complete condition arrives.
    let mut waiting = spawn_wait(&["job", "--for", "complete"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sessions.patch_status("job", &params, &status_patch("Running", &[("Ready", "True")])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waiting.try_wait().unwrap().is_none(), "a running Job is not complete");
    let completed_at = std::time::Instant::now();
    sessions
        .patch_status("job", &params, &status_patch("Succeeded", &[("Ready", "False"), ("Complete", "True")]))
        .await
        .unwrap();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || finished(waiting)).await.unwrap();
    println!("wait returned {} ms after the session completed", completed_at.elapsed().as_millis());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("{ns}/job: Succeeded")), "{stdout}");

    // A session deleted while waited on ends the wait with exit 1, saying so (whether the
    // wait saw it before or only after the delete began).
    let waiting = spawn_wait(&["doomed"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sessions.delete("doomed", &Default::default()).await.unwrap();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || finished(waiting)).await.unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("{ns}/doomed is being deleted")), "{stderr}");
    let release = json!({"metadata": {"finalizers": null}});
    for name in ["job", "doomed"] {
        sessions.patch(name, &params, &kube::api::Patch::Merge(&release)).await.unwrap();
    }
    // Gone, it is named as gone.
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["wait", "doomed", "-n", &ns, "--timeout", "60s"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");

    // One that never existed is named at once, not waited for.
    let (code, _, stderr) = output(gpu_shopper(&kube_env).args(["wait", "never", "-n", &ns, "--timeout", "60s"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn doctor_cluster_checks_the_resources_the_leader_and_the_users_rights() {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "doctor").await;
    let mut controller = ControllerProcess::start(&ns);
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let waiting: GpuSession = serde_json::from_value(json!({
        "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": "waits"},
        "spec": {"offerFilterRef": {"name": "nope"}},
    }))
    .unwrap();
    sessions.create(&PostParams::default(), &waiting).await.unwrap();
    let kube_env = vec![("KUBECONFIG", kubeconfig_path().display().to_string())];
    let doctor = |extra: &[&str]| {
        let (code, stdout, stderr) = output(
            gpu_shopper(&kube_env)
                .args(["doctor", "--cluster", "-n", &ns, "--operator-namespace", &ns, "-o", "json"])
                .args(extra),
        );
        // A failed report is printed to stderr after "gpu-shopper: ".
        let report = if code == 0 { stdout } else { stderr.trim_start_matches("gpu-shopper: ").to_string() };
        let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|_| panic!("{report}"));
        (code, report)
    };
    let check = |report: &serde_json::Value, name: &str| -> (String, String) {
        let row = report["checks"].as_array().unwrap().iter().find(|r| r["check"] == name).cloned();
        let row = row.unwrap_or_else(|| panic!("no {name} row: {report}"));
        (row["outcome"].as_str().unwrap().to_string(), row["detail"].as_str().unwrap().to_string())
    };

    // The admin, with a leading operator that has seen the namespace's session.
    let (code, report) = wait_for("the operator to lead and observe", Duration::from_secs(30), || async {
        let (code, report) = doctor(&[]);
        (code == 0 && check(&report, &format!("sessions in {ns}")).1.contains("1 of 1 observed"))
            .then_some((code, report))
    })
    .await;
    assert_eq!(code, 0, "{report}");
    let (outcome, detail) = check(&report, "operator");
    assert_eq!(outcome, "ok");
    assert!(detail.contains(&format!("leads ({ns}/gpu-shopper-{ns}")), "{detail}");
    let (outcome, detail) = check(&report, "resource gpusessions.gpushopper.dev");
    assert_eq!(outcome, "ok");
    assert!(detail.contains("schema matches this CLI"), "{detail}");
    assert_eq!(check(&report, "may create gpusessions").0, "ok");

    // A user nothing allows: refused rows fail the doctor and say what to ask for.
    let (code, report) = doctor(&["--as", "mallory"]);
    assert_eq!(code, 1);
    assert_eq!(check(&report, "user").1, "mallory (groups: system:authenticated)");
    let (outcome, detail) = check(&report, "may create gpusessions");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("edit role"), "{detail}");
    assert!(check(&report, "operator").1.contains("may not read Leases"));

    // The operator gone: its Lease runs out and the doctor says no operator leads.
    controller.kill();
    let (code, report) = wait_for("the lease to run out", Duration::from_secs(30), || async {
        let (code, report) = doctor(&[]);
        (code == 1).then_some((code, report))
    })
    .await;
    assert_eq!(code, 1);
    let (outcome, detail) = check(&report, "operator");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("no operator leads"), "{detail}");
    delete_namespace(&client, &ns).await;
}

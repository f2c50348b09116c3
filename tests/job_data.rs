//! Jobs carry their work: secrets and data in, results and log out, against
//! the real API server, the simulated marketplaces and a real S3-compatible
//! store (s3s-fs). The bucket's credentials stay in the cluster: the machine
//! gets signed URLs only.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use gpu_shopper::crd::SessionPhase;
use gpu_shopper::crd::conditions::{find, types};
use support::s3::{ACCESS_KEY, ObjectStore, SECRET_KEY};
use support::sessions::*;
use support::wait_for;

const TOKEN: &str = "hf_tok3n_that_must_never_show";

async fn secrets_and_config(h: &Harness, secret_key: &str) {
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let bucket_keys: Secret = serde_json::from_value(json!({"metadata": {"name": "bucket-keys"},
        "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret_key}}))
    .unwrap();
    secrets.create(&PostParams::default(), &bucket_keys).await.unwrap();
    let token: Secret =
        serde_json::from_value(json!({"metadata": {"name": "hf"}, "stringData": {"token": TOKEN}})).unwrap();
    secrets.create(&PostParams::default(), &token).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let config: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "train"}, "data": {"config.yaml": "epochs: 3\n"}})).unwrap();
    maps.create(&PostParams::default(), &config).await.unwrap();
}

fn location(store: &ObjectStore, bucket: &str) -> serde_json::Value {
    json!({"bucket": bucket, "endpoint": store.endpoint, "credentialsSecretRef": {"name": "bucket-keys"}})
}

/// A training job: reads its dataset and config, uses its token, writes a checkpoint directory.
fn training(store: &ObjectStore, command: &str) -> serde_json::Value {
    let mut dataset = location(store, "datasets");
    dataset["prefix"] = json!("imagenet-mini/");
    let mut outputs = location(store, "results");
    outputs["prefix"] = json!("run-1/");
    json!({
        "requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "workload": {
            "kind": "Job",
            "command": command,
            "inputs": [
                {"path": "data", "s3": dataset},
                {"path": "config.yaml", "configMap": {"name": "train", "key": "config.yaml"}},
            ],
            "outputs": [{"path": "ckpt", "s3": outputs}],
        },
        "timeouts": {"sshReady": "20s", "outputs": "20s"},
    })
}

const TRAIN: &str = "set -e; cat data/a.bin data/sub/b.bin > joined; cat config.yaml; \
    mkdir -p ckpt/epoch-1; cp joined ckpt/epoch-1/weights.bin; echo \"token=${#HF_TOKEN}\" > ckpt/meta.txt; \
    echo training done";

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_job_gets_its_data_and_secret_and_its_checkpoints_are_saved_before_the_machine_goes() {
    let store = ObjectStore::start(&["datasets", "results"]).await;
    store.put("datasets", "imagenet-mini/a.bin", &[7u8; 3000]);
    store.put("datasets", "imagenet-mini/sub/b.bin", b"second part");
    let h = Harness::new("job-data", fast_market()).await;
    secrets_and_config(&h, SECRET_KEY).await;
    h.apply("train", training(&store, TRAIN)).await;
    let done = h.wait_phase("train", SessionPhase::Succeeded).await;
    let st = status(&done);
    let inputs = find(&st.conditions, types::INPUTS_READY).unwrap();
    assert_eq!(inputs.status, "True", "{}", inputs.message);
    assert!(inputs.message.contains("2/2 files"), "{}", inputs.message);
    let job = st.job.as_ref().unwrap();
    assert_eq!(job.exit_code, 0);
    assert!(job.log_tail.contains("epochs: 3"), "the config reached the job: {}", job.log_tail);

    // The objects are in the bucket with the right bytes, and status lists them.
    let mut weights = vec![7u8; 3000];
    weights.extend_from_slice(b"second part");
    assert_eq!(store.object("results", "run-1/epoch-1/weights.bin").unwrap(), weights);
    assert_eq!(store.object("results", "run-1/meta.txt").unwrap(), format!("token={}\n", TOKEN.len()).into_bytes());
    let mut listed: Vec<(&str, u64)> = job.outputs.iter().map(|o| (o.url.as_str(), o.bytes)).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("s3://results/run-1/epoch-1/weights.bin", 3011),
            ("s3://results/run-1/meta.txt", format!("token={}\n", TOKEN.len()).len() as u64)
        ]
    );
    assert_eq!(job.log.as_deref(), Some("s3://results/run-1/job.log"));
    assert!(String::from_utf8(store.object("results", "run-1/job.log").unwrap()).unwrap().contains("training done"));
    assert_eq!(find(&st.conditions, types::OUTPUTS_SAVED).unwrap().status, "True");
    // Only then was the machine destroyed: its release follows the outputs' confirmation.
    let saved_at = find(&st.conditions, types::OUTPUTS_SAVED).unwrap().last_transition_time.0;
    assert!(st.released_at.as_ref().unwrap().0 >= saved_at.saturating_sub(jiff::SignedDuration::from_secs(1)).unwrap());
    assert!(h.live_instances().is_empty());

    // The token is in none of: the session, its Events, the marketplace's create request, the log.
    let text = serde_json::to_string(&done).unwrap();
    assert!(!text.contains(TOKEN), "the session shows the token");
    let events = serde_json::to_string(&h.events("JobSucceeded").await).unwrap()
        + &serde_json::to_string(&h.events("Ready").await).unwrap();
    assert!(!events.contains(TOKEN));
    let uid = done.metadata.uid.clone().unwrap();
    let env = h.sim.sim.world().instances.iter().find(|i| i.label.contains(&uid)).unwrap().env.clone();
    assert!(env.values().all(|v| !v.contains(TOKEN)), "the marketplace's request carried the token");
    assert!(!h.controller.log().contains(TOKEN), "the operator logged the token");
    assert!(!h.controller.log().contains(SECRET_KEY), "the operator logged the bucket secret");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn a_failed_job_still_saves_its_outputs_and_a_finished_job_stops_billing_at_once() {
    let store = ObjectStore::start(&["datasets", "results"]).await;
    store.put("datasets", "imagenet-mini/a.bin", b"a");
    let h = Harness::with_env("job-fail", fast_market(), &[("MACHINE_CHECK_INTERVAL", "60s")]).await;
    secrets_and_config(&h, SECRET_KEY).await;
    let failing = "mkdir -p ckpt && echo partial > ckpt/last.txt && sleep 2 && echo boom && exit 3";
    h.apply("fail", training(&store, failing)).await;
    let running = h
        .wait_until("fail", "WorkloadReady", |s| {
            s.status
                .as_ref()
                .and_then(|st| find(&st.conditions, types::WORKLOAD_READY))
                .is_some_and(|c| c.status == "True")
        })
        .await;
    let started = Instant::now();
    let _ = running;
    let failed = h.wait_phase("fail", SessionPhase::Failed).await;
    let ended_in = started.elapsed();
    let st = status(&failed);
    assert_eq!(st.reason.as_deref(), Some("JobFailed"));
    assert_eq!(st.job.as_ref().unwrap().exit_code, 3);
    assert_eq!(store.object("results", "run-1/last.txt").unwrap(), b"partial\n");
    assert!(String::from_utf8(store.object("results", "run-1/job.log").unwrap()).unwrap().contains("boom"));
    // The job slept 2 s; with the machine checked only every 60 s, its exit was still seen at once.
    assert!(ended_in < Duration::from_secs(15), "the finished job billed on for {ended_in:?}");
    println!("a job's exit to its machine destroyed (outputs saved): {:.1} s", ended_in.as_secs_f64() - 2.0);
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn wrong_credentials_or_a_missing_input_rent_nothing() {
    let store = ObjectStore::start(&["datasets", "results"]).await;
    let h = Harness::new("job-input", fast_market()).await;
    secrets_and_config(&h, "not-the-secret").await;
    h.apply("denied", training(&store, TRAIN)).await;
    let pending = h
        .wait_until("denied", "InputAccessDenied", |s| {
            s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("InputAccessDenied")
        })
        .await;
    assert_eq!(status(&pending).phase, Some(SessionPhase::Pending));
    // Right credentials, but the dataset is not there.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let fixed = json!({"stringData": {"AWS_SECRET_ACCESS_KEY": SECRET_KEY}});
    secrets.patch("bucket-keys", &Default::default(), &kube::api::Patch::Merge(&fixed)).await.unwrap();
    h.wait_until("denied", "InputNotFound", |s| {
        s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("InputNotFound")
    })
    .await;
    // And a Secret value that does not exist.
    let mut spec = training(&store, TRAIN);
    spec["env"] = json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "nope"}}}]);
    spec["workload"]["inputs"] = json!([]);
    h.apply("nokey", spec).await;
    h.wait_until("nokey", "SecretKeyNotFound", |s| {
        s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("SecretKeyNotFound")
    })
    .await;
    assert!(h.sim.instances().is_empty(), "nothing was rented");
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn an_upload_the_store_refuses_ends_at_the_outputs_timeout_with_the_machine_destroyed_and_the_loss_named() {
    let store = ObjectStore::start(&["datasets", "results"]).await;
    store.put("datasets", "imagenet-mini/a.bin", b"a");
    let h = Harness::new("job-lost", fast_market()).await;
    secrets_and_config(&h, SECRET_KEY).await;
    let mut spec = training(&store, "sleep 4; mkdir -p ckpt && echo x > ckpt/x.txt");
    spec["timeouts"]["outputs"] = json!("8s");
    h.apply("lost", spec).await;
    h.wait_until("lost", "WorkloadReady", |s| {
        s.status.as_ref().and_then(|st| find(&st.conditions, types::WORKLOAD_READY)).is_some_and(|c| c.status == "True")
    })
    .await;
    // The credentials are revoked while the job runs: the store refuses every upload signed with them.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let revoked = json!({"stringData": {"AWS_SECRET_ACCESS_KEY": "revoked"}});
    secrets.patch("bucket-keys", &Default::default(), &kube::api::Patch::Merge(&revoked)).await.unwrap();
    let failed = h.wait_phase("lost", SessionPhase::Failed).await;
    let st = status(&failed);
    assert_eq!(st.reason.as_deref(), Some("OutputsLost"));
    let lost = st.job.as_ref().unwrap().lost.clone().unwrap();
    assert!(lost.contains("run-1/x.txt"), "the loss is named: {lost}");
    assert!(store.object("results", "run-1/x.txt").is_none());
    wait_for("the machine to be destroyed", WAIT, || async { h.live_instances().is_empty().then_some(()) }).await;
    h.finish().await;
}

#[tokio::test]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn an_outputs_bucket_that_does_not_exist_rents_nothing() {
    let store = ObjectStore::start(&["datasets", "results"]).await;
    store.put("datasets", "imagenet-mini/a.bin", b"a");
    let h = Harness::new("job-nobucket", fast_market()).await;
    secrets_and_config(&h, SECRET_KEY).await;
    let mut spec = training(&store, "true");
    spec["workload"]["outputs"][0]["s3"]["bucket"] = json!("no-such-bucket");
    h.apply("nobucket", spec).await;
    h.wait_until("nobucket", "OutputBucketNotFound", |s| {
        s.status.as_ref().and_then(|st| st.reason.as_deref()) == Some("OutputBucketNotFound")
    })
    .await;
    assert!(h.sim.instances().is_empty(), "nothing was rented");
    h.finish().await;
}

// The CLI runs as child processes read synchronously: the simulated machine needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test`, or `tests/control-plane/start.sh` then `cargo test -- --include-ignored`"]
async fn logs_follow_the_job_as_it_prints_and_files_copy_both_ways() {
    use std::io::BufRead;
    let h = Harness::new("job-logs", fast_market()).await;
    let spec = json!({
        "requirements": {"gpuModels": ["RTX 4090"], "providers": ["vastai"]},
        "workload": {"kind": "Job", "command": "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done; cat uploaded.txt"},
        "timeouts": {"sshReady": "20s"},
    });
    h.apply("chatty", spec).await;
    h.wait_until("chatty", "WorkloadReady", |s| {
        s.status.as_ref().and_then(|st| find(&st.conditions, types::WORKLOAD_READY)).is_some_and(|c| c.status == "True")
    })
    .await;
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-shopper"));
        command
            .args(args)
            .args(["-n", &h.ns])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", support::kubeconfig_path())
            .env("HOME", env!("CARGO_TARGET_TMPDIR"));
        command
    };
    // A file up to the machine (the job prints it at its end) and one back.
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("up.txt"), "from the laptop\n").unwrap();
    let uid = h.sessions.get("chatty").await.unwrap().metadata.uid.unwrap();
    let target = format!("chatty:.gpu-shopper/{uid}/uploaded.txt");
    let up = cli(&["cp", local.path().join("up.txt").to_str().unwrap(), &target]).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let mut follow =
        cli(&["logs", "chatty", "-f", "--tail", "1"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let lines = std::io::BufReader::new(follow.stdout.take().unwrap());
    let started = Instant::now();
    let mut seen = Vec::new();
    for line in lines.lines() {
        let line = line.unwrap();
        seen.push((started.elapsed(), line.clone()));
        if line.starts_with("line 4") {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.len() >= 2, "{seen:?}");
    let spread = seen.last().unwrap().0 - seen[0].0;
    assert!(spread >= Duration::from_millis(1500), "lines came as they were printed, not at the end: {seen:?}");
    let down = local.path().join("log.txt");
    let back = cli(&["cp", &format!("chatty:.gpu-shopper/{uid}/job.log"), down.to_str().unwrap()]).output().unwrap();
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    assert!(std::fs::read_to_string(&down).unwrap().contains("line 1"));
    let config = cli(&["ssh-config", "chatty"]).output().unwrap();
    let text = String::from_utf8_lossy(&config.stdout);
    assert!(text.starts_with("Host gs-chatty\n") && text.contains("StrictHostKeyChecking yes"), "{text}");
    let done = h.wait_phase("chatty", SessionPhase::Succeeded).await;
    assert!(
        status(&done).job.as_ref().unwrap().log_tail.contains("from the laptop"),
        "the uploaded file reached the job"
    );
    h.finish().await;
}

//! Gateway benchmark (`make bench`): what `gpu-shopper gateway` adds to a
//! request against calling the model directly on loopback, and what it holds
//! under 200 concurrent streaming requests. A simulated machine (a real SSH
//! server and model server on loopback) serves the model; the gateway runs as
//! its own process with a fixed machine (`--ssh`), so no API server is needed.
//! Prints its figures; asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use gpu_shopper::provider::http::CallPolicy;
use gpu_shopper::provider::vastai::VastAi;
use gpu_shopper::provider::{CreateRequest, InstanceLabel, OfferQuery, Provider};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::{self, world::Faults};

const SEQUENTIAL: usize = 500;
const CONCURRENT_STREAMS: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latencies(client: &reqwest::Client, url: &str, key: Option<&str>) -> Vec<f64> {
    let body = serde_json::json!({"model": "bench-model", "prompt": "hi", "max_tokens": 4});
    let mut times = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let mut request = client.post(url).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let started = Instant::now();
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_success(), "{}", answer.status());
        answer.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gateway bench: not run under `cargo test`; run it with `make bench` (cargo bench --bench gateway)");
        return;
    }
    let mut market = Market::builtin();
    market.timings.created_ms = 0;
    market.timings.loading_ms = 0;
    market.inference.load_ms = 0;
    let sim = simulator::start(market, 0).await.unwrap();
    sim.set_faults(gpu_shopper::crd::ProviderName::Vastai, Faults { no_rate_limits: true, ..Default::default() });
    let keys = sim.sim.world().market.keys.clone();
    let vast = VastAi::new(&sim.vastai_url, SecretString::from(keys.vastai), CallPolicy::default());
    let pair = gpu_shopper::keys::generate("bench").unwrap();
    let offer = vast.search_offers(&OfferQuery { limit: 50, ..Default::default() }).await.unwrap().remove(0);
    let instance = vast
        .create_instance(&CreateRequest {
            offer,
            label: InstanceLabel::new("bench", "gateway"),
            ssh_public_key: pair.public_openssh.clone(),
            image: "vllm/vllm-openai:v0.6.0".into(),
            start_script: None,
            env: vec![
                ("GPU_SHOPPER_MODEL".into(), "bench-model".into()),
                ("GPU_SHOPPER_MODEL_PORT".into(), "8000".into()),
            ],
            // Exposed too, so the direct figure has an address to call.
            ports: vec![8000],
            disk_gb: 10,
            min_cuda_version: None,
        })
        .await
        .unwrap();
    let machine = sim.sim.world().find(gpu_shopper::crd::ProviderName::Vastai, &instance.id).unwrap().clone();
    let direct_port = machine.port_map[&8000];
    // The host key as the operator would have pinned it.
    let key = Arc::new(gpu_shopper::keys::parse_private(&pair.private_openssh).unwrap());
    let target = gpu_shopper::probe::ssh::Target {
        host: "127.0.0.1",
        port: machine.ssh_port,
        user: "root",
        pinned_fingerprint: None,
    };
    let first = gpu_shopper::probe::ssh::connect(&target, key, Duration::from_secs(20)).await.unwrap();
    let fingerprint = first.host_fingerprint.clone();
    first.close().await;

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, secrecy::ExposeSecret::expose_secret(&pair.private_openssh)).unwrap();
    let api_key = "bench-api-key";
    let api_key_file = dir.path().join("api-key");
    std::fs::write(&api_key_file, api_key).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-shopper"))
        .args(["gateway", "--ssh", &format!("root@127.0.0.1:{}", machine.ssh_port), "--host-key", &fingerprint])
        .arg("--ssh-key-file")
        .arg(&key_file)
        .arg("--api-key-file")
        .arg(&api_key_file)
        .args(["--model-port", "8000", "--listen", &listen.to_string()])
        .env("LOG_LEVEL", "warn")
        .spawn()
        .unwrap();
    let pid = gateway.id();
    let client = reqwest::Client::new();
    let gateway_url = format!("http://{listen}/v1/completions");
    for _ in 0..100 {
        let ready = client.get(format!("http://{listen}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            let serving = client
                .post(&gateway_url)
                .bearer_auth(api_key)
                .json(&serde_json::json!({"model": "bench-model", "prompt": "x"}))
                .send()
                .await;
            if serving.is_ok_and(|r| r.status().is_success()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let direct = latencies(&client, &format!("http://127.0.0.1:{direct_port}/v1/completions"), None).await;
    let through = latencies(&client, &gateway_url, Some(api_key)).await;
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (g50, g99) = (percentile(&through, 0.5), percentile(&through, 0.99));

    // 200 streaming completions at once, each 16 tokens 20 ms apart.
    let started = Instant::now();
    let streams = (0..CONCURRENT_STREAMS).map(|_| {
        let (client, url) = (client.clone(), gateway_url.clone());
        async move {
            let body = serde_json::json!({"model": "bench-model", "prompt": "hi", "max_tokens": 16, "stream": true});
            let mut answer = client.post(url).bearer_auth(api_key).json(&body).send().await.unwrap();
            let ok = answer.status().is_success();
            let mut text = Vec::new();
            while let Some(chunk) = answer.chunk().await.unwrap() {
                text.extend_from_slice(&chunk);
            }
            ok && text.ends_with(b"data: [DONE]\n\n")
        }
    });
    let completed = futures::future::join_all(streams).await.into_iter().filter(|ok| *ok).count();
    let streamed_in = started.elapsed();
    let rss = peak_rss_mib(pid);
    let _ = gateway.kill();
    let _ = gateway.wait();

    println!("gateway: {SEQUENTIAL} sequential completions, milliseconds per request");
    println!("{:>28} {:>8} {:>8}", "", "p50", "p99");
    println!("{:>28} {d50:>8.3} {d99:>8.3}", "direct (loopback)");
    println!("{:>28} {g50:>8.3} {g99:>8.3}", "through the gateway (SSH)");
    println!("{:>28} {:>8.3} {:>8.3}", "added", g50 - d50, g99 - d99);
    println!(
        "gateway: {completed}/{CONCURRENT_STREAMS} concurrent streaming completions finished in {:.2} s; gateway peak RSS {rss:.1} MiB",
        streamed_in.as_secs_f64()
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!("target: adds at most 2 ms p50: {} ({:.3} ms)", verdict(g50 - d50 <= 2.0), g50 - d50);
    println!("target: holds {CONCURRENT_STREAMS} concurrent streams: {}", verdict(completed == CONCURRENT_STREAMS));
    println!("target: under 32 MiB RSS: {} ({rss:.1} MiB)", verdict(rss < 32.0));
}

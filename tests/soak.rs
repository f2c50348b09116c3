//! A bounded, seeded, randomised soak: sessions come and go while the
//! controller is SIGKILLed and restarted, the simulated marketplaces fail in
//! every way they can, status writes collide, and a misbehaving tenant writes
//! another session's machine into its own session's status. Invariants are
//! checked all along and at the end; any violation fails the run.
//!
//! `make test` runs a short one (SOAK_SECONDS=60, SOAK_SEED=7); `make soak`
//! a long one. Prints one line per invariant and counts; writes
//! soak-<seed>-<seconds>s.json to SOAK_RESULTS_DIR (`make soak`: bench/results).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use gpu_shopper::crd::{GpuSession, ProviderName, SessionPhase};
use gpu_shopper::simulator::market::Market;
use gpu_shopper::simulator::world::{Fate, Faults};
use gpu_shopper::simulator::{self, SimulatorHandle};
use support::*;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn market() -> Market {
    let mut market = Market::builtin();
    market.timings.created_ms = 100;
    market.timings.loading_ms = 300;
    let mut honest = market.hosts.iter().find(|h| h.id == "4101").unwrap().clone();
    honest.id = "4199".into();
    honest.real_cuda = None;
    honest.price_per_hour = 0.33;
    market.hosts.push(honest);
    market
}

/// A random fault set for one marketplace, and its name for the counts.
fn random_faults(rng: &mut StdRng, provider: ProviderName) -> (&'static str, Faults) {
    let snatch = match provider {
        ProviderName::Vastai => "4101",
        ProviderName::Tensordock => "loc-chi-1",
        ProviderName::Runpod => "NVIDIA GeForce RTX 4090",
    };
    match rng.random_range(0..17) {
        // Vast's per-endpoint limit at 2 calls a second, answered with its 429 text.
        13 => ("per-endpoint-429s", Faults { endpoint_interval_ms: 500, ..Default::default() }),
        14 => (
            "slow-driver-repair",
            Faults {
                broken_drivers: true,
                driver_repair_ms: 3_000,
                driver_repair_reboots: 1,
                reboot_ms: 1_000,
                ..Default::default()
            },
        ),
        15 => (
            "account-keys",
            Faults {
                account_keys: vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO9dlX1b9mZy8l2mJ9Y4yPqH0n8o0aVQeWg8nQz6C0cT soak@elsewhere"
                        .into(),
                ],
                ..Default::default()
            },
        ),
        16 => ("dearer-placement", Faults { placement_markup_percent: 30, ..Default::default() }),
        9 => (
            "late-create",
            Faults { lose_create_responses: 1, late_creates: 1, late_by_ms: 3_000, ..Default::default() },
        ),
        10 => ("destroy-refused-in-200", Faults { destroy_refusals: 3, ..Default::default() }),
        11 => ("failing-listings", Faults { list_auth_failures: 2, unreadable_listings: 2, ..Default::default() }),
        12 => ("endless-output", Faults { endless_output_bytes: 1 << 20, ..Default::default() }),
        0 => ("snatched-offer", Faults { snatched_offers: vec![snatch.into()], ..Default::default() }),
        1 => ("server-errors", Faults { server_errors: 3, ..Default::default() }),
        2 => ("timeouts", Faults { hangs: 2, hang_ms: 3_000, ..Default::default() }),
        3 => ("rate-limited", Faults { rate_limits: 3, retry_after_secs: 1, ..Default::default() }),
        4 => ("lost-create-response", Faults { lose_create_responses: 1, ..Default::default() }),
        5 => ("unreachable-hosts", Faults { unreachable_instances: true, ..Default::default() }),
        6 => ("destroy-failures", Faults { destroy_failures: 3, ..Default::default() }),
        7 => ("stale-inventory", Faults { stale_inventory: true, ..Default::default() }),
        _ => ("late-ssh-key", Faults { key_delay_ms: 2_000, ..Default::default() }),
    }
}

fn session_spec(rng: &mut StdRng) -> serde_json::Value {
    let mut requirements = json!({"gpuModels": ["RTX 4090"], "maxPricePerHour": 0.5});
    if rng.random_bool(0.3) {
        requirements["minCudaVersion"] = json!("12.9"); // meets the lying host 4101 sometimes
    }
    let mut spec = json!({
        "requirements": requirements,
        "maxAttempts": 8,
        "timeouts": {"instanceRunning": "8s", "sshReady": "6s", "cudaVerified": "6s", "workloadReady": "10s"},
        "lifetime": {"maxDuration": format!("{}s", rng.random_range(4..20))},
    });
    if rng.random_bool(0.4) {
        spec["workload"] = json!({"kind": "Job", "command": "echo soak; sleep 1"});
    }
    spec
}

#[derive(Default)]
struct Counts {
    created: u64,
    deleted: u64,
    restarts: u64,
    conflicts_provoked: u64,
    faults: BTreeMap<&'static str, u64>,
    observations: u64,
    double_instances: Vec<String>,
    loss_not_reflected: Vec<String>,
    cost_above_bill: Vec<String>,
    deleted_but_alive: Vec<String>,
    orphans_past_grace: Vec<String>,
    not_settled: Vec<String>,
    leaks: Vec<String>,
    forgeries: u64,
    forged_dropped: u64,
    forged_cost_owner: Vec<String>,
}

/// A session's status made (by the misbehaving tenant) to name another session's machine.
struct Forgery {
    forger: String,
    victim_uid: String,
    victim: String,
    instance: String,
}

struct Observer {
    /// Session uid -> name, for every session ever seen.
    seen: HashMap<String, String>,
    /// Uids of sessions that are gone from the API.
    gone: HashSet<String>,
    /// Since when an instance has been alive with no live session.
    unowned_since: HashMap<String, Instant>,
    /// Since when a session has had more than one live instance.
    doubled_since: HashMap<String, Instant>,
    /// Machines made to vanish or stop behind the operator's back, and when.
    befallen: HashMap<String, Instant>,
    /// Every machine ever befallen (the entries above are dropped once judged).
    ever_befallen: HashSet<String>,
    /// Forged statuses not yet judged.
    forged: Vec<Forgery>,
    /// When each marketplace last had a fault switched on, and when the controller was last restarted:
    /// while a marketplace's listings fail, or no controller runs, nothing can notice a lost machine.
    faulted_at: HashMap<ProviderName, Instant>,
    restarted_at: Option<Instant>,
    /// Wall-clock times of every restart, to compare with the times in status.
    restarts: Vec<jiff::Timestamp>,
}

/// Soak timings (the controller's env below): inventory interval, stray grace.
const INTERVAL: Duration = Duration::from_secs(1);
/// The session uid an instance's label names (labels end with a namespace tag since 0.2.0).
fn session_of(label: &str) -> String {
    gpu_shopper::provider::InstanceLabel::parse(label).map(|l| l.session_uid).unwrap_or_default()
}

const STRAY_GRACE: Duration = Duration::from_secs(3);
/// Slack for one reconcile, one destroy and one observation.
const SLACK: Duration = Duration::from_secs(3);

async fn observe(
    sim: &SimulatorHandle,
    sessions: &Api<GpuSession>,
    ns: &str,
    observer: &mut Observer,
    counts: &mut Counts,
) {
    // Machines destroyed before the sessions are read: a session read after sees any end or
    // replacement stored before its machine's destroy.
    let destroyed: HashSet<String> = sim.instances().into_iter().filter(|i| i.destroyed).map(|i| i.id).collect();
    let Ok(list) = sessions.list(&ListParams::default()).await else { return };
    let live: HashSet<String> = list.items.iter().filter_map(|s| s.metadata.uid.clone()).collect();
    for s in &list.items {
        observer.seen.insert(s.metadata.uid.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default());
    }
    for uid in observer.seen.keys() {
        if !live.contains(uid) {
            observer.gone.insert(uid.clone());
        }
    }
    // Read the marketplace after the API: a session seen gone had its instance destroyed before.
    let prefix = support::sessions::label_prefix(ns);
    let ours: Vec<_> = sim.instances().into_iter().filter(|i| i.label.starts_with(&prefix)).collect();
    let mut per_uid: HashMap<String, Vec<String>> = HashMap::new();
    for instance in ours.iter().filter(|i| !i.destroyed) {
        let uid = session_of(&instance.label);
        per_uid.entry(uid.clone()).or_default().push(instance.id.clone());
        if observer.gone.contains(&uid) {
            counts.deleted_but_alive.push(format!("instance {} of deleted session {uid}", instance.id));
        }
        if live.contains(&uid) {
            observer.unowned_since.remove(&instance.id);
        } else {
            let since = *observer.unowned_since.entry(instance.id.clone()).or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(20) {
                counts.orphans_past_grace.push(format!(
                    "instance {} (session {uid}) unowned for {:?}",
                    instance.id,
                    since.elapsed()
                ));
                observer.unowned_since.remove(&instance.id);
            }
        }
    }
    // A second machine may exist briefly (a create that landed late); never past the stray grace.
    for (uid, ids) in &per_uid {
        if ids.len() > 1 {
            let since = *observer.doubled_since.entry(uid.clone()).or_insert_with(Instant::now);
            // A restart starts the sweeper's grace over: that window is exempt.
            let restarted = observer.restarted_at.is_some_and(|r| r.elapsed() < since.elapsed() + SLACK);
            if since.elapsed() > STRAY_GRACE + 2 * INTERVAL + SLACK && !restarted {
                counts.double_instances.push(format!("session {uid}: instances {ids:?} for {:?}", since.elapsed()));
                observer.doubled_since.remove(uid);
            }
        } else {
            observer.doubled_since.remove(uid);
        }
    }
    observer.doubled_since.retain(|uid, _| per_uid.get(uid).is_some_and(|ids| ids.len() > 1));
    let bills: HashMap<String, (f64, f64)> = ours.iter().fold(HashMap::new(), |mut bills, i| {
        let entry = bills.entry(session_of(&i.label)).or_insert((0.0, 0.0));
        entry.0 += i.cost_usd;
        entry.1 = entry.1.max(i.price_per_hour);
        bills
    });
    for s in &list.items {
        let (Some(uid), Some(st)) = (s.metadata.uid.as_ref(), s.status.as_ref()) else { continue };
        // A lost machine is reflected in status (InstanceRunning no longer True) within two inventory
        // intervals, while its marketplace answers and the controller runs.
        let running =
            gpu_shopper::crd::conditions::find(&st.conditions, "InstanceRunning").is_some_and(|c| c.status == "True");
        if let Some(id) = st.instance_id.as_ref()
            && running
            && let Some(at) = observer.befallen.get(id).copied()
            && at.elapsed() > 2 * INTERVAL + SLACK
        {
            let window = at.elapsed();
            let provider = st.provider.unwrap_or(ProviderName::Vastai);
            let disturbed = observer.restarted_at.is_some_and(|r| r.elapsed() < window + SLACK)
                || observer.faulted_at.get(&provider).is_some_and(|f| f.elapsed() < window + 4 * SLACK);
            if !disturbed {
                counts
                    .loss_not_reflected
                    .push(format!("session {uid} still shows lost instance {id} running after {window:?}"));
            }
            observer.befallen.remove(id);
        }
        // Status never shows more than the marketplace billed, beyond one interval's worth. A machine
        // lost while no controller ran cannot be dated better than the last look before the restart.
        let rented = st.rented_at.as_ref().map(|t| t.0);
        let crossed_a_restart = rented.is_some_and(|rented| {
            let ended = st.released_at.as_ref().map(|t| t.0).unwrap_or_else(jiff::Timestamp::now);
            observer.restarts.iter().any(|r| *r >= rented && *r <= ended)
        });
        if let (Some(shown), Some((billed, price)), false) = (st.accrued_cost_usd, bills.get(uid), crossed_a_restart)
            && shown > billed + price * INTERVAL.as_secs_f64() / 3600.0 + 0.0001
        {
            counts.cost_above_bill.push(format!(
                "session {} ({uid}): status ${shown:.5}, billed ${billed:.5}; rented {:?}, released {:?}, {} attempts, reason {:?}",
                s.metadata.name.clone().unwrap_or_default(),
                st.rented_at.as_ref().map(|t| t.0),
                st.released_at.as_ref().map(|t| t.0),
                st.attempts.len(),
                st.reason
            ));
        }
    }
    judge_forgeries(&destroyed, &list.items, observer, counts);
    // No session's status ever records releasing (destroying) a machine labelled for another.
    let owners: HashMap<&str, String> = ours.iter().map(|i| (i.id.as_str(), session_of(&i.label))).collect();
    for s in &list.items {
        let (Some(uid), Some(st)) = (s.metadata.uid.as_ref(), s.status.as_ref()) else { continue };
        if let (Some(id), Some(_)) = (st.instance_id.as_ref(), st.released_at.as_ref())
            && let Some(owner) = owners.get(id.as_str()).filter(|owner| *owner != uid)
        {
            let line = format!(
                "session {} released machine {id}, labelled for session {owner}",
                s.metadata.name.clone().unwrap_or_default()
            );
            if !counts.forged_cost_owner.contains(&line) {
                counts.forged_cost_owner.push(line);
            }
        }
    }
    counts.observations += 1;
}

/// A forged status never costs the machine's real session its machine: when that machine is
/// destroyed while its session lives, the session itself must have moved on (its end or its
/// replacement stored, its status naming another machine, or the machine lost behind its back).
fn judge_forgeries(destroyed: &HashSet<String>, live: &[GpuSession], observer: &mut Observer, counts: &mut Counts) {
    let by_uid: HashMap<&str, &GpuSession> =
        live.iter().filter_map(|s| Some((s.metadata.uid.as_deref()?, s))).collect();
    let by_name: HashMap<&str, &GpuSession> =
        live.iter().filter_map(|s| Some((s.metadata.name.as_deref()?, s))).collect();
    observer.forged.retain(|forgery| {
        // The forger's status no longer names the machine: the operator dropped it (or it ended).
        let forger_names_it = by_name.get(forgery.forger.as_str()).is_some_and(|s| {
            s.status.as_ref().and_then(|st| st.instance_id.as_deref()) == Some(forgery.instance.as_str())
        });
        let Some(victim) = by_uid.get(forgery.victim_uid.as_str()) else { return false };
        if !destroyed.contains(&forgery.instance) {
            if !forger_names_it {
                counts.forged_dropped += 1;
            }
            return forger_names_it;
        }
        let st = victim.status.clone().unwrap_or_default();
        let moved_on = victim.metadata.deletion_timestamp.is_some()
            || st.instance_id.as_deref() != Some(forgery.instance.as_str())
            || st.ending.is_some()
            || st.replacing.is_some()
            || matches!(st.phase, Some(SessionPhase::Succeeded | SessionPhase::Failed | SessionPhase::Terminating))
            || observer.ever_befallen.contains(&forgery.instance);
        if !moved_on {
            counts.forged_cost_owner.push(format!(
                "{}'s machine {} was destroyed after {} named it in its status; {} still names it ({:?}: {:?})",
                forgery.victim, forgery.instance, forgery.forger, forgery.victim, st.phase, st.reason
            ));
        }
        false
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: run `make test` (short soak) or `make soak`"]
async fn soak() {
    let seconds = env_number("SOAK_SECONDS", 60);
    let seed = env_number("SOAK_SEED", 7);
    let mut rng = StdRng::seed_from_u64(seed);
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "soak").await;
    let sim = simulator::start(market(), 0).await.unwrap();
    let mut env: Vec<(&str, String)> = sim.env();
    env.extend([
        ("ORPHAN_SWEEP_INTERVAL", "1s".to_string()),
        ("ORPHAN_GRACE_PERIOD", "3s".to_string()),
        ("STRAY_GRACE_PERIOD", "3s".to_string()),
        ("MACHINE_CHECK_INTERVAL", "1s".to_string()),
        ("PROVIDER_CALL_TIMEOUT", "2s".to_string()),
        ("LOG_LEVEL", "info".to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut controller = ControllerProcess::start_with_env_named(&ns, "soak", &env);
    controller.wait_ready().await;
    let sessions: Api<GpuSession> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut counts = Counts::default();
    let mut observer = Observer {
        seen: HashMap::new(),
        gone: HashSet::new(),
        unowned_since: HashMap::new(),
        doubled_since: HashMap::new(),
        befallen: HashMap::new(),
        ever_befallen: HashSet::new(),
        forged: Vec::new(),
        faulted_at: HashMap::new(),
        restarted_at: None,
        restarts: Vec::new(),
    };
    let mut fault_resets: Vec<(Instant, ProviderName)> = Vec::new();
    let mut private_keys: HashSet<String> = HashSet::new();
    let started = Instant::now();
    let mut tick = 0u64;

    while started.elapsed() < Duration::from_secs(seconds) {
        tick += 1;
        let live = sessions.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        if live.len() < 10 && rng.random_bool(0.5) {
            let name = format!("s{tick}");
            let session: GpuSession = serde_json::from_value(json!({
                "apiVersion": "gpushopper.dev/v1alpha1", "kind": "GpuSession", "metadata": {"name": name}, "spec": session_spec(&mut rng),
            }))
            .unwrap();
            if sessions.create(&PostParams::default(), &session).await.is_ok() {
                counts.created += 1;
            }
        }
        if !live.is_empty() && rng.random_bool(0.15) {
            let victim = &live[rng.random_range(0..live.len())];
            if sessions.delete(victim.metadata.name.as_deref().unwrap(), &DeleteParams::default()).await.is_ok() {
                counts.deleted += 1;
            }
        }
        if rng.random_bool(0.2) {
            let provider = ProviderName::ALL[rng.random_range(0..3)];
            let (kind, faults) = random_faults(&mut rng, provider);
            sim.set_faults(provider, faults);
            observer.faulted_at.insert(provider, Instant::now());
            fault_resets.push((Instant::now() + Duration::from_millis(rng.random_range(1500..4000)), provider));
            *counts.faults.entry(kind).or_default() += 1;
        }
        fault_resets.retain(|(at, provider)| {
            let due = *at <= Instant::now();
            if due {
                sim.set_faults(*provider, Faults::default());
            }
            !due
        });
        if !live.is_empty() && rng.random_bool(0.15) {
            // Someone else writes the object: the controller's next status write may conflict.
            let victim = live[rng.random_range(0..live.len())].metadata.name.clone().unwrap();
            let patch = json!({"metadata": {"annotations": {"soak/poke": tick.to_string()}}});
            if sessions.patch(&victim, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                counts.conflicts_provoked += 1;
            }
        }
        if rng.random_bool(0.04) {
            // A machine dies or stops behind the operator's back.
            let prefix = support::sessions::label_prefix(&ns);
            let running: Vec<String> = sim
                .instances()
                .into_iter()
                .filter(|i| !i.destroyed && i.state == "running" && i.label.starts_with(&prefix))
                .map(|i| i.id)
                .collect();
            if !running.is_empty() {
                let id = running[rng.random_range(0..running.len())].clone();
                let fate = if rng.random_bool(0.5) { Fate::Vanish } else { Fate::Stop };
                if sim.befall(&id, fate) {
                    observer.ever_befallen.insert(id.clone());
                    observer.befallen.insert(id, Instant::now());
                    *counts.faults.entry(if fate == Fate::Vanish { "vanished" } else { "stopped" }).or_default() += 1;
                }
            }
        }
        if rng.random_bool(0.1) {
            // A misbehaving tenant (allowed to write status) names another session's machine in
            // its own session: the operator must not act on that machine for it.
            // Only machines the marketplace shows labelled for the session that names them.
            let labelled: HashMap<String, String> =
                sim.instances().into_iter().filter(|i| !i.destroyed).map(|i| (i.id, session_of(&i.label))).collect();
            let with_machines: Vec<&GpuSession> = live
                .iter()
                .filter(|s| {
                    s.status.as_ref().is_some_and(|st| {
                        st.provider.is_some()
                            && st.instance_id.as_ref().and_then(|id| labelled.get(id)) == s.metadata.uid.as_ref()
                    })
                })
                .collect();
            if with_machines.len() >= 2 {
                let forger = with_machines[rng.random_range(0..with_machines.len())];
                let victims: Vec<&&GpuSession> =
                    with_machines.iter().filter(|s| s.metadata.uid != forger.metadata.uid).collect();
                let victim = victims[rng.random_range(0..victims.len())];
                let victim_status = victim.status.as_ref().unwrap();
                let instance = victim_status.instance_id.clone().unwrap();
                let forged = json!({"status": {"instanceId": instance, "provider": victim_status.provider}});
                let forger_name = forger.metadata.name.clone().unwrap();
                if sessions.patch_status(&forger_name, &PatchParams::default(), &Patch::Merge(&forged)).await.is_ok() {
                    counts.forgeries += 1;
                    observer.forged.push(Forgery {
                        forger: forger_name,
                        victim_uid: victim.metadata.uid.clone().unwrap(),
                        victim: victim.metadata.name.clone().unwrap(),
                        instance,
                    });
                }
            }
        }
        if rng.random_bool(0.03) {
            controller.restart(); // SIGKILL, then a fresh process
            observer.restarted_at = Some(Instant::now());
            observer.restarts.push(jiff::Timestamp::now());
            counts.restarts += 1;
        }
        if tick.is_multiple_of(10)
            && let Ok(list) = secrets.list(&ListParams::default()).await
        {
            for secret in list.items {
                if let Some(key) = secret.data.as_ref().and_then(|d| d.get("ssh-privatekey")) {
                    let text = String::from_utf8_lossy(&key.0).to_string();
                    if let Some(line) = text.lines().nth(1) {
                        private_keys.insert(line.to_string());
                    }
                }
            }
        }
        observe(&sim, &sessions, &ns, &mut observer, &mut counts).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..450))).await;
    }

    // Calm: no more faults; every session must settle (Ready or ended) within its timeouts.
    for provider in ProviderName::ALL {
        sim.set_faults(provider, Faults::default());
    }
    let settle_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        observe(&sim, &sessions, &ns, &mut observer, &mut counts).await;
        let list = sessions.list(&ListParams::default()).await.unwrap().items;
        let unsettled: Vec<String> = list
            .iter()
            .filter(|s| {
                let st = s.status.as_ref();
                let ready = st
                    .and_then(|st| gpu_shopper::crd::conditions::find(&st.conditions, "Ready"))
                    .is_some_and(|c| c.status == "True");
                let ended = st
                    .and_then(|st| st.phase)
                    .is_some_and(|p| matches!(p, SessionPhase::Succeeded | SessionPhase::Failed));
                !(ready || ended)
            })
            .map(|s| {
                format!(
                    "{} ({:?}: {:?})",
                    s.metadata.name.clone().unwrap_or_default(),
                    s.status.as_ref().and_then(|st| st.phase),
                    s.status.as_ref().and_then(|st| st.reason.clone())
                )
            })
            .collect();
        if unsettled.is_empty() {
            break;
        }
        if Instant::now() > settle_deadline {
            counts.not_settled = unsettled;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sessions.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(90), async {
        while !sessions.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    // Give the sweeper its grace period to repair anything left behind, then look.
    tokio::time::sleep(Duration::from_secs(6)).await;
    observe(&sim, &sessions, &ns, &mut observer, &mut counts).await;
    let prefix = support::sessions::label_prefix(&ns);
    let alive: Vec<String> =
        sim.instances().into_iter().filter(|i| !i.destroyed && i.label.starts_with(&prefix)).map(|i| i.id).collect();
    if !alive.is_empty() {
        counts.deleted_but_alive.push(format!("after deleting everything, still alive: {alive:?}"));
    }

    // No private key or API key in any log line.
    let log = std::fs::read_to_string(&controller.log_path).unwrap_or_default();
    let keys = sim.sim.world().market.keys.clone();
    for secret in [keys.vastai, keys.tensordock, keys.runpod].into_iter().chain(private_keys.iter().cloned()) {
        if log.contains(&secret) {
            counts.leaks.push(format!("a key ({} chars) appears in the controller log", secret.len()));
        }
    }
    drop(controller);

    let instances = sim.instances();
    let lines = [
        format!(
            "soak seed={seed} seconds={seconds} sessions_created={} sessions_deleted={} controller_restarts={} conflicting_writes={} observations={} instances_rented={}",
            counts.created,
            counts.deleted,
            counts.restarts,
            counts.conflicts_provoked,
            counts.observations,
            instances.len()
        ),
        format!("faults injected: {:?}", counts.faults),
        format!("invariant no-second-instance-past-stray-grace: {} violations", counts.double_instances.len()),
        format!(
            "invariant lost-machine-in-status-within-two-intervals: {} violations",
            counts.loss_not_reflected.len()
        ),
        format!("invariant status-cost-never-above-bill: {} violations", counts.cost_above_bill.len()),
        format!("invariant deleted-session-instance-destroyed: {} violations", counts.deleted_but_alive.len()),
        format!("invariant no-orphan-past-grace: {} violations", counts.orphans_past_grace.len()),
        format!("invariant every-session-settles: {} violations", counts.not_settled.len()),
        format!("invariant no-key-in-logs: {} violations", counts.leaks.len()),
        format!(
            "invariant forged-status-costs-no-owner-its-machine: {} violations ({} forgeries, {} dropped from the forger's status)",
            counts.forged_cost_owner.len(),
            counts.forgeries,
            counts.forged_dropped
        ),
    ];
    for line in &lines {
        println!("{line}");
    }
    let results = json!({
        "seed": seed, "seconds": seconds, "sessionsCreated": counts.created, "sessionsDeleted": counts.deleted,
        "controllerRestarts": counts.restarts, "conflictingWrites": counts.conflicts_provoked, "instancesRented": instances.len(),
        "forgedStatuses": counts.forgeries, "forgedDropped": counts.forged_dropped,
        "faults": counts.faults,
        "violations": {
            "doubleInstances": counts.double_instances, "deletedButAlive": counts.deleted_but_alive,
            "lossNotReflected": counts.loss_not_reflected, "costAboveBill": counts.cost_above_bill,
            "orphansPastGrace": counts.orphans_past_grace, "notSettled": counts.not_settled, "keyLeaks": counts.leaks,
            "forgedCostOwner": counts.forged_cost_owner,
        },
    });
    // `make soak` keeps its figures in bench/results; the short run in `make test` leaves the repo untouched.
    let dir = std::env::var("SOAK_RESULTS_DIR").unwrap_or_else(|_| format!("{}/soak", env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/soak-{seed}-{seconds}s.json"), serde_json::to_string_pretty(&results).unwrap())
        .unwrap();
    delete_namespace(&client, &ns).await;
    let violations = counts.double_instances.len()
        + counts.loss_not_reflected.len()
        + counts.cost_above_bill.len()
        + counts.deleted_but_alive.len()
        + counts.orphans_past_grace.len()
        + counts.not_settled.len()
        + counts.leaks.len()
        + counts.forged_cost_owner.len();
    assert_eq!(violations, 0, "invariants violated: {results:#}");
}

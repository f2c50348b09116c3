//! The simulated marketplaces' state: instances with a timed life and a bill,
//! the faults a test has switched on, and every call received.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::market::{Host, Market};
use super::{inference, ssh};
use crate::crd::ProviderName;

/// Faults a test can switch on for one marketplace. Counters count down per call.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Every key is refused (401).
    pub auth_failure: bool,
    /// The next N calls answer 500.
    pub server_errors: u32,
    /// The next N calls hang this long before answering (past the client's timeout).
    pub hangs: u32,
    pub hang_ms: u64,
    /// The next N calls answer 429 with this Retry-After.
    pub rate_limits: u32,
    pub retry_after_secs: u64,
    /// Offers snatched between search and create: still listed, cannot be rented.
    pub snatched_offers: Vec<String>,
    /// Listed inventory that cannot be rented ("No available nodes found").
    pub stale_inventory: bool,
    /// Creates succeed, but the response is replaced by a 502 (the instance exists).
    pub lose_create_responses: u32,
    /// Vast: a successful create answers without `new_contract`.
    pub omit_new_contract: bool,
    /// Vast: a successful create answers only after this long (the instance already exists).
    pub create_response_delay_ms: u64,
    /// TensorDock: port forwards are ignored (only the dedicated IP works).
    pub ignore_port_forwards: bool,
    /// Instances never become reachable over SSH.
    pub unreachable_instances: bool,
    /// The next N destroys fail with 500.
    pub destroy_failures: u32,
    /// The instance's key is refused for this long after create (seen: 10-15 s on Vast).
    pub key_delay_ms: u64,
    /// The image has no NVIDIA driver: `nvidia-smi` is not found.
    pub driver_missing: bool,
    /// Creates fail: the account has no credit.
    pub insufficient_funds: bool,
    /// The next N creates land late: the instance is missing from listings and lookups for `late_by_ms`.
    pub late_creates: u32,
    pub late_by_ms: u64,
    /// The next N destroys answer success-shaped but do nothing (the refusal, if any, is inside a 2xx body).
    pub destroy_refusals: u32,
    /// The next N instance listings answer 401.
    pub list_auth_failures: u32,
    /// The next N instance listings answer 200 with a body that is not the listing.
    pub unreadable_listings: u32,
    /// Commands run over SSH print this many bytes of extra output (a machine whose output never ends).
    pub endless_output_bytes: u64,
    /// Vast: the next N creates answer `success: false` yet make a stopped
    /// instance and name it (seen on spot creates; it bills storage).
    pub refused_creates_with_instance: u32,
    /// TensorDock: VMs boot without a working NVIDIA driver unless their
    /// cloud-init repairs it (seen live by cloud-gpu-shopper).
    pub broken_drivers: bool,
    /// TensorDock: how long cloud-init's driver repair takes, ms (0: two minutes,
    /// inside cloud-gpu-shopper's "2-5 min" dpkg lock and "2-3 minutes" install).
    pub driver_repair_ms: u64,
    /// TensorDock: the next N repairs reboot the VM at their end (no login for `reboot_ms`).
    pub driver_repair_reboots: u32,
    pub reboot_ms: u64,
    /// TensorDock: a delete leaves the VM listed as `deleting` (still billing) this long.
    pub slow_deletes_ms: u64,
    /// Vast: the next N key attachments answer 429 (a create that landed, then a call that failed).
    pub attach_failures: u32,
    /// RunPod: SSH keys registered on the account, given to pods that name no key of their own.
    pub account_keys: Vec<String>,
    /// RunPod: an on-demand pod lands on a machine this much dearer than `lowestPrice` quoted.
    pub placement_markup_percent: u32,
    /// Switches off the marketplace's published rate limits (on by default).
    pub no_rate_limits: bool,
    /// Vast: the least time between two calls to one endpoint, ms (0: the simulator's
    /// default, `VAST_ENDPOINT_INTERVAL`). Vast does not publish it.
    pub endpoint_interval_ms: u64,
}

/// What a test makes happen to a running instance behind the operator's back.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Fate {
    /// Destroyed outside the operator (deleted in the console, host died).
    Vanish,
    /// Stopped: still listed, no longer running (an interruptible one: preempted).
    Stop,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum SimState {
    Created,
    Loading,
    Running,
    Stopped,
    Destroyed,
}

#[derive(Clone, Debug)]
pub struct SimInstance {
    pub id: String,
    pub provider: ProviderName,
    pub label: String,
    pub host: Host,
    pub gpu_count: u32,
    pub price_per_hour: f64,
    /// The login user's home on this machine; its `.ssh/authorized_keys` decides who logs in.
    pub home: PathBuf,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub created: Instant,
    pub destroyed: Option<Instant>,
    /// Stopped behind the operator's back (still exists).
    pub stopped: Option<Instant>,
    /// A delete was accepted; the machine is shown `deleting` and bills until then.
    pub deleting_until: Option<Instant>,
    /// Listings and lookups show the instance only from this moment.
    pub visible_from: Instant,
    /// Loopback port of the instance's SSH server.
    pub ssh_port: u16,
    /// Requested private port -> loopback port of its model server.
    pub port_map: BTreeMap<u16, u16>,
    /// GPU utilisation `nvidia-smi` reports, in percent; tests set it to make a machine busy or idle.
    pub gpu_utilization: Arc<AtomicU32>,
}

/// What a create call asks for.
pub struct NewInstance {
    pub provider: ProviderName,
    pub host: Host,
    pub gpu_count: u32,
    pub price_per_hour: f64,
    pub label: String,
    pub ssh_public_key: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Private ports to serve (an OpenAI-compatible model server on each).
    pub ports: Vec<u16>,
    /// The VM came up without a working NVIDIA driver and nothing repaired it.
    pub driver_broken: bool,
    /// The VM runs cloud-init for this long after it starts; its driver works only after
    /// it, and it may reboot at the end (TensorDock VMs; `None` for containers).
    pub cloud_init: Option<CloudInit>,
}

/// A VM's boot-time setup as the simulated machine plays it.
#[derive(Clone, Copy, Debug)]
pub struct CloudInit {
    pub takes: Duration,
    /// The driver is broken until cloud-init ends (it repairs it).
    pub repairs_driver: bool,
    /// The repair ends with a reboot this long.
    pub reboot: Option<Duration>,
}

impl SimInstance {
    /// Adds a key to `~/.ssh/authorized_keys`, as the marketplace's own agent does.
    pub fn authorize(&self, public_key: &str) -> std::io::Result<()> {
        authorize_in(&self.home, public_key)
    }

    /// The lines of `~/.ssh/authorized_keys` on the machine now.
    pub fn authorized_keys(&self) -> Vec<String> {
        ssh::authorized_keys(&self.home)
    }

    /// Runs the marketplace's start command on the machine (Vast's `onstart`), as the
    /// container starts: with the machine's env and `HOME`. Its output is the machine's own.
    pub fn run_at_start(&self, command: &str) {
        let log = std::fs::File::create(self.home.join(".onstart.log")).ok();
        let mut run = std::process::Command::new("sh");
        run.arg("-c").arg(command).envs(&self.env).env("HOME", &self.home).current_dir(&self.home);
        if let Some(log) = log {
            run.stdout(log.try_clone().map(std::process::Stdio::from).unwrap_or(std::process::Stdio::null()));
            run.stderr(std::process::Stdio::from(log));
        }
        let _ = run.status();
    }
}

fn authorize_in(home: &Path, public_key: &str) -> std::io::Result<()> {
    let line = public_key.trim();
    let mut lines = ssh::authorized_keys(home);
    if line.is_empty() || lines.iter().any(|l| l == line) {
        return Ok(());
    }
    lines.push(line.to_string());
    let path = ssh::authorized_keys_path(home);
    std::fs::create_dir_all(path.parent().expect("authorized_keys has a parent"))?;
    std::fs::write(&path, lines.join("\n") + "\n")
}

/// What tests read back through the control endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub id: String,
    pub provider: ProviderName,
    pub label: String,
    pub offer_id: String,
    pub state: String,
    pub destroyed: bool,
    pub cost_usd: f64,
    pub price_per_hour: f64,
    pub ssh_port: u16,
    pub real_cuda: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub provider: ProviderName,
    pub method: String,
    pub path: String,
}

/// How a listing fails, when a fault says it must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingFault {
    Unauthorized,
    Unreadable,
}

pub struct World {
    pub market: Market,
    pub faults: BTreeMap<ProviderName, Faults>,
    pub instances: Vec<SimInstance>,
    pub calls: Vec<CallRecord>,
    servers: BTreeMap<String, Vec<tokio::task::JoinHandle<()>>>,
    next_id: u64,
    /// Successful SSH logins to any machine, for the benchmark.
    pub ssh_logins: Arc<std::sync::atomic::AtomicU64>,
    /// Every instance's home directory lives here; removed with the world.
    homes: tempfile::TempDir,
    /// The marketplaces' published rate limits, as they enforce them.
    pub rate_limits: RateLimits,
}

/// Vast: a minimum interval per endpoint, and search at most 10 a minute;
/// TensorDock: 100 calls a minute per account (docs/providers.md). Calls
/// refused with 429 count as `refused`.
#[derive(Default)]
pub struct RateLimits {
    last_call: BTreeMap<(ProviderName, String), Instant>,
    recent: BTreeMap<(ProviderName, String), std::collections::VecDeque<Instant>>,
    pub refused: BTreeMap<ProviderName, u64>,
}

/// The per-endpoint interval the simulated Vast enforces by default (the real one is unpublished).
pub const VAST_ENDPOINT_INTERVAL: Duration = Duration::from_millis(20);
/// Vast search: "requests: 10, per: minute" (vast-ai/docs `search_offers.yaml`, `x-rate-limit`).
pub const VAST_SEARCHES_PER_MINUTE: usize = 10;
/// TensorDock: "100 requests per minute per organization".
pub const TENSORDOCK_CALLS_PER_MINUTE: usize = 100;

impl RateLimits {
    /// `Some(body)` when this call is over the marketplace's limit. `vast_interval`: the
    /// per-endpoint interval the simulated Vast enforces now.
    pub fn over(
        &mut self,
        provider: ProviderName,
        endpoint: &str,
        now: Instant,
        vast_interval: Duration,
    ) -> Option<&'static str> {
        let over = match provider {
            ProviderName::Vastai => {
                let searching = endpoint == "POST /bundles/";
                if searching && self.window_full(provider, endpoint, now, VAST_SEARCHES_PER_MINUTE) {
                    // The rate-limits page: 429 with plain text "API requests too frequent".
                    Some("API requests too frequent")
                } else {
                    let last = self.last_call.insert((provider, endpoint.to_string()), now);
                    // The rate-limits page's second form; the threshold's unit is not published.
                    last.is_some_and(|last| now.duration_since(last) < vast_interval)
                        .then_some("API requests too frequent: endpoint threshold=...")
                }
            }
            ProviderName::Tensordock => self
                .window_full(provider, "account", now, TENSORDOCK_CALLS_PER_MINUTE)
                // Invented: TensorDock documents the limit, not its 429 body.
                .then_some("Rate limit exceeded. Please try again later."),
            ProviderName::Runpod => None,
        };
        if over.is_some() {
            *self.refused.entry(provider).or_default() += 1;
        }
        over
    }

    /// Whether `calls` went to `key` in the last minute; counts this call when not.
    fn window_full(&mut self, provider: ProviderName, key: &str, now: Instant, calls: usize) -> bool {
        let window = self.recent.entry((provider, key.to_string())).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            window.pop_front();
        }
        if window.len() >= calls {
            return true;
        }
        window.push_back(now);
        false
    }
}

impl World {
    pub fn new(market: Market) -> std::io::Result<Self> {
        Ok(World {
            market,
            faults: BTreeMap::new(),
            instances: Vec::new(),
            calls: Vec::new(),
            next_id: 1_000_001,
            ssh_logins: Arc::default(),
            servers: BTreeMap::new(),
            homes: tempfile::Builder::new().prefix("gpu-shopper-sim-").tempdir()?,
            rate_limits: RateLimits::default(),
        })
    }

    pub fn faults(&mut self, provider: ProviderName) -> &mut Faults {
        self.faults.entry(provider).or_default()
    }

    pub fn hosts(&self, provider: ProviderName) -> impl Iterator<Item = &Host> {
        self.market.hosts.iter().filter(move |h| h.provider == provider)
    }

    pub fn host(&self, provider: ProviderName, id: &str) -> Option<Host> {
        self.hosts(provider).find(|h| h.id == id).cloned()
    }

    pub fn state_of(&self, instance: &SimInstance, now: Instant) -> SimState {
        if instance.destroyed.is_some() {
            return SimState::Destroyed;
        }
        if instance.stopped.is_some() {
            return SimState::Stopped;
        }
        let age = now.duration_since(instance.created);
        let timings = &self.market.timings;
        if age < Duration::from_millis(timings.created_ms) {
            SimState::Created
        } else if age < Duration::from_millis(timings.created_ms + timings.loading_ms) {
            SimState::Loading
        } else {
            SimState::Running
        }
    }

    /// Creates an instance and starts its SSH server and model servers (inside a tokio runtime).
    pub fn create(&mut self, new: NewInstance) -> std::io::Result<SimInstance> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let faults = self.faults(new.provider).clone();
        let late_by = if faults.late_creates > 0 {
            self.faults(new.provider).late_creates -= 1;
            Duration::from_millis(faults.late_by_ms)
        } else {
            Duration::ZERO
        };
        // Commands on the machine run with this as HOME, so what a workload or the
        // operator writes under ~ stays inside the simulated machine's own directory.
        let home = self.homes.path().join(&id);
        std::fs::create_dir_all(&home)?;
        authorize_in(&home, &new.ssh_public_key)?;
        let gpu_utilization = Arc::new(AtomicU32::new(0));
        let users = match new.provider {
            ProviderName::Tensordock => vec!["root".to_string(), "user".to_string()],
            _ => vec!["root".to_string()],
        };
        let boot = std::time::Instant::now()
            + Duration::from_millis(self.market.timings.created_ms + self.market.timings.loading_ms);
        let setup_done = new.cloud_init.map(|c| boot + c.takes);
        let rebooting = new.cloud_init.and_then(|c| c.reboot.map(|r| (boot + c.takes, boot + c.takes + r)));
        let machine = ssh::Machine {
            driver_works_from: new.cloud_init.filter(|c| c.repairs_driver).map(|c| boot + c.takes),
            cloud_init_done_at: setup_done,
            rebooting,
            gpu_name: new.host.gpu.clone(),
            gpu_count: new.gpu_count,
            vram_mib: u64::from(new.host.vram_gb) * 1024,
            driver: new.host.driver.clone(),
            cuda: new.host.real_cuda().to_string(),
            driver_missing: faults.driver_missing || new.driver_broken,
            env: new.env.clone(),
            users,
            home: home.clone(),
            gpu_utilization: gpu_utilization.clone(),
            keys_accepted_after: std::time::Instant::now() + Duration::from_millis(faults.key_delay_ms),
            extra_output_bytes: faults.endless_output_bytes,
            logins: self.ssh_logins.clone(),
            loopback_ports: BTreeMap::new(),
        };
        let mut tasks = Vec::new();
        let mut port_map = BTreeMap::new();
        let mut loopback = BTreeMap::new();
        let settings = &self.market.inference;
        let model = new.env.get("GPU_SHOPPER_MODEL").cloned();
        // A model server on each port exposed publicly, and on the model port (loopback only).
        let model_port = new.env.get("GPU_SHOPPER_MODEL_PORT").and_then(|p| p.parse::<u16>().ok());
        let public = new.ports.iter().copied().filter(|p| *p != 22);
        let serving: Vec<(u16, bool)> = public
            .map(|p| (p, true))
            .chain(model_port.filter(|p| !new.ports.contains(p)).map(|p| (p, false)))
            .collect();
        for (port, exposed) in serving {
            let server = inference::ModelServer {
                model: model.clone().unwrap_or_else(|| "unnamed-model".into()),
                load_time: Duration::from_millis(
                    self.market.timings.created_ms + self.market.timings.loading_ms + settings.load_ms,
                ),
                host_cuda: inference::cuda_pair(new.host.real_cuda()),
                image_needs_cuda: inference::cuda_pair(settings.requires_cuda(&new.image)),
            };
            let (real, task) = inference::serve(server)?;
            loopback.insert(port, real);
            if exposed {
                port_map.insert(port, real);
            }
            tasks.push(task);
        }
        let machine = ssh::Machine { loopback_ports: loopback, ..machine };
        let (ssh_port, ssh_server) = ssh::serve(machine)?;
        tasks.push(ssh_server);
        self.servers.insert(id.clone(), tasks);
        let instance = SimInstance {
            id,
            provider: new.provider,
            label: new.label,
            host: new.host,
            gpu_count: new.gpu_count,
            price_per_hour: new.price_per_hour,
            home,
            image: new.image,
            env: new.env,
            created: Instant::now(),
            destroyed: None,
            stopped: None,
            deleting_until: None,
            visible_from: Instant::now() + late_by,
            ssh_port,
            port_map,
            gpu_utilization,
        };
        self.instances.push(instance.clone());
        Ok(instance)
    }

    pub fn find(&self, provider: ProviderName, id: &str) -> Option<&SimInstance> {
        self.instances.iter().find(|i| i.provider == provider && i.id == id)
    }

    pub fn live(&self, provider: ProviderName) -> impl Iterator<Item = &SimInstance> {
        self.instances.iter().filter(move |i| i.provider == provider && i.destroyed.is_none())
    }

    /// Live instances the marketplace's API shows now (a late create is not shown yet).
    pub fn visible(&self, provider: ProviderName) -> impl Iterator<Item = &SimInstance> {
        let now = Instant::now();
        self.live(provider).filter(move |i| i.visible_from <= now)
    }

    /// A live instance the API shows now, by id.
    pub fn find_visible(&self, provider: ProviderName, id: &str) -> Option<&SimInstance> {
        self.visible(provider).find(|i| i.id == id)
    }

    /// Keeps a live instance out of listings and lookups until `until` (a create that shows late).
    pub fn hide_until(&mut self, id: &str, until: Instant) {
        if let Some(instance) = self.instances.iter_mut().find(|i| i.id == id) {
            instance.visible_from = until;
        }
    }

    /// Counts down a listing fault: `Some(refusal)` when this listing must fail.
    pub fn listing_fault(&mut self, provider: ProviderName) -> Option<ListingFault> {
        let faults = self.faults(provider);
        if faults.list_auth_failures > 0 {
            faults.list_auth_failures -= 1;
            return Some(ListingFault::Unauthorized);
        }
        if faults.unreadable_listings > 0 {
            faults.unreadable_listings -= 1;
            return Some(ListingFault::Unreadable);
        }
        None
    }

    /// Counts down the destroy refusals: `true` when this destroy must do nothing.
    pub fn refuse_destroy(&mut self, provider: ProviderName) -> bool {
        let faults = self.faults(provider);
        if faults.destroy_refusals > 0 {
            faults.destroy_refusals -= 1;
            return true;
        }
        false
    }

    /// Makes `fate` happen to a live instance; `false` when there is none with that id.
    pub fn befall(&mut self, id: &str, fate: Fate) -> bool {
        let Some(instance) = self.instances.iter().find(|i| i.id == id && i.destroyed.is_none()).cloned() else {
            return false;
        };
        match fate {
            Fate::Vanish => self.destroy(instance.provider, id),
            Fate::Stop => {
                for server in self.servers.remove(id).into_iter().flatten() {
                    server.abort();
                }
                let instance = self.instances.iter_mut().find(|i| i.id == id).expect("found above");
                instance.stopped.get_or_insert_with(Instant::now);
                true
            }
        }
    }

    /// Marks destroyed; `false` when the id is unknown or already destroyed.
    pub fn destroy(&mut self, provider: ProviderName, id: &str) -> bool {
        match self.instances.iter_mut().find(|i| i.provider == provider && i.id == id && i.destroyed.is_none()) {
            Some(instance) => {
                instance.destroyed = Some(Instant::now());
                let _ = std::fs::remove_dir_all(&instance.home); // the disk goes with the machine
                for server in self.servers.remove(id).into_iter().flatten() {
                    server.abort();
                }
                true
            }
            None => false,
        }
    }

    /// Accepts a delete that takes `takes` to happen: listed `deleting` (and billing)
    /// until then. `false` when the id is unknown or already destroyed.
    pub fn destroy_slowly(&mut self, provider: ProviderName, id: &str, takes: Duration) -> bool {
        let now = Instant::now();
        let Some(instance) =
            self.instances.iter_mut().find(|i| i.provider == provider && i.id == id && i.destroyed.is_none())
        else {
            return false;
        };
        match instance.deleting_until {
            Some(until) if until <= now => self.destroy(provider, id),
            Some(_) => true,
            None => {
                instance.deleting_until = Some(now + takes);
                true
            }
        }
    }

    /// Deletes that have run their time are carried out.
    pub fn finish_deletes(&mut self) {
        let now = Instant::now();
        let due: Vec<(ProviderName, String)> = self
            .instances
            .iter()
            .filter(|i| i.destroyed.is_none() && i.deleting_until.is_some_and(|until| until <= now))
            .map(|i| (i.provider, i.id.clone()))
            .collect();
        for (provider, id) in due {
            self.destroy(provider, &id);
        }
    }

    /// Sets the GPU utilisation of a live instance; `false` when there is none with that id.
    pub fn set_utilization(&self, id: &str, percent: u32) -> bool {
        match self.instances.iter().find(|i| i.id == id && i.destroyed.is_none()) {
            Some(instance) => {
                instance.gpu_utilization.store(percent.min(100), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn cost(instance: &SimInstance, now: Instant) -> f64 {
        let end = instance.destroyed.unwrap_or(now);
        instance.price_per_hour * end.duration_since(instance.created).as_secs_f64() / 3600.0
    }

    pub fn report(&self) -> Vec<InstanceReport> {
        let now = Instant::now();
        self.instances
            .iter()
            .map(|i| InstanceReport {
                id: i.id.clone(),
                provider: i.provider,
                label: i.label.clone(),
                offer_id: i.host.id.clone(),
                state: format!("{:?}", self.state_of(i, now)).to_lowercase(),
                destroyed: i.destroyed.is_some(),
                cost_usd: Self::cost(i, now),
                price_per_hour: i.price_per_hour,
                ssh_port: i.ssh_port,
                real_cuda: i.host.real_cuda().to_string(),
            })
            .collect()
    }
}

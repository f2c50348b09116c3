//! `gpu-shopper doctor --rent-test --max-usd N`: rents the cheapest machine
//! whose worst case fits the budget, proves it the way the operator does (it
//! runs, SSH logs in and the host key stays the one first seen, `nvidia-smi`
//! answers), destroys it, confirms it gone, and prints what it cost at most.
//! Whatever fails or interrupts it, the machine is destroyed before it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;

use super::super::CliError;
use crate::config::Config;
use crate::crd::{OfferRequirements, ProviderName};
use crate::keys;
use crate::market;
use crate::probe::{nvidia, ssh};
use crate::provider::{
    CreateRequest, Instance, InstanceLabel, InstanceState, NextStep, Offer, Provider, ProviderError, SshTarget,
    destroy_confirmed,
};

/// The image every marketplace can start and that ships `nvidia-smi`.
const IMAGE: &str = crate::controller::session::DEFAULT_IMAGE;
/// Disk asked for; marketplaces with a larger minimum rent that (and price it in).
const DISK_GB: u32 = 20;
/// Offers tried when a create is refused for the offer's own reasons.
const MAX_OFFERS: usize = 3;
const POLL: Duration = Duration::from_secs(2);
/// How long a machine is given to be destroyed and confirmed gone after the test.
const CLEANUP_FOR: Duration = Duration::from_secs(180);
/// How long a create whose answer was lost is looked for in listings.
const LOST_CREATE_WAIT: Duration = Duration::from_secs(30);

pub struct RentTest {
    pub max_usd: f64,
    pub timeout: Duration,
    pub providers: Vec<ProviderName>,
    pub gpu_models: Vec<String>,
}

/// One line of the report.
struct Line {
    step: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn add(&mut self, step: &'static str, ok: bool, detail: impl Into<String>) {
        let line = Line { step, ok, detail: detail.into() };
        // Progress on stderr while it runs: a rent test takes minutes.
        eprintln!("doctor: {}: {} {}", line.step, if line.ok { "ok" } else { "FAILED" }, line.detail);
        self.lines.push(line);
    }

    fn ok(&self) -> bool {
        self.lines.iter().all(|l| l.ok)
    }

    fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| vec![l.step.to_string(), if l.ok { "ok" } else { "FAILED" }.to_string(), l.detail.clone()])
            .collect();
        super::super::table::render(&["STEP", "RESULT", "DETAIL"], &rows)
    }
}

/// The most a rental of `hours` at `price` can cost, rounded up to the cent.
fn worst_case_usd(price_per_hour: f64, hours: f64) -> f64 {
    (price_per_hour * hours * 100.0).ceil() / 100.0
}

pub async fn run(test: RentTest, providers: Vec<Arc<dyn Provider>>, config: &Config) -> Result<String, CliError> {
    if !(test.max_usd.is_finite() && test.max_usd > 0.0) {
        return Err(CliError::Usage("--max-usd must be a positive amount of US dollars".into()));
    }
    let hours = test.timeout.as_secs_f64() / 3600.0;
    let mut report = Report::default();
    let requirements = OfferRequirements {
        gpu_models: test.gpu_models.clone(),
        providers: test.providers.clone(),
        max_price_per_hour: Some(test.max_usd / hours),
        ..Default::default()
    };
    let view = market::search(&providers, &requirements, Duration::from_secs(60)).await;
    for failure in &view.failures {
        report.add("search", false, failure.error.to_string());
    }
    let mut offers: Vec<Offer> = view.offers.into_iter().filter(|o| !o.interruptible).collect();
    offers.sort_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour));
    if offers.is_empty() {
        report.add(
            "offer",
            false,
            format!(
                "no on-demand offer costs at most ${:.2} for {} (the test's --timeout); nothing was rented. Raise --max-usd or shorten --timeout",
                test.max_usd,
                crate::crd::duration::format(test.timeout)
            ),
        );
        return Err(CliError::Failed(report.render()));
    }
    let key = keys::generate("gpu-shopper-doctor").map_err(|e| CliError::Failed(e.to_string()))?;
    let private = Arc::new(keys::parse_private(&key.private_openssh).map_err(|e| CliError::Failed(e.to_string()))?);
    let uid = format!("doctor-{:08x}", rand::random::<u32>());
    // The installation's own label, tagged with a watched namespace: its orphan sweeper
    // backs this command up if it is killed.
    let label = match config.watch_namespaces.first() {
        Some(namespace) => InstanceLabel::for_session(&config.installation(), &uid, namespace),
        None => InstanceLabel::new(&config.installation(), &uid),
    };
    if config.cluster_id.is_none() {
        report.add(
            "label",
            true,
            "no cluster reachable and CLUSTER_ID unset: no operator's sweeper would destroy this machine if this command were killed",
        );
    }
    let started = Instant::now();
    let mut rented: Option<(Arc<dyn Provider>, Offer, Instance)> = None;
    let mut ambiguous: Vec<Arc<dyn Provider>> = Vec::new();
    for offer in offers.into_iter().take(MAX_OFFERS) {
        let Some(provider) = providers.iter().find(|p| p.name() == offer.provider).cloned() else { continue };
        let request = CreateRequest {
            offer: offer.clone(),
            label: label.clone(),
            ssh_public_key: key.public_openssh.clone(),
            image: IMAGE.into(),
            start_script: None,
            env: Vec::new(),
            ports: Vec::new(),
            disk_gb: DISK_GB,
            min_cuda_version: None,
        };
        match provider.create_instance(&request).await {
            Ok(instance) => {
                let worst = worst_case_usd(offer.price_per_hour, hours);
                report.add(
                    "rent",
                    true,
                    format!(
                        "{} instance {} ({} x{} at ${:.3}/h; at most ${worst:.2}; label {label})",
                        offer.provider, instance.id, offer.gpu_model, offer.gpu_count, offer.price_per_hour
                    ),
                );
                rented = Some((provider, offer, instance));
                break;
            }
            Err(error) => {
                let next = error.next_step();
                if next == NextStep::Retry {
                    // The create may have landed although its answer did not.
                    ambiguous.push(provider.clone());
                }
                report.add("rent", false, format!("offer {}: {error}", offer.id));
                if next != NextStep::NextOffer {
                    break;
                }
            }
        }
    }
    let Some((provider, offer, instance)) = rented else {
        let cleaned = sweep_label(&ambiguous, &label, LOST_CREATE_WAIT, &mut report).await;
        return Err(CliError::Failed(finish(report, cleaned)));
    };
    // The proof runs under the test's deadline and Ctrl-C; the cleanup after it runs regardless.
    let proof = prove(provider.as_ref(), &instance.id, private, &mut report);
    let outcome = tokio::select! {
        result = tokio::time::timeout(test.timeout, proof) => match result {
            Ok(result) => result,
            Err(_) => Err(format!("not proved within --timeout {}", crate::crd::duration::format(test.timeout))),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    if let Err(why) = outcome {
        report.add("prove", false, why);
    }
    let destroyed = destroy_until_gone(provider.as_ref(), &instance.id, &mut report).await;
    let elapsed = started.elapsed();
    let cost = offer.price_per_hour * elapsed.as_secs_f64() / 3600.0;
    report.add(
        "cost",
        true,
        format!(
            "${cost:.4} at most (${:.3}/h for {}, from the create to the confirmed destroy)",
            offer.price_per_hour,
            crate::crd::duration::format(Duration::from_secs(elapsed.as_secs().max(1)))
        ),
    );
    // Refused creates that may have landed after all, then one listing of the rented marketplace.
    ambiguous.retain(|p| p.name() != provider.name());
    let swept = sweep_label(&ambiguous, &label, LOST_CREATE_WAIT, &mut report).await
        & sweep_label(&[provider], &label, Duration::ZERO, &mut report).await;
    let out = finish(report, destroyed && swept);
    if out.starts_with("FAILED") { Err(CliError::Failed(out)) } else { Ok(out) }
}

/// The report, with the verdict first.
fn finish(report: Report, cleaned: bool) -> String {
    let verdict = match (report.ok(), cleaned) {
        (true, true) => "PASSED: the marketplace rents, serves and destroys a machine for this operator\n",
        (false, true) => "FAILED: see the steps below; nothing is left running\n",
        (_, false) => {
            "FAILED: A MACHINE MAY STILL BE BILLING: destroy it in the marketplace's console (its id and label are below)\n"
        }
    };
    format!("{verdict}{}\n", report.render().trim_end())
}

/// Waits for the machine to run, logs in twice (the second time insisting on
/// the host key the first saw) and reads `nvidia-smi`.
async fn prove(provider: &dyn Provider, id: &str, key: Arc<PrivateKey>, report: &mut Report) -> Result<(), String> {
    let target = loop {
        match provider.get_instance(id).await {
            Ok(Some(Instance { state: InstanceState::Running, ssh: Some(target), .. })) => break target,
            Ok(Some(Instance { state: InstanceState::Stopped | InstanceState::Destroyed, .. })) | Ok(None) => {
                return Err(format!("instance {id} stopped or vanished before it ran"));
            }
            Ok(Some(_)) => {}
            Err(error) if error.next_step() == NextStep::Retry => {}
            Err(error) => return Err(error.to_string()),
        }
        tokio::time::sleep(POLL).await;
    };
    report.add("running", true, format!("SSH at {}@{}:{}", target.user, target.host, target.port));
    let first = login(&target, key.clone(), None, "true").await;
    report.add("ssh", true, format!("logged in with a fresh key; host key {}", first.host_fingerprint));
    // While the VM's cloud-init still runs (TensorDock repairs broken drivers there), a
    // failing nvidia-smi is "not yet", as for the operator's CUDAVerified stage.
    let smi = loop {
        let smi = login(&target, key.clone(), Some(&first.host_fingerprint), nvidia::QUERY).await;
        if smi.exit_code == Some(0) {
            break smi;
        }
        let setup = login(&target, key.clone(), Some(&first.host_fingerprint), "cloud-init status").await;
        if !setup.stdout.lines().any(|line| line.trim() == "status: running") {
            break smi;
        }
        tokio::time::sleep(POLL).await;
    };
    let Some(found) = (smi.exit_code == Some(0)).then(|| nvidia::parse(&smi.stdout)).flatten() else {
        let why = format!("exit {:?}: {}", smi.exit_code, smi.stderr.trim());
        report.add("nvidia-smi", false, format!("no readable answer with the host key pinned ({why})"));
        return Ok(());
    };
    report.add("nvidia-smi", true, format!("{} (host key unchanged)", nvidia::summary(&found)));
    Ok(())
}

/// Logs in until it works: sshd and the key can take a while on a fresh machine.
/// The caller's deadline ends the wait.
async fn login(target: &SshTarget, key: Arc<PrivateKey>, pinned: Option<&str>, command: &str) -> ssh::CommandOutput {
    let target = ssh::Target { host: &target.host, port: target.port, user: &target.user, pinned_fingerprint: pinned };
    loop {
        match ssh::run(&target, key.clone(), command, Duration::from_secs(30)).await {
            Ok(out) => return out,
            // A changed host key is not a machine still booting: it is never accepted.
            Err(error @ ssh::SshError::HostKeyChanged { .. }) => {
                return ssh::CommandOutput {
                    exit_code: None,
                    stdout: String::new(),
                    stderr: error.to_string(),
                    host_fingerprint: String::new(),
                };
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Destroys `id` and retries until the marketplace confirms it gone, for a while.
async fn destroy_until_gone(provider: &dyn Provider, id: &str, report: &mut Report) -> bool {
    let deadline = Instant::now() + CLEANUP_FOR;
    let mut last: Option<ProviderError> = None;
    while Instant::now() < deadline {
        match destroy_confirmed(provider, id).await {
            Ok(_) => {
                report.add("destroy", true, format!("instance {id} destroyed; the marketplace reports it gone"));
                return true;
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(POLL).await;
    }
    let why = last.map(|e| e.to_string()).unwrap_or_default();
    report.add("destroy", false, format!("instance {id} on {} is NOT confirmed gone: {why}", provider.name()));
    false
}

/// Destroys anything carrying the test's label that the listings show, looking
/// again for `wait` (a create whose answer was lost can show up late); `false`
/// when something may be left.
async fn sweep_label(
    providers: &[Arc<dyn Provider>],
    label: &InstanceLabel,
    wait: Duration,
    report: &mut Report,
) -> bool {
    let mut clean = true;
    for provider in providers {
        let deadline = Instant::now() + wait;
        loop {
            match provider.list_instances(std::slice::from_ref(&label.installation)).await {
                Ok(instances) => {
                    let live: Vec<&Instance> = instances
                        .iter()
                        .filter(|i| i.label.as_ref() == Some(label) && i.state != InstanceState::Destroyed)
                        .collect();
                    for stray in &live {
                        clean &= destroy_until_gone(provider.as_ref(), &stray.id, report).await;
                    }
                    // At most one create per marketplace can be in doubt: once found, the wait is over.
                    if !live.is_empty() {
                        break;
                    }
                }
                Err(error) => {
                    report.add(
                        "sweep",
                        false,
                        format!("cannot list {} to look for a lost create: {error}", provider.name()),
                    );
                    clean = false;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL * 5).await;
        }
        if clean {
            report.add("listing", true, format!("{} lists no live instance labelled {label}", provider.name()));
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_rounds_up_to_the_cent() {
        assert_eq!(worst_case_usd(0.29, 0.25), 0.08);
        assert_eq!(worst_case_usd(1.0, 1.0), 1.0);
    }
}

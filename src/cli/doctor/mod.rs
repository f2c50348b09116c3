//! `gpu-shopper doctor`: with the operator's credentials, checks each
//! configured marketplace read-only (the key is accepted, search returns
//! offers, the instance listing works, the pacing the client will use) and
//! prints a table. The first thing to run after install. With `--rent-test
//! --max-usd N` it also rents one machine end to end (see `rent_test`); with
//! `--cluster` it checks the cluster side for the current user instead (see `cluster`).

mod cluster;
mod rent_test;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::output::Format;
use super::{CliError, table};
use crate::crd::ProviderName;
use crate::provider::pacing::{Headroom, Limits};
use crate::provider::{NextStep, OfferQuery, Provider, ProviderError};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper doctor
  kubectl gpu-shopper doctor -o json
  gpu-shopper doctor --rent-test --max-usd 0.50 --provider vastai --gpu 'RTX 4090'
  kubectl gpu-shopper doctor --cluster -n team-a")]
pub struct DoctorArgs {
    /// Check the cluster side instead, as the current user: the resources are served with this
    /// CLI's schema, an operator leads and observes the namespace's sessions, and you may do what
    /// the commands need there. Needs no marketplace key.
    #[arg(long, conflicts_with = "rent_test")]
    pub cluster: bool,
    /// With --cluster: the namespace whose sessions and permissions are checked.
    #[arg(short, long, requires = "cluster")]
    pub namespace: Option<String>,
    /// With --cluster: where the operator's Lease is (default: every namespace you may read).
    #[arg(long, value_name = "NAMESPACE", requires = "cluster")]
    pub operator_namespace: Option<String>,
    /// Same as -o json.
    #[arg(long, hide = true)]
    pub json: bool,
    /// After the read-only checks, rent the cheapest machine that fits --max-usd, log in over SSH,
    /// run nvidia-smi, destroy it and confirm it gone. Spends real money on real marketplaces.
    #[arg(long, requires = "max_usd")]
    pub rent_test: bool,
    /// The most the rent test may spend, USD: only offers whose price for the whole --timeout fits are rented.
    #[arg(long, value_name = "USD")]
    pub max_usd: Option<f64>,
    /// How long the rented machine is given to prove itself before it is destroyed anyway.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub timeout: std::time::Duration,
    /// Rent only on this marketplace (repeatable; default: every configured one).
    #[arg(long = "provider", value_name = "NAME", value_parser = super::parse_provider)]
    pub providers: Vec<ProviderName>,
    /// Rent only this GPU model (repeatable), for example "RTX 4090".
    #[arg(long = "gpu", value_name = "MODEL")]
    pub gpus: Vec<String>,
}

struct Check {
    provider: ProviderName,
    search: Result<usize, ProviderError>,
    listing: Result<usize, ProviderError>,
    /// The pacing budget left after the checks, and endpoints the marketplace answered 429.
    headroom: Headroom,
    took: Duration,
}

impl Check {
    fn ok(&self) -> bool {
        self.search.is_ok() && self.listing.is_ok()
    }

    fn verdict(&self) -> String {
        let errors: Vec<&ProviderError> =
            [self.search.as_ref().err(), self.listing.as_ref().err()].into_iter().flatten().collect();
        match errors.first() {
            None => "ok".into(),
            Some(error) if error.next_step() == NextStep::SkipProvider => {
                format!("{}: check the credentials and the account", error.reason())
            }
            Some(error) => format!("{}: retry later; if it persists, see docs/troubleshooting.md", error.reason()),
        }
    }
}

/// The pacing the client applies, as a user reads it.
fn pacing(limits: Limits) -> String {
    let mut parts = Vec::new();
    if let Some(budget) = limits.account {
        parts.push(format!("{} calls per {}s (burst {})", budget.calls, budget.period.as_secs(), budget.burst));
    }
    if let Some(interval) = limits.per_endpoint {
        parts.push(format!("{} ms between calls per endpoint", interval.as_millis()));
    }
    if parts.is_empty() { "none published; slows down on 429".into() } else { parts.join(", ") }
}

async fn check(provider: Arc<dyn Provider>, installations: Vec<String>) -> Check {
    let started = Instant::now();
    let search = provider.search_offers(&OfferQuery { limit: 200, ..Default::default() }).await.map(|o| o.len());
    let listing = provider.list_instances(&installations).await.map(|i| i.len());
    Check { provider: provider.name(), search, listing, headroom: provider.headroom(), took: started.elapsed() }
}

/// "9/10 calls of burst left; 429 on GET /x (now 500 ms apart)" as a user reads it.
fn headroom(h: &Headroom) -> String {
    let mut parts = Vec::new();
    if let Some((left, burst)) = h.burst_left {
        parts.push(format!("{left}/{burst} of burst left"));
    }
    for (endpoint, interval) in &h.slowed {
        parts.push(format!("429 on {endpoint} (now {} ms apart)", interval.as_millis()));
    }
    if parts.is_empty() { "no budget to use up".into() } else { parts.join("; ") }
}

fn cell<T: ToString>(result: &Result<T, ProviderError>) -> String {
    match result {
        Ok(value) => value.to_string(),
        Err(error) => format!("failed ({})", error.reason()),
    }
}

/// The cluster's short id as the operator computes it, when the kubeconfig
/// reaches a cluster within a few seconds; the doctor works without one.
async fn cluster_id_if_reachable(configured: Option<String>) -> Option<String> {
    if configured.is_some() {
        return configured;
    }
    let lookup = async {
        let client = kube::Client::try_default().await.ok()?;
        crate::controller::identity::cluster_id(&client, None).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(5), lookup).await.ok().flatten()
}

pub async fn run(args: DoctorArgs) -> Result<String, CliError> {
    if args.cluster {
        return cluster::run(args.namespace, args.operator_namespace, args.json).await;
    }
    let (providers, mut config) = super::offers::configured_providers()?;
    config.cluster_id = cluster_id_if_reachable(config.cluster_id.take()).await;
    let installations = config.installations();
    if args.max_usd.is_some() && !args.rent_test {
        return Err(CliError::Usage("--max-usd is the rent test's budget: add --rent-test".into()));
    }
    let checks = futures::future::join_all(providers.iter().cloned().map(|p| check(p, installations.clone()))).await;
    let all_ok = checks.iter().all(Check::ok);
    let format = Format::chosen(args.json);
    if args.rent_test && !format.is_table() {
        return Err(CliError::Usage("the rent test reports as a table: leave out -o".into()));
    }
    let out = if !format.is_table() {
        let rows: Vec<_> = checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "provider": c.provider,
                    "ok": c.ok(),
                    "offers": c.search.as_ref().ok(),
                    "searchError": c.search.as_ref().err().map(ToString::to_string),
                    "instancesOfThisDeployment": c.listing.as_ref().ok(),
                    "listingError": c.listing.as_ref().err().map(ToString::to_string),
                    "pacing": pacing(c.headroom.limits),
                    "headroom": {
                        "burstLeft": c.headroom.burst_left.map(|(left, _)| left),
                        "burst": c.headroom.burst_left.map(|(_, burst)| burst),
                        "rateLimited": c.headroom.slowed.iter().map(|(e, i)| serde_json::json!({"endpoint": e, "intervalMs": i.as_millis() as u64})).collect::<Vec<_>>(),
                    },
                    "seconds": c.took.as_secs_f64(),
                })
            })
            .collect();
        format.structured(&serde_json::json!({"ok": all_ok, "marketplaces": rows})).unwrap_or_default()
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                vec![
                    c.provider.to_string(),
                    cell(&c.search),
                    cell(&c.listing),
                    pacing(c.headroom.limits),
                    headroom(&c.headroom),
                    format!("{:.1}s", c.took.as_secs_f64()),
                    c.verdict(),
                ]
            })
            .collect();
        let mut out =
            table::render(&["MARKETPLACE", "OFFERS", "OUR INSTANCES", "PACING", "HEADROOM", "TOOK", "VERDICT"], &rows);
        // Error texts never hold a key: every client redacts its own.
        for c in &checks {
            for error in [c.search.as_ref().err(), c.listing.as_ref().err()].into_iter().flatten() {
                out.push_str(&format!("\n{}: {error}", c.provider));
            }
        }
        out
    };
    if !all_ok {
        return Err(CliError::Failed(out));
    }
    match (args.rent_test, args.max_usd) {
        (true, Some(max_usd)) => {
            let test = rent_test::RentTest {
                max_usd,
                timeout: args.timeout,
                providers: args.providers,
                gpu_models: args.gpus,
            };
            match rent_test::run(test, providers, &config).await {
                Ok(rented) => Ok(format!("{}\n\n{rented}", out.trim_end())),
                Err(CliError::Failed(rented)) => Err(CliError::Failed(format!("{}\n\n{rented}", out.trim_end()))),
                Err(other) => Err(other),
            }
        }
        _ => Ok(out),
    }
}

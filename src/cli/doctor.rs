//! `gpu-shopper doctor`: with the operator's credentials, checks each
//! configured marketplace read-only (the key is accepted, search returns
//! offers, the instance listing works, the pacing the client will use) and
//! prints a table. The first thing to run after install. Renting a test
//! machine (`--rent-test`) is not built yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CliError, table};
use crate::crd::ProviderName;
use crate::provider::pacing::Limits;
use crate::provider::{NextStep, OfferQuery, Provider, ProviderError, runpod, tensordock, vastai};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper doctor
  kubectl gpu doctor --json")]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Check {
    provider: ProviderName,
    search: Result<usize, ProviderError>,
    listing: Result<usize, ProviderError>,
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
fn pacing(provider: ProviderName) -> String {
    let limits: Limits = match provider {
        ProviderName::Vastai => vastai::LIMITS,
        ProviderName::Tensordock => tensordock::LIMITS,
        ProviderName::Runpod => runpod::LIMITS,
    };
    let mut parts = Vec::new();
    if let Some(budget) = limits.account {
        parts.push(format!("{} calls per {}s (burst {})", budget.calls, budget.period.as_secs(), budget.burst));
    }
    if let Some(interval) = limits.per_endpoint {
        parts.push(format!("{} ms between calls per endpoint", interval.as_millis()));
    }
    if parts.is_empty() { "none published; slows down on 429".into() } else { parts.join(", ") }
}

async fn check(provider: Arc<dyn Provider>, deployment_id: String) -> Check {
    let started = Instant::now();
    let search = provider.search_offers(&OfferQuery { limit: 200, ..Default::default() }).await.map(|o| o.len());
    let listing = provider.list_instances(&deployment_id).await.map(|i| i.len());
    Check { provider: provider.name(), search, listing, took: started.elapsed() }
}

fn cell<T: ToString>(result: &Result<T, ProviderError>) -> String {
    match result {
        Ok(value) => value.to_string(),
        Err(error) => format!("failed ({})", error.reason()),
    }
}

pub async fn run(args: DoctorArgs) -> Result<String, CliError> {
    let (providers, deployment_id) = super::offers::configured_providers()?;
    let checks = futures::future::join_all(providers.into_iter().map(|p| check(p, deployment_id.clone()))).await;
    let all_ok = checks.iter().all(Check::ok);
    let out = if args.json {
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
                    "pacing": pacing(c.provider),
                    "seconds": c.took.as_secs_f64(),
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({"ok": all_ok, "marketplaces": rows})).unwrap_or_default()
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                vec![
                    c.provider.to_string(),
                    cell(&c.search),
                    cell(&c.listing),
                    pacing(c.provider),
                    format!("{:.1}s", c.took.as_secs_f64()),
                    c.verdict(),
                ]
            })
            .collect();
        let mut out = table::render(&["MARKETPLACE", "OFFERS", "OUR INSTANCES", "PACING", "TOOK", "VERDICT"], &rows);
        // Error texts never hold a key: every client redacts its own.
        for c in &checks {
            for error in [c.search.as_ref().err(), c.listing.as_ref().err()].into_iter().flatten() {
                out.push_str(&format!("\n{}: {error}", c.provider));
            }
        }
        out
    };
    if all_ok { Ok(out) } else { Err(CliError::Failed(out)) }
}

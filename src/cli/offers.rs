//! `gpu-shopper offers`: the live market, ranked, from the configured marketplaces.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;

use super::{CliError, table};
use crate::config::Config;
use crate::crd::{Billing, GpuOfferFilter, OfferRequirements, ProviderName};
use crate::market;
use crate::provider::{self, Provider, http::CallPolicy};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper offers --gpu \"RTX 4090\" --max-price 0.5
  gpu-shopper offers --filter cheap-4090 -n ml --json
  kubectl gpu offers --min-vram 80 --provider runpod")]
pub struct OffersArgs {
    /// Use the constraints of this GpuOfferFilter (flags add to them; the stricter wins).
    #[arg(long)]
    pub filter: Option<String>,
    /// Namespace of the filter.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// GPU model to accept (repeatable).
    #[arg(long = "gpu")]
    pub gpus: Vec<String>,
    #[arg(long)]
    pub gpu_count: Option<u32>,
    /// Minimum memory per GPU, GiB.
    #[arg(long)]
    pub min_vram: Option<u32>,
    /// Minimum CUDA version, for example 12.4.
    #[arg(long)]
    pub min_cuda: Option<String>,
    /// Highest price for the machine, USD per hour.
    #[arg(long)]
    pub max_price: Option<f64>,
    /// Marketplace to search (repeatable): vastai, tensordock, runpod.
    #[arg(long = "provider", value_parser = parse_provider)]
    pub providers: Vec<ProviderName>,
    /// Include interruptible (spot) offers.
    #[arg(long)]
    pub interruptible: bool,
    /// At most this many rows.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_provider(text: &str) -> Result<ProviderName, String> {
    ProviderName::ALL
        .into_iter()
        .find(|p| p.as_str() == text)
        .ok_or_else(|| format!("unknown marketplace {text:?}: use vastai, tensordock or runpod"))
}

fn providers() -> Result<Vec<Arc<dyn Provider>>, CliError> {
    Ok(configured_providers()?.0)
}

/// Clients for every marketplace with credentials, and the configuration they
/// came from (deployment id `cli` when unset: the CLI needs none; everything else
/// is read as the operator reads it).
pub(super) fn configured_providers() -> Result<(Vec<Arc<dyn Provider>>, Config), CliError> {
    let config = Config::from_lookup(|name| {
        std::env::var(name).ok().or_else(|| (name == crate::config::env::DEPLOYMENT_ID).then(|| "cli".to_string()))
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let providers = provider::from_config(&config, &CallPolicy::default());
    if providers.is_empty() {
        return Err(CliError::Usage(
            "no marketplace credentials: set VASTAI_API_KEY, TENSORDOCK_AUTH_ID + TENSORDOCK_API_TOKEN or RUNPOD_API_KEY".into(),
        ));
    }
    Ok((providers, config))
}

pub async fn run(args: OffersArgs) -> Result<String, CliError> {
    let flags = OfferRequirements {
        gpu_models: args.gpus.clone(),
        gpu_count: args.gpu_count,
        min_vram_gb: args.min_vram,
        min_cuda_version: args.min_cuda.clone(),
        max_price_per_hour: args.max_price,
        providers: args.providers.clone(),
        billing: args.interruptible.then_some(Billing::Any),
        ..Default::default()
    };
    let requirements = match &args.filter {
        None => flags,
        Some(name) => {
            let namespace = super::namespace(args.namespace.clone()).await;
            let filters: Api<GpuOfferFilter> = Api::namespaced(super::client().await?, &namespace);
            let filter = filters.get(name).await?;
            market::merge(&filter.spec.requirements, &flags).map_err(CliError::Usage)?
        }
    };
    let view = market::search(&providers()?, &requirements, Duration::from_secs(20)).await;
    let mut out = String::new();
    if args.json {
        let offers: Vec<_> = view
            .offers
            .iter()
            .take(args.limit)
            .map(|o| {
                serde_json::json!({
                    "provider": o.provider, "offerId": o.id, "gpuModel": o.gpu_model, "gpuCount": o.gpu_count,
                    "vramGb": o.vram_gb, "cudaVersion": o.cuda_version, "pricePerHour": o.price_per_hour,
                    "reliability": o.reliability, "location": o.location, "interruptible": o.interruptible,
                })
            })
            .collect();
        let failures: Vec<String> = view.failures.iter().map(|f| f.error.to_string()).collect();
        out = serde_json::to_string_pretty(&serde_json::json!({"offers": offers, "failures": failures})).expect("json");
        out.push('\n');
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = view
        .offers
        .iter()
        .take(args.limit)
        .enumerate()
        .map(|(i, o)| {
            vec![
                (i + 1).to_string(),
                o.provider.to_string(),
                o.id.clone(),
                format!("{}x {}", o.gpu_count, o.gpu_model),
                format!("{} GiB", o.vram_gb),
                o.cuda_version.clone().unwrap_or_else(|| "-".into()),
                format!("{:.3}", o.price_per_hour),
                o.reliability.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
                o.location.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["#", "PROVIDER", "OFFER", "GPU", "VRAM", "CUDA", "$/H", "RELIABILITY", "LOCATION"],
        &rows,
    ));
    out.push_str(&format!("{} matching offers", view.offers.len()));
    for failure in &view.failures {
        out.push_str(&format!("\nwarning: {}", failure.error));
    }
    out.push('\n');
    Ok(out)
}

//! `gpu-shopper offers`: the live market, ranked, from the configured marketplaces.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;

use super::output::Format;
use super::{CliError, table};
use crate::config::{Config, ControllerArgs};
use crate::crd::{Billing, GpuOfferFilter, OfferRequirements, ProviderName};
use crate::market;
use crate::provider::{self, Provider, http::CallPolicy};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper offers --gpu \"RTX 4090\" --max-price 0.5
  gpu-shopper offers --filter cheap-4090 -n ml --json
  kubectl gpu-shopper offers --min-vram 80 --provider runpod")]
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
    #[arg(long = "provider", value_parser = super::parse_provider)]
    pub providers: Vec<ProviderName>,
    /// Include interruptible (spot) offers.
    #[arg(long)]
    pub interruptible: bool,
    /// At most this many rows.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Same as -o json.
    #[arg(long, hide = true)]
    pub json: bool,
}

/// Clients for every marketplace with credentials, and the configuration they
/// came from (deployment id `cli` when unset: the CLI needs none; everything else
/// is read as the operator reads it).
pub(super) fn configured_providers() -> Result<(Vec<Arc<dyn Provider>>, Config), CliError> {
    let no_flags: [&str; 0] = [];
    let mut settings = ControllerArgs::parse_from(no_flags).map_err(|e| CliError::Usage(e.to_string()))?;
    settings.deployment_id.get_or_insert_with(|| "cli".into());
    let config = Config::from_args(settings).map_err(|e| CliError::Usage(e.to_string()))?;
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
    let format = Format::chosen(args.json);
    let filter = match &args.filter {
        None => None,
        Some(name) => {
            let namespace = super::namespace(args.namespace.clone()).await;
            let filters: Api<GpuOfferFilter> = Api::namespaced(super::client().await?, &namespace);
            Some(filters.get(name).await?)
        }
    };
    let providers = match (configured_providers(), &filter) {
        (Ok((providers, _)), _) => providers,
        // No marketplace keys here: the filter's status is the operator's view of the market.
        (Err(_), Some(filter)) => return Ok(from_filter_status(filter, format, args.limit)),
        (Err(error), None) => return Err(error),
    };
    let requirements = match &filter {
        None => flags,
        Some(filter) => market::merge(&filter.spec.requirements, &flags).map_err(CliError::Usage)?,
    };
    let view = market::search(&providers, &requirements, Duration::from_secs(20)).await;
    let mut out = String::new();
    if !format.is_table() {
        let offers: Vec<_> = view
            .offers
            .iter()
            .take(args.limit)
            .map(|o| {
                serde_json::json!({
                    "provider": o.provider, "offerId": o.id, "gpuModel": o.gpu_model, "gpuCount": o.gpu_count,
                    "vramGb": o.vram_gb, "cudaVersion": o.cuda_version, "pricePerHour": o.price_per_hour,
                    "reliability": o.reliability, "location": o.location, "country": o.country,
                    "interruptible": o.interruptible,
                })
            })
            .collect();
        let failures: Vec<String> = view.failures.iter().map(|f| f.error.to_string()).collect();
        let value = serde_json::json!({"offers": offers, "failures": failures});
        return Ok(format.structured(&value).unwrap_or_default());
    }
    let wide = format == Format::Wide;
    let rows: Vec<Vec<String>> = view
        .offers
        .iter()
        .take(args.limit)
        .enumerate()
        .map(|(i, o)| {
            let mut row = vec![
                (i + 1).to_string(),
                o.provider.to_string(),
                o.id.clone(),
                format!("{}x {}", o.gpu_count, o.gpu_model),
                format!("{} GiB", o.vram_gb),
                o.cuda_version.clone().unwrap_or_else(|| "-".into()),
                format!("{:.3}", o.price_per_hour),
                o.reliability.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
                o.location.clone().unwrap_or_else(|| "-".into()),
            ];
            if wide {
                row.push(o.country.clone().unwrap_or_else(|| "-".into()));
                row.push(if o.interruptible { "yes" } else { "no" }.into());
                row.push(o.host_id.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut headers = vec!["#", "PROVIDER", "OFFER", "GPU", "VRAM", "CUDA", "$/H", "RELIABILITY", "LOCATION"];
    if wide {
        headers.extend(["COUNTRY", "SPOT", "HOST"]);
    }
    out.push_str(&table::render(&headers, &rows));
    out.push_str(&format!("{} matching offers", view.offers.len()));
    for failure in &view.failures {
        out.push_str(&format!("\nwarning: {}", failure.error));
    }
    out.push('\n');
    Ok(out)
}

/// The best offers a filter's status holds, as the operator last searched them.
fn from_filter_status(filter: &GpuOfferFilter, format: Format, limit: usize) -> String {
    let status = filter.status.clone().unwrap_or_default();
    let offers: Vec<&crate::crd::offer_filter::OfferSummary> = status.best_offers.iter().take(limit).collect();
    let searched = status.last_refresh_time.as_ref().map(|t| t.0.to_string()).unwrap_or_else(|| "never".into());
    if let Some(structured) = format.structured(&serde_json::json!({
        "offers": offers,
        "matchingOffers": status.matching_offers,
        "searchedAt": status.last_refresh_time,
        "source": "filter status",
    })) {
        return structured;
    }
    let rows: Vec<Vec<String>> = offers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            vec![
                (i + 1).to_string(),
                o.provider.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                o.offer_id.clone(),
                format!("{}x {}", o.gpu_count, o.gpu_model),
                format!("{} GiB", o.vram_gb),
                o.cuda_version.clone().unwrap_or_else(|| "-".into()),
                format!("{:.3}", o.price_per_hour),
                o.location.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table::render(&["#", "PROVIDER", "OFFER", "GPU", "VRAM", "CUDA", "$/H", "LOCATION"], &rows);
    out.push_str(&format!(
        "{} matching offers, from the filter's status (the operator searched at {searched}; no marketplace keys here)\n",
        status.matching_offers.unwrap_or(0)
    ));
    out
}

//! `gpu-shopper cost`: accrued cost per session and per consumer, from the
//! sessions' status.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

use super::output::Format;
use super::{CliError, table};
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper cost -A
  gpu-shopper cost --consumer team-vision --since 2026-11-01")]
pub struct CostArgs {
    /// Only sessions of this consumer.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only sessions created on or after this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Same as -o json.
    #[arg(long, hide = true)]
    pub json: bool,
}

fn parse_since(text: &str) -> Result<Timestamp, CliError> {
    text.parse::<Timestamp>()
        .or_else(|_| {
            text.parse::<jiff::civil::Date>().and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC)).map(|z| z.timestamp())
        })
        .map_err(|_| {
            CliError::Usage(format!("--since {text:?} is not a date (2026-11-01) or a time (2026-11-01T08:00:00Z)"))
        })
}

pub async fn run(args: CostArgs) -> Result<String, CliError> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let client = super::client().await?;
    let sessions: Api<GpuSession> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, &super::namespace(args.namespace.clone()).await)
    };
    let list = sessions.list(&ListParams::default()).await?;
    let mut rows = Vec::new();
    let mut per_consumer: BTreeMap<String, f64> = BTreeMap::new();
    for session in list.items {
        let consumer = session.spec.consumer.clone().unwrap_or_else(|| "(none)".into());
        if args.consumer.as_ref().is_some_and(|c| *c != consumer) {
            continue;
        }
        let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let (Some(since), Some(created)) = (since, created)
            && created < since
        {
            continue;
        }
        let status = session.status.clone().unwrap_or_default();
        let cost = status.accrued_cost_usd.unwrap_or(0.0);
        *per_consumer.entry(consumer.clone()).or_default() += cost;
        rows.push((
            session.metadata.namespace.clone().unwrap_or_default(),
            session.metadata.name.clone().unwrap_or_default(),
            consumer,
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            status.provider.map(|p| p.to_string()).unwrap_or_default(),
            cost,
        ));
    }
    let total: f64 = per_consumer.values().sum();
    let format = Format::chosen(args.json);
    if !format.is_table() {
        let sessions: Vec<_> = rows
            .iter()
            .map(|(ns, name, consumer, phase, provider, cost)| {
                serde_json::json!({"namespace": ns, "name": name, "consumer": consumer, "phase": phase, "provider": provider, "costUsd": cost})
            })
            .collect();
        let value = serde_json::json!({"sessions": sessions, "consumers": per_consumer, "totalUsd": total});
        return Ok(format.structured(&value).unwrap_or_default());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(ns, name, consumer, phase, provider, cost)| {
            vec![ns.clone(), name.clone(), consumer.clone(), phase.clone(), provider.clone(), format!("{cost:.4}")]
        })
        .collect();
    let mut out = table::render(&["NAMESPACE", "SESSION", "CONSUMER", "PHASE", "PROVIDER", "COST $"], &table_rows);
    out.push('\n');
    let consumer_rows: Vec<Vec<String>> =
        per_consumer.iter().map(|(c, cost)| vec![c.clone(), format!("{cost:.4}")]).collect();
    out.push_str(&table::render(&["CONSUMER", "COST $"], &consumer_rows));
    out.push_str(&format!("total ${total:.4}\n"));
    Ok(out)
}

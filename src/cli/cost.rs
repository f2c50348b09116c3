//! `gpu-shopper cost`: accrued cost per session and per consumer: live and
//! ended sessions from their status, deleted ones from the CleanupComplete
//! Event the operator left (which states what the session cost). Each row
//! says which it came from.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;

use k8s_openapi::api::core::v1::Event;

use super::output::Format;
use super::{CliError, table};
use crate::controller::context::CONTROLLER_NAME;
use crate::controller::spend_record::{SpendRecord, provider_in};
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper cost -A
  gpu-shopper cost --consumer team-vision --since 2026-11-01")]
pub struct CostArgs {
    /// Only sessions of this consumer.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only sessions created on or after this date (YYYY-MM-DD) or time (RFC 3339); deleted
    /// sessions, whose creation is not kept, count from when they ended.
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

/// One session's cost and where it was read.
struct Row {
    namespace: String,
    name: String,
    consumer: String,
    phase: String,
    provider: String,
    cost: f64,
    source: &'static str,
}

/// Where deleted sessions come from, and how far back that reaches.
const HISTORY: &str = "deleted sessions come from their CleanupComplete Events, which the API server keeps for its --event-ttl (1h by default); gpu_shopper_spend_usd_total keeps the whole history per namespace and marketplace (docs/metrics.md)";

/// Deleted sessions, from the CleanupComplete Events that state their cost (one per session).
/// Sessions still listed (`live`, by uid) are counted from their status, not again here.
async fn deleted(events: Api<Event>, live: &HashSet<String>) -> Result<Vec<(Row, Option<Timestamp>)>, kube::Error> {
    let only_ends = ListParams::default().fields("reason=CleanupComplete,involvedObject.kind=GpuSession");
    let mut seen = live.clone();
    let mut rows = Vec::new();
    for event in events.list(&only_ends).await?.items {
        // Only the operator's own Events state a cost.
        if event.reporting_component.as_deref() != Some(CONTROLLER_NAME) {
            continue;
        }
        let session = &event.involved_object;
        let note = event.message.clone().unwrap_or_default();
        let Some(record) = SpendRecord::parse(&note) else { continue };
        if !seen.insert(session.uid.clone().unwrap_or_default()) {
            continue;
        }
        let ended = event
            .last_timestamp
            .map(|t| t.0)
            .or(event.event_time.map(|t| t.0))
            .or(event.metadata.creation_timestamp.map(|t| t.0));
        rows.push((
            Row {
                namespace: session.namespace.clone().unwrap_or_default(),
                name: session.name.clone().unwrap_or_default(),
                consumer: record.consumer.unwrap_or_else(|| "(none)".into()),
                phase: "Deleted".into(),
                provider: provider_in(&note).unwrap_or_default().to_string(),
                cost: record.cost_usd,
                source: "event",
            },
            ended,
        ));
    }
    Ok(rows)
}

pub async fn run(args: CostArgs) -> Result<String, CliError> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let client = super::client().await?;
    let (sessions, events): (Api<GpuSession>, Api<Event>) = if args.all_namespaces {
        (Api::all(client.clone()), Api::all(client))
    } else {
        let namespace = super::namespace(args.namespace.clone()).await;
        (Api::namespaced(client.clone(), &namespace), Api::namespaced(client, &namespace))
    };
    let list = sessions.list(&ListParams::default()).await?;
    let live: HashSet<String> = list.items.iter().filter_map(|s| s.metadata.uid.clone()).collect();
    let mut candidates = Vec::new();
    for session in list.items {
        let status = session.status.clone().unwrap_or_default();
        let row = Row {
            namespace: session.metadata.namespace.clone().unwrap_or_default(),
            name: session.metadata.name.clone().unwrap_or_default(),
            consumer: session.spec.consumer.clone().unwrap_or_else(|| "(none)".into()),
            phase: status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            provider: status.provider.map(|p| p.to_string()).unwrap_or_default(),
            cost: status.accrued_cost_usd.unwrap_or(0.0),
            source: "status",
        };
        candidates.push((row, session.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    }
    // Sessions already deleted: without read access to Events they are left out, and the output says so.
    let history = match deleted(events, &live).await {
        Ok(rows) => {
            candidates.extend(rows);
            HISTORY.to_string()
        }
        Err(error) => format!("deleted sessions are not included: the Events could not be read ({error})"),
    };
    let mut rows = Vec::new();
    let mut per_consumer: BTreeMap<String, f64> = BTreeMap::new();
    for (row, when) in candidates {
        if args.consumer.as_ref().is_some_and(|c| *c != row.consumer) {
            continue;
        }
        // Live sessions count from their creation, deleted ones from their end.
        if let (Some(since), Some(when)) = (since, when)
            && when < since
        {
            continue;
        }
        *per_consumer.entry(row.consumer.clone()).or_default() += row.cost;
        rows.push(row);
    }
    let total: f64 = per_consumer.values().sum();
    let format = Format::chosen(args.json);
    if !format.is_table() {
        let sessions: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"namespace": r.namespace, "name": r.name, "consumer": r.consumer, "phase": r.phase, "provider": r.provider, "costUsd": r.cost, "source": r.source})
            })
            .collect();
        let value =
            serde_json::json!({"sessions": sessions, "consumers": per_consumer, "totalUsd": total, "history": history});
        return Ok(format.structured(&value).unwrap_or_default());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                r.consumer.clone(),
                r.phase.clone(),
                r.provider.clone(),
                format!("{:.4}", r.cost),
                r.source.to_string(),
            ]
        })
        .collect();
    let mut out =
        table::render(&["NAMESPACE", "SESSION", "CONSUMER", "PHASE", "PROVIDER", "COST $", "FROM"], &table_rows);
    out.push('\n');
    let consumer_rows: Vec<Vec<String>> =
        per_consumer.iter().map(|(c, cost)| vec![c.clone(), format!("{cost:.4}")]).collect();
    out.push_str(&table::render(&["CONSUMER", "COST $"], &consumer_rows));
    out.push_str(&format!("total ${total:.4}\n{history}\n"));
    Ok(out)
}

//! `gpu-shopper doctor --cluster`: the cluster side, as the current user sees
//! it. Are the resources served, and with this CLI's schema? Is an operator
//! leading, and does it keep up with this namespace's sessions? May this user
//! do what the commands need? Each row says what to do when it is not so.

use std::fmt;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource};

use crate::cli::CliError;
use crate::cli::output::Format;
use crate::cli::table;
use crate::crd::{GROUP, GpuOfferFilter, GpuSession};

/// How a check came out: a failure stops a user; a warning is worth reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "warning",
            Outcome::Fail => "FAILED",
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub check: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// What the API server said, without the whole Status structure.
fn said(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn row(check: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Row {
    Row { check: check.into(), outcome, detail: detail.into() }
}

/// Who the API server says the current user is.
async fn identity(client: &Client) -> Row {
    let review = SelfSubjectReview::default();
    match Api::<SelfSubjectReview>::all(client.clone()).create(&PostParams::default(), &review).await {
        Ok(answer) => {
            let user = answer.status.and_then(|s| s.user_info).unwrap_or_default();
            let groups = user.groups.unwrap_or_default().join(", ");
            row("user", Outcome::Ok, format!("{} (groups: {groups})", user.username.unwrap_or_default()))
        }
        Err(error) => row("user", Outcome::Warn, format!("the API server did not say who you are: {}", said(&error))),
    }
}

/// The resource `R` is served, and its installed schema is the one this CLI was built with.
async fn served<R: Resource<DynamicType = ()>>(client: &Client) -> Row {
    let plural = R::plural(&()).into_owned();
    let name = format!("{plural}.{GROUP}");
    let api_version = R::api_version(&()).into_owned();
    let install = "install the chart, or `gpu-shopper crds | kubectl apply -f -`";
    match client.list_api_group_resources(&api_version).await {
        Ok(list) if list.resources.iter().any(|r| r.name == plural) => {}
        Ok(_) | Err(kube::Error::Api(_)) => {
            return row(format!("resource {name}"), Outcome::Fail, format!("{api_version} is not served: {install}"));
        }
        Err(error) => {
            return row(
                format!("resource {name}"),
                Outcome::Fail,
                format!("cannot ask the API server: {}", said(&error)),
            );
        }
    }
    let ours = crate::crd::crds().into_iter().find(|crd| crd.metadata.name.as_deref() == Some(name.as_str()));
    let (outcome, detail) = match Api::<CustomResourceDefinition>::all(client.clone()).get(&name).await {
        Ok(installed) if ours.as_ref().is_some_and(|ours| same_schemas(ours, &installed)) => {
            (Outcome::Ok, format!("{api_version} served; schema matches this CLI ({})", env!("CARGO_PKG_VERSION")))
        }
        Ok(_) => (
            Outcome::Warn,
            format!(
                "{api_version} served, but its schema is not this CLI's ({}): upgrade the chart, or use the CLI of the installed version",
                env!("CARGO_PKG_VERSION")
            ),
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            (Outcome::Ok, format!("{api_version} served (schema not compared: you may not read CRDs)"))
        }
        Err(error) => (Outcome::Warn, format!("{api_version} served; the CRD could not be read: {}", said(&error))),
    };
    row(format!("resource {name}"), outcome, detail)
}

/// Each version's name and schema, as this CLI writes them and as the cluster holds them.
fn same_schemas(ours: &CustomResourceDefinition, installed: &CustomResourceDefinition) -> bool {
    let schemas = |crd: &CustomResourceDefinition| -> Vec<(String, serde_json::Value)> {
        crd.spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), serde_json::to_value(&v.schema).unwrap_or_default()))
            .collect()
    };
    schemas(ours) == schemas(installed)
}

/// An operator holds a gpu-shopper Lease and renews it. Leases are looked for in
/// `namespace`, else in every namespace the user may read.
async fn leader(client: &Client, namespace: Option<&str>) -> Row {
    let leases: Api<Lease> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let found = match leases.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return row(
                "operator",
                Outcome::Warn,
                "cannot tell: you may not read Leases there (ask for read access to leases in the operator's namespace, and give it with --operator-namespace)",
            );
        }
        Err(error) => return row("operator", Outcome::Warn, format!("cannot list Leases: {}", said(&error))),
    };
    let now = Timestamp::now();
    let (mut leading, mut stale, mut released) = (Vec::new(), Vec::new(), Vec::new());
    for lease in found.iter().filter(|l| l.metadata.name.as_deref().is_some_and(|n| n.starts_with("gpu-shopper"))) {
        let spec = lease.spec.clone().unwrap_or_default();
        let at = format!(
            "{}/{}",
            lease.metadata.namespace.as_deref().unwrap_or_default(),
            lease.metadata.name.as_deref().unwrap_or_default()
        );
        let lasts = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
        let ago = |t: Timestamp| format!("{}s ago", now.duration_since(t).as_secs());
        match (spec.holder_identity.filter(|h| !h.is_empty()), spec.renew_time.map(|t| t.0)) {
            // This machine's clock may run ahead of the operator's: a lease is read as
            // lapsed only CLOCK_SKEW after it would have.
            (Some(holder), Some(renewed)) if renewed + lasts + CLOCK_SKEW >= now => {
                leading.push(format!("{holder} leads ({at}, renewed {})", ago(renewed)))
            }
            (Some(holder), renewed) => stale.push(format!(
                "{at} names {holder}, last renewed {}",
                renewed.map(ago).unwrap_or_else(|| "never".into())
            )),
            // A replica that stopped cleanly gave its lease back (or election was turned off).
            (None, _) => released.push(at),
        }
    }
    let also = |others: &[String], what: &str| {
        if others.is_empty() { String::new() } else { format!("; {what}: {}", others.join(", ")) }
    };
    if !leading.is_empty() {
        let outcome = if stale.is_empty() { Outcome::Ok } else { Outcome::Warn };
        return row("operator", outcome, format!("{}{}", leading.join("; "), also(&stale, "not renewed")));
    }
    if !stale.is_empty() {
        return row(
            "operator",
            Outcome::Fail,
            format!(
                "no operator leads: {}. Its replica stopped without giving the lease back: check its pods (kubectl -n NAMESPACE get pods -l app.kubernetes.io/name=gpu-shopper) and their logs",
                stale.join("; ")
            ),
        );
    }
    if !released.is_empty() {
        return row(
            "operator",
            Outcome::Warn,
            format!(
                "no replica holds {} (given back on a clean stop, or leader election is off): see the sessions row",
                released.join(", ")
            ),
        );
    }
    row(
        "operator",
        Outcome::Warn,
        "no gpu-shopper Lease found (leader election off, another lease name, or not installed): see the sessions row",
    )
}

/// How far this machine's clock may run ahead of the operator's before a lease reads as lapsed.
const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The operator keeps up with this namespace: every session's spec is observed.
async fn sessions_observed(client: &Client, namespace: &str) -> Row {
    let check = format!("sessions in {namespace}");
    let list = match Api::<GpuSession>::namespaced(client.clone(), namespace).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(error) => return row(check, Outcome::Warn, format!("cannot list them: {}", said(&error))),
    };
    let now = Timestamp::now();
    let behind: Vec<String> = list
        .iter()
        .filter(|s| {
            let observed = s.status.as_ref().and_then(|st| st.observed_generation);
            // A minute's grace: a session applied just now is not yet a sign of trouble.
            let old = s.metadata.creation_timestamp.as_ref().is_some_and(|t| now.duration_since(t.0).as_secs() > 60);
            old && observed < s.metadata.generation
        })
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    match (list.len(), behind.is_empty()) {
        (0, _) => row(check, Outcome::Ok, "none yet"),
        (all, true) => row(check, Outcome::Ok, format!("{all} of {all} observed by the operator")),
        (all, false) => row(
            check,
            Outcome::Fail,
            format!(
                "{} of {all} not observed for over a minute ({}): no operator watches {namespace}, or it is stuck",
                behind.len(),
                behind.join(", ")
            ),
        ),
    }
}

/// What the user commands need, each asked of the API server as this user.
const PERMISSIONS: &[(&str, &str, Outcome, &str)] = &[
    // (verb, resource, outcome if refused, what it is for)
    ("create", "gpusessions", Outcome::Fail, "rent a machine"),
    ("get", "gpusessions", Outcome::Fail, "read status, wait, ssh"),
    ("list", "gpusessions", Outcome::Warn, "wait and cost"),
    ("watch", "gpusessions", Outcome::Warn, "wait"),
    ("delete", "gpusessions", Outcome::Fail, "give a machine back"),
    ("list", "gpuofferfilters", Outcome::Warn, "use offers --filter"),
    ("get", "secrets", Outcome::Warn, "read a session's key Secret (ssh, cp, logs, port-forward)"),
];

async fn permitted(client: &Client, namespace: &str, verb: &str, resource: &str) -> Result<bool, kube::Error> {
    let group = if resource == "secrets" { String::new() } else { GROUP.to_string() };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.to_string()),
                group: Some(group),
                resource: Some(resource.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn permissions(client: &Client, namespace: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (verb, resource, refused, purpose) in PERMISSIONS {
        let check = format!("may {verb} {resource}");
        rows.push(match permitted(client, namespace, verb, resource).await {
            Ok(true) => row(check, Outcome::Ok, format!("in {namespace}, to {purpose}")),
            Ok(false) => row(
                check,
                *refused,
                format!(
                    "not in {namespace}, needed to {purpose}: ask for Kubernetes' edit role there (it carries gpu-shopper's through aggregation)"
                ),
            ),
            Err(error) => row(check, Outcome::Warn, format!("the API server did not answer: {}", said(&error))),
        });
    }
    rows
}

/// Every cluster check, in the order a user reads them.
pub async fn checks(client: &Client, namespace: &str, operator_namespace: Option<&str>) -> Vec<Row> {
    let mut rows =
        vec![identity(client).await, served::<GpuSession>(client).await, served::<GpuOfferFilter>(client).await];
    rows.push(leader(client, operator_namespace).await);
    rows.push(sessions_observed(client, namespace).await);
    rows.extend(permissions(client, namespace).await);
    rows
}

/// The report, as a table or -o json/yaml; an error (exit 1) when any check failed.
pub async fn run(
    namespace: Option<String>,
    operator_namespace: Option<String>,
    json: bool,
) -> Result<String, CliError> {
    let client = crate::cli::client().await?;
    let namespace = crate::cli::namespace(namespace).await;
    let rows = checks(&client, &namespace, operator_namespace.as_deref()).await;
    let ok = rows.iter().all(|r| r.outcome != Outcome::Fail);
    let format = Format::chosen(json);
    let out = match format.structured(&serde_json::json!({"ok": ok, "namespace": namespace, "checks": rows})) {
        Some(structured) => structured,
        None => {
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| vec![r.check.clone(), r.outcome.to_string(), r.detail.clone()]).collect();
            table::render(&["CHECK", "RESULT", "DETAIL"], &cells)
        }
    };
    if ok { Ok(out) } else { Err(CliError::Failed(out)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_that_lost_a_field_is_not_this_clis() {
        let ours = crate::crd::crds().remove(1);
        assert!(same_schemas(&ours, &ours.clone()));
        let mut older = ours.clone();
        let schema = older.spec.versions[0].schema.as_mut().unwrap().open_api_v3_schema.as_mut().unwrap();
        let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
        spec.properties.as_mut().unwrap().pop_first();
        assert!(!same_schemas(&ours, &older));
    }
}

//! `gpu-shopper uninstall-guard`: the chart's pre-delete hook. Exits 1, naming
//! them, while GpuSessions exist: uninstalling the operator first would leave
//! their machines billing with nobody to destroy them.

use kube::api::ListParams;

use super::CliError;
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    /// Only these namespaces, comma-separated (the chart passes its watched ones); default: every namespace.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

pub async fn run(args: GuardArgs) -> Result<String, CliError> {
    let client = super::client().await?;
    let namespaces = crate::config::namespace_list(args.watch_namespace.as_deref());
    let mut items = Vec::new();
    for api in crate::controller::watched_apis::<GpuSession>(&client, &namespaces) {
        items.extend(api.list_metadata(&ListParams::default()).await?.items);
    }
    if items.is_empty() {
        return Ok("no GpuSession exists: the operator may be uninstalled\n".into());
    }
    let names: Vec<String> = items
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default()
            )
        })
        .collect();
    Err(CliError::Failed(format!(
        "refusing to uninstall: {} GpuSession(s) still exist ({}); without the operator their machines would keep billing. Delete them first and wait until they are gone: kubectl delete gpusessions --all -A --wait",
        names.len(),
        names.join(", ")
    )))
}

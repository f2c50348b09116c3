//! `gpu-shopper uninstall-guard`: the chart's pre-delete hook. Exits 1, naming
//! them, while GpuSessions exist: uninstalling the operator first would leave
//! their machines billing with nobody to destroy them.

use kube::Api;
use kube::api::ListParams;

use super::CliError;
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    /// Only this namespace (the chart passes its watchNamespace); default: every namespace.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

pub async fn run(args: GuardArgs) -> Result<String, CliError> {
    let client = super::client().await?;
    let sessions: Api<GpuSession> = match args.watch_namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let list = sessions.list_metadata(&ListParams::default()).await?;
    if list.items.is_empty() {
        return Ok("no GpuSession exists: the operator may be uninstalled\n".into());
    }
    let names: Vec<String> = list
        .items
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

//! `gpu-shopper status SESSION`: conditions and attempts, readable, with what
//! to do next for a failure.

use kube::Api;

use super::output::Format;
use super::{CliError, table};
use crate::crd::GpuSession;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper status llama-inference -n ml
  kubectl gpu-shopper status finetune-job")]
pub struct StatusArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// What to do about a reason, for the reasons a user can act on.
pub fn advice(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "NoProvidersConfigured" => {
            "the operator has no marketplace credentials: ask its admin to set them (see docs/providers.md)"
        }
        "OfferFilterNotFound" => "create the GpuOfferFilter named in spec.offerFilterRef, or fix the name",
        "ConflictingRequirements" => "the filter and spec.requirements contradict each other: relax one of them",
        "NoMatchingOffers" => {
            "nothing on the market matches now: raise maxPricePerHour, allow more GPU models or providers, or wait"
        }
        "AttemptsExhausted" => {
            "every offer tried failed (see the attempts): loosen the requirements or raise spec.maxAttempts, then recreate the session"
        }
        "CUDAMismatch" => {
            "the host's real CUDA was below the requirement; the operator already avoids it and tries another"
        }
        "SSHUnreachable" => "the machine never accepted SSH; raise spec.timeouts.sshReady if images are slow to start",
        "WorkloadTimeout" => {
            "the workload was not ready in time: raise spec.timeouts.workloadReady (large models take long to load) or check the command"
        }
        "WorkloadCrashed" => {
            "the model server failed its first prompt on that host (often CUDA too old for the image); set requirements.minCudaVersion"
        }
        "JobFailed" => "the job exited non-zero: read status.job.logTail, fix the command, recreate the session",
        "DriverMissing" => "the image has no NVIDIA driver: use a CUDA image",
        "BudgetReached" | "Expired" | "Idle" => {
            "the session ended as configured; recreate it (or raise lifetime/budget) to continue"
        }
        "CreateRejected" => "the marketplace refused the request: check image and disk size",
        "InstanceLost" | "Stopped" | "Preempted" => {
            "the machine was destroyed, stopped or preempted outside the operator; cost stopped when it was last seen alive; set spec.onInstanceLoss: Replace to get a new machine automatically"
        }
        "MaxDurationReached" => {
            "the operator's MAX_SESSION_DURATION (counted from the first create) was reached; recreate the session to continue"
        }
        "SecretConflict" => {
            "a Secret named <session>-ssh exists and belongs to something else: delete or rename it, or rename the session"
        }
        "EndpointNameTaken" => {
            "a Service (or the gateway's objects) of that name exists and belongs to something else: delete or rename it, or rename the session"
        }
        "InvalidServiceName" => {
            "an Inference session's Service is named after it: rename the session to a DNS label (a-z, 0-9, '-')"
        }
        "ApiKeySecretNotFound" | "ApiKeyMissing" => {
            "create the Secret named in workload.inference.apiKeySecretRef with the key it names, or drop the reference to get a generated key"
        }
        "GatewayNotServing" => {
            "the gateway Deployment <session>-gateway does not serve the machine yet: check its pods and their logs"
        }
        "PriceAboveLimit" => {
            "the marketplace placed the machine at a price above maxPricePerHour; it was destroyed and the next offer is tried"
        }
        "SecretNotFound" | "SecretKeyNotFound" | "ConfigMapNotFound" | "ConfigMapKeyNotFound" => {
            "create the Secret or ConfigMap (and key) the session names, in its namespace; nothing was rented"
        }
        "InputNotFound" | "InputAccessDenied" | "OutputBucketNotFound" | "OutputAccessDenied" => {
            "fix the input or output named in the message (the object, the bucket, or the credentials Secret); nothing was rented"
        }
        "InputInvalid" => {
            "an input is wrong (HTTP 403/404, or a SHA-256 that does not match): fix it and recreate the session"
        }
        "InputsFailed" | "InputsTooSlow" => {
            "the machine could not fetch its inputs; the operator avoids it and tries another (raise timeouts.inputsReady for large data)"
        }
        "OutputsLost" => {
            "some outputs were not saved before the machine went (see status.job.lost); check the bucket and its credentials, or raise timeouts.outputs"
        }
        "NamespaceCapReached" => {
            "the namespace's spending cap (annotations on its Namespace) is reached: the session rents when another ends; ask a cluster admin to raise it (docs/tenancy.md)"
        }
        "InstanceNotOwned" => {
            "status named a machine that does not carry this session's label, so it was left alone; recreate the session, and do not patch its status"
        }
        "CreateOutcomeUnknown" => {
            "a create's answer was lost; the operator waits for that marketplace's listing to show whether it landed (nothing to do)"
        }
        _ => return None,
    })
}

pub async fn run(args: StatusArgs) -> Result<String, CliError> {
    let namespace = super::namespace(args.namespace).await;
    let sessions: Api<GpuSession> = Api::namespaced(super::client().await?, &namespace);
    let session = sessions.get(&args.session).await?;
    if let Some(structured) = Format::chosen(false).structured(&serde_json::to_value(&session).unwrap_or_default()) {
        return Ok(structured);
    }
    let Some(status) = session.status else {
        return Ok(format!("{namespace}/{}: no status yet (is the operator running?)\n", args.session));
    };
    let mut out = format!(
        "{namespace}/{}: {} ({})\n  {}\n",
        args.session,
        status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into()),
        status.reason.clone().unwrap_or_default(),
        status.message.clone().unwrap_or_default()
    );
    if let (Some(provider), Some(instance)) = (status.provider, &status.instance_id) {
        out.push_str(&format!(
            "  machine: {} instance {instance}, {} at ${:.3}/h, cost so far ${:.4}\n",
            provider,
            status.gpu.clone().unwrap_or_default(),
            status.price_per_hour.unwrap_or(0.0),
            status.accrued_cost_usd.unwrap_or(0.0)
        ));
    }
    if let Some(ssh) = &status.ssh {
        out.push_str(&format!("  ssh: {}@{}:{} (gpu-shopper ssh {})\n", ssh.user, ssh.host, ssh.port, args.session));
    }
    if let Some(v) = &status.verified {
        out.push_str(&format!(
            "  verified: {}x {}, driver {}, CUDA {}\n",
            v.gpu_count, v.gpu_name, v.driver_version, v.cuda_version
        ));
    }
    if let Some(job) = &status.job {
        out.push_str(&format!("  job exit code {}; last lines:\n{}\n", job.exit_code, job.log_tail.trim_end()));
    }
    if let Some(rekey) = &status.rekey {
        let state = if rekey.done { "done" } else { "pending" };
        out.push_str(&format!("  re-key {:?}: {state}: {}\n", rekey.request, rekey.message));
    }
    out.push_str("\nCONDITIONS\n");
    let rows: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| vec![c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone()])
        .collect();
    out.push_str(&table::render(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows));
    if !status.attempts.is_empty() {
        out.push_str("\nATTEMPTS\n");
        let rows: Vec<Vec<String>> = status
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.provider.map(|p| p.to_string()).unwrap_or_default(),
                    a.offer_id.clone(),
                    a.reason.clone(),
                    a.message.clone(),
                ]
            })
            .collect();
        out.push_str(&table::render(&["PROVIDER", "OFFER", "REASON", "MESSAGE"], &rows));
    }
    if let Some(hint) = status.reason.as_deref().and_then(advice) {
        out.push_str(&format!("\nnext: {hint}\n"));
    }
    Ok(out)
}

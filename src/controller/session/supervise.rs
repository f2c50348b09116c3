//! Life after rent is watched: the recorded instance is looked up in the shared
//! inventory (no marketplace call per session) and, when a listing no longer
//! shows it, confirmed with one lookup. A machine gone, stopped or preempted is
//! a condition and an Event; its cost stops at the last time it was seen alive;
//! `spec.onInstanceLoss` replaces it or fails the session.

use jiff::Timestamp;
use kube::runtime::controller::Action;

use super::bad_host;
use super::step::Step;
use super::teardown;
use crate::crd::conditions::types;
use crate::crd::session::{InstanceLossPolicy, after_stored};
use crate::crd::{Billing, SessionPhase};
use crate::error::Result;
use crate::inventory::Presence;
use crate::provider::{Instance, InstanceState};

/// Why the machine is considered lost.
struct Loss {
    reason: &'static str,
    message: String,
}

/// `Some` when the recorded machine was found lost (the session was re-provisioned or ended).
pub async fn step(step: &mut Step<'_>) -> Result<Option<Action>> {
    let (Some(provider), Some(id), None) =
        (step.status.provider, step.status.instance_id.clone(), step.status.released_at.as_ref())
    else {
        return Ok(None);
    };
    let since = step.status.rented_at.as_ref().map(after_stored).unwrap_or(step.now);
    let loss = match step.ctx.inventory.presence(provider, &id, since) {
        Presence::Listed(instance) => judge(step, &instance),
        // A listing can lag a marketplace's truth: one direct lookup decides.
        Presence::Absent { .. } => match step.ctx.provider(provider) {
            Some(client) => match client.get_instance(&id).await {
                Ok(None) => Some(Loss {
                    reason: "InstanceLost",
                    message: format!(
                        "{provider} no longer knows instance {id} (destroyed outside the operator, or the host died)"
                    ),
                }),
                Ok(Some(instance)) => judge(step, &instance),
                Err(error) => {
                    tracing::debug!(%error, instance = %id, "could not confirm whether the instance is gone; asking again later");
                    None
                }
            },
            None => None,
        },
        Presence::Unknown => None,
    };
    let Some(loss) = loss else { return Ok(None) };
    lost(step, loss).await.map(Some)
}

fn judge(step: &Step<'_>, instance: &Instance) -> Option<Loss> {
    let (provider, id) = (instance.provider, &instance.id);
    match &instance.state {
        InstanceState::Destroyed => Some(Loss {
            reason: "InstanceLost",
            message: format!("{provider} reports instance {id} destroyed (outside the operator)"),
        }),
        // Before it first ran, "stopped" can be a machine still being set up.
        InstanceState::Stopped if step.condition_is_true(types::INSTANCE_RUNNING) => {
            let interruptible =
                step.session.spec.requirements.as_ref().is_some_and(|r| r.billing == Some(Billing::Interruptible));
            Some(if interruptible {
                Loss {
                    reason: "Preempted",
                    message: format!("interruptible instance {id} on {provider} was stopped (outbid or preempted)"),
                }
            } else {
                Loss { reason: "Stopped", message: format!("instance {id} on {provider} stopped after it was running") }
            })
        }
        _ => None,
    }
}

async fn lost(step: &mut Step<'_>, loss: Loss) -> Result<Action> {
    let last_alive: Option<Timestamp> = teardown::last_known_alive(step);
    let policy = step.session.spec.instance_loss_policy();
    let next = match policy {
        InstanceLossPolicy::Replace => "another machine will be rented (spec.onInstanceLoss: Replace)",
        InstanceLossPolicy::Fail => "the session fails (spec.onInstanceLoss: Fail)",
    };
    let message = format!(
        "{}; cost counted until it was last seen alive{}; {next}",
        loss.message,
        last_alive.map(|t| format!(" at {t}")).unwrap_or_default()
    );
    step.condition(types::INSTANCE_RUNNING, false, loss.reason, message.clone());
    // A stopped machine still bills storage: destroy it; one already gone is confirmed gone.
    teardown::release_at(step, Some(last_alive.unwrap_or(step.now))).await?;
    match policy {
        InstanceLossPolicy::Replace => bad_host::replace(step, loss.reason, message).await,
        InstanceLossPolicy::Fail => {
            teardown::end(step, SessionPhase::Failed, loss.reason, message).await?;
            step.condition(types::INSTANCE_RUNNING, false, loss.reason, "the machine was lost");
            Ok(Action::await_change())
        }
    }
}

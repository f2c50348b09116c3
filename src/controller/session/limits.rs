//! Hard limits, in every phase and before anything else a reconcile does: the
//! operator's MAX_SESSION_DURATION counts from the first create (stage timeouts
//! cannot stretch it), the budget counts every attempt's billed time, before
//! Ready too, and a handed-over session's lifetime ends it.

use std::time::Duration;

use kube::runtime::controller::Action;

use super::cost::settle_cost;
use super::expiry::set_expiry;
use super::step::Step;
use super::teardown;
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::error::Result;

/// Ends the session when the hard maximum or the budget is reached, whatever its phase.
pub async fn enforce(step: &mut Step<'_>) -> Result<Option<Action>> {
    let ready = step.condition_is_true(types::READY);
    let phase = if ready { SessionPhase::Succeeded } else { SessionPhase::Failed };
    let hard_max = step.ctx.config.max_session_duration;
    if let Some(first) = step.status.billing_started_at.as_ref().map(|t| t.0)
        && step.seconds_since(first) >= hard_max.as_secs_f64()
    {
        let message = format!(
            "the operator's MAX_SESSION_DURATION ({}s, counted from the first create) was reached{}; the instance was destroyed",
            hard_max.as_secs(),
            if ready { "" } else { " before the machine was ready" }
        );
        teardown::end(step, phase, "MaxDurationReached", message).await?;
        return Ok(Some(Action::await_change()));
    }
    settle_cost(step);
    if let (Some(budget), Some(cost)) = (step.session.spec.budget.as_ref(), step.status.accrued_cost_usd)
        && cost >= budget.max_cost_usd
    {
        let message = format!(
            "accrued ${cost:.4} (every attempt's machine counted) reached the budget of ${:.2}; the instance was destroyed",
            budget.max_cost_usd
        );
        teardown::end(step, phase, "BudgetReached", message).await?;
        return Ok(Some(Action::await_change()));
    }
    // The lifetime, once handed over: the spec's duration may have changed since.
    set_expiry(step);
    // Once handed over, whatever is wrong since (a key Secret in conflict makes Ready false).
    if step.status.started_at.is_some()
        && let Some(expires) = step.status.expires_at.as_ref().map(|t| t.0)
        && step.now >= expires
    {
        let message = "the session reached its maximum lifetime; the instance was destroyed".to_string();
        teardown::end(step, SessionPhase::Succeeded, "Expired", message).await?;
        return Ok(Some(Action::await_change()));
    }
    Ok(None)
}

/// `wanted`, or sooner when a time limit (the lifetime, the hard maximum) falls
/// before it: a session that waits on something else is still ended on time.
pub fn requeue_within(step: &Step<'_>, wanted: Duration) -> Duration {
    let hard_max = step.status.billing_started_at.as_ref().map(|t| {
        let since = step.seconds_since(t.0).max(0.0);
        step.ctx.config.max_session_duration.saturating_sub(Duration::from_secs_f64(since.min(1e12)))
    });
    let lifetime = step.status.started_at.as_ref().and(step.status.expires_at.as_ref()).map(|t| {
        let until = -step.seconds_since(t.0);
        Duration::from_secs_f64(until.clamp(0.0, 1e12))
    });
    [Some(wanted), hard_max, lifetime].into_iter().flatten().min().unwrap_or(wanted).max(Duration::from_secs(1))
}

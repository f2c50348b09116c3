//! Hard limits, in every phase: the operator's MAX_SESSION_DURATION counts
//! from the first create (stage timeouts cannot stretch it), and the budget
//! counts every attempt's billed time, before Ready too.

use kube::runtime::controller::Action;

use super::cost::settle_cost;
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
    Ok(None)
}

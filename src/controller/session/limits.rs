//! Hard limits, in every phase: the operator's MAX_SESSION_DURATION counts
//! from the first create (stage timeouts cannot stretch it), and the budget
//! counts every attempt's billed time, before Ready too. Also the caps that
//! keep user numbers and machine output from breaking the controller.

use std::time::Duration;

use kube::runtime::controller::Action;

use super::{Step, teardown};
use crate::crd::SessionPhase;
use crate::crd::conditions::types;
use crate::error::Result;

/// The most of one message kept in status (conditions, phase message, job log tail).
pub const STATUS_TEXT_MAX: usize = 4096;

/// A cost that arithmetic on user numbers cannot turn into NaN or infinity.
pub fn finite_cost(cost: f64) -> f64 {
    if cost.is_finite() { cost.clamp(0.0, 1e12) } else { 1e12 }
}

/// `text` cut to what status can hold, on a character boundary, keeping its end
/// (the last lines of a log say the most).
pub fn for_status(text: String) -> String {
    tail_chars(text, STATUS_TEXT_MAX)
}

/// The last `max` bytes of `text` at most, cut on a character boundary.
pub fn tail_chars(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// A `Duration` from seconds that may be huge, negative or not a number.
pub fn seconds(value: f64) -> Duration {
    if value.is_nan() || value <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(value).unwrap_or(crate::crd::duration::MAX)
}

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
    teardown::settle_cost(step);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_and_durations_from_any_number_stay_finite() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 1e300, f64::MAX, f64::MIN_POSITIVE] {
            let cost = finite_cost(value);
            assert!(cost.is_finite() && cost >= 0.0, "{value} -> {cost}");
            let duration = seconds(value);
            assert!(duration <= crate::crd::duration::MAX, "{value} -> {duration:?}");
        }
        assert_eq!(seconds(1.5), Duration::from_millis(1500));
    }

    #[test]
    fn long_text_keeps_its_end_within_the_cap() {
        let text = format!("{}the end", "é".repeat(10_000));
        let cut = for_status(text);
        assert!(cut.len() <= STATUS_TEXT_MAX + "…".len());
        assert!(cut.ends_with("the end"));
        assert_eq!(for_status("short".into()), "short");
    }
}

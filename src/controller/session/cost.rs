//! Cost arithmetic, in one place: what a machine has cost, what a session has
//! spent across its attempts, and numbers from user input that can never turn
//! into NaN, infinity or a panic. The limits and the teardown both count with it.

use std::time::Duration;

use super::step::Step;

/// A cost that arithmetic on user numbers cannot turn into NaN or infinity.
pub fn finite_cost(cost: f64) -> f64 {
    if cost.is_finite() { cost.clamp(0.0, 1e12) } else { 1e12 }
}

/// A `Duration` from seconds that may be huge, negative or not a number.
pub fn seconds(value: f64) -> Duration {
    if value.is_nan() || value <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(value).unwrap_or(crate::crd::duration::MAX)
}

/// How long until the budget is used up at `price` per hour. Total over every number.
pub fn until_budget(budget: f64, cost: f64, price: f64) -> Duration {
    seconds((budget - cost) / price * 3600.0)
}

/// What the current machine has cost: price x time from rent to release (or now).
pub fn current_machine_cost(step: &Step<'_>) -> f64 {
    let (Some(price), Some(rented)) = (step.status.price_per_hour, step.status.rented_at.as_ref()) else { return 0.0 };
    let end = step.status.released_at.as_ref().map(|t| t.0).unwrap_or(step.now);
    let hours = end.duration_since(rented.0).as_secs_f64().max(0.0) / 3600.0;
    finite_cost(price * hours)
}

/// Accrued cost = what earlier attempts' machines cost + the current machine so far.
pub fn settle_cost(step: &mut Step<'_>) {
    let earlier: f64 = step.status.attempts.iter().filter_map(|a| a.cost_usd).sum();
    let current = current_machine_cost(step);
    if earlier > 0.0 || step.status.rented_at.is_some() {
        let total = finite_cost(earlier + current);
        step.status.accrued_cost_usd = Some((total * 10_000.0).round() / 10_000.0);
        step.status.accrued_cost_at = Some(step.time());
    }
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
}

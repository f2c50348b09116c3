//! When a handed-over session ends: its own maximum duration after it started,
//! and never later than the operator's hard maximum after the first create.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::step::Step;
use crate::crd::duration::parse;

/// `expiresAt` = start + the spec's max duration, and never later than the first
/// create + the operator's hard maximum.
pub fn set_expiry(step: &mut Step<'_>) {
    let Some(started) = step.status.started_at.as_ref().map(|t| t.0) else { return };
    let hard_max = step.ctx.config.max_session_duration;
    let wanted =
        step.session.spec.lifetime.as_ref().and_then(|l| l.max_duration.as_deref()).and_then(parse).unwrap_or(hard_max);
    let first_create = step.status.billing_started_at.as_ref().map(|t| t.0).unwrap_or(started);
    step.status.expires_at = Some(Time(expiry(started, first_create, wanted, hard_max)));
}

/// The end of a session's life: `wanted` after start, and never later than the
/// hard maximum after the first create. Total over every duration.
fn expiry(started: Timestamp, first_create: Timestamp, wanted: Duration, hard_max: Duration) -> Timestamp {
    let after = |from: Timestamp, duration: Duration| {
        SignedDuration::try_from(duration).ok().and_then(|d| from.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
    };
    after(started, wanted.min(hard_max)).min(after(first_create, hard_max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::session::cost::until_budget;
    use proptest::prelude::*;

    proptest! {
        /// Any duration string the schema accepts (its pattern, at most 24 characters) and any
        /// budget and price it accepts: the arithmetic neither panics nor overflows.
        #[test]
        fn every_value_the_schema_accepts_is_handled(
            wanted in "[0-9]{1,20}(\\.[0-9]{1,2})?(ms|s|m|h)",
            hard in "[0-9]{1,20}(ms|s|m|h)",
            budget in 0.000_001f64..=1_000_000.0,
            cost in 0.0f64..1e12,
            price in 0.000_001f64..=1000.0,
            offset in 0i64..10_000_000_000,
        ) {
            let wanted = parse(&wanted).expect("the pattern parses");
            let hard_max = parse(&hard).expect("the pattern parses");
            prop_assert!(wanted <= crate::crd::duration::MAX && hard_max <= crate::crd::duration::MAX);
            let started = Timestamp::from_second(offset.min(200_000_000_000)).unwrap();
            let first = Timestamp::from_second(offset / 2).unwrap();
            let end = expiry(started, first, wanted, hard_max);
            prop_assert!(end >= first);
            let wait = until_budget(budget, cost, price);
            prop_assert!(wait <= crate::crd::duration::MAX);
        }
    }
}

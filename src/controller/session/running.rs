//! A handed-over machine: keep its cost current and end it when its lifetime,
//! idle time or budget is used up, or when its Job exits. Ending destroys the
//! instance at once.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

use super::limits::{seconds, tail_chars};
use super::login::run_on_machine;
use super::secret::SessionKey;
use super::stages::work_dir;
use super::{Step, teardown};
use crate::crd::duration::parse;
use crate::crd::session::JobResult;
use crate::crd::{SessionPhase, WorkloadKind};
use crate::error::Result;

/// How often a running machine is looked at when nothing is due sooner: the
/// inventory wakes a session whose machine is lost, so this only refreshes cost.
const RUNNING_POLL: Duration = super::COST_WRITE_EVERY;
/// Below this GPU utilisation (percent) a machine counts as idle.
const IDLE_BELOW_PERCENT: u32 = 5;
const LOG_TAIL_LINES: usize = 40;
/// The most of the log tail read from the machine (one line can be endless).
const LOG_TAIL_BYTES: usize = 2048;

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

/// How long until the budget is used up at `price` per hour. Total over every number.
fn until_budget(budget: f64, cost: f64, price: f64) -> Duration {
    seconds((budget - cost) / price * 3600.0)
}

pub async fn step(step: &mut Step<'_>, key: &SessionKey) -> Result<Action> {
    // The cost is already settled: `limits::enforce` runs before every step.
    set_expiry(step); // the spec's duration may have been extended

    if let Some(expires) = step.status.expires_at.as_ref().map(|t| t.0)
        && step.now >= expires
    {
        let message = "the session reached its maximum lifetime; the instance was destroyed".to_string();
        teardown::end(step, SessionPhase::Succeeded, "Expired", message).await?;
        return Ok(Action::await_change());
    }
    let idle_timeout = step.session.spec.lifetime.as_ref().and_then(|l| l.idle_timeout.as_deref()).and_then(parse);
    let is_job = step.session.spec.workload.kind == WorkloadKind::Job;
    // SSH logins are rationed per machine, however often the session is reconciled.
    let uid = step.session.metadata.uid.clone().unwrap_or_default();
    let mut check_again = None;
    if is_job || idle_timeout.is_some() {
        let due_in = step.ctx.machine_check_due(&uid);
        if due_in.is_zero() {
            check_again = Some(step.ctx.config.machine_check_interval);
            if is_job && let Some(action) = check_job(step, key).await? {
                step.ctx.forget_machine_checks(&uid);
                return Ok(action);
            }
            if let Some(idle_timeout) = idle_timeout
                && let Some(action) = check_idle(step, key, idle_timeout).await?
            {
                step.ctx.forget_machine_checks(&uid);
                return Ok(action);
            }
        } else {
            check_again = Some(due_in);
        }
    }
    let mut wait = next_look(step, idle_timeout);
    if let Some(check) = check_again {
        wait = wait.min(check.max(Duration::from_millis(200)));
    }
    Ok(Action::requeue(wait))
}

/// Soon enough to catch expiry, the budget and idleness near when they happen.
fn next_look(step: &Step<'_>, idle_timeout: Option<Duration>) -> Duration {
    let mut wait = RUNNING_POLL;
    if let Some(expires) = step.status.expires_at.as_ref().map(|t| t.0) {
        wait = wait.min(until(step.now, expires));
    }
    if let Some(idle) = idle_timeout {
        wait = wait.min((idle / 3).max(step.ctx.config.machine_check_interval));
    }
    if let (Some(budget), Some(price), Some(cost)) =
        (step.session.spec.budget.as_ref(), step.status.price_per_hour, step.status.accrued_cost_usd)
        && price > 0.0
    {
        // Any numbers the schema accepts: never a panic, never an overflow.
        wait = wait.min(until_budget(budget.max_cost_usd, cost, price));
    }
    wait.max(Duration::from_millis(200))
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    then.duration_since(now).try_into().unwrap_or(Duration::ZERO)
}

/// `Some` when the job has exited (the session ended).
async fn check_job(step: &mut Step<'_>, key: &SessionKey) -> Result<Option<Action>> {
    let dir = work_dir(step);
    let command = format!(
        "cd \"{dir}\" && if [ -e exit_code ]; then head -c 16 exit_code; echo; echo ---; tail -n {LOG_TAIL_LINES} job.log | tail -c {LOG_TAIL_BYTES}; fi"
    );
    let out = match run_on_machine(step, key, &command).await {
        Ok(out) => out,
        Err(error) => {
            tracing::warn!(session = %step.session.metadata.name.clone().unwrap_or_default(), %error, "could not check the job");
            return Ok(None);
        }
    };
    let Some((code, tail)) = out.stdout.split_once("---\n") else { return Ok(None) };
    let Ok(exit_code) = code.trim().parse::<i32>() else { return Ok(None) };
    step.status.job = Some(JobResult { exit_code, log_tail: tail_chars(tail.to_string(), LOG_TAIL_BYTES) });
    let (phase, reason) =
        if exit_code == 0 { (SessionPhase::Succeeded, "JobSucceeded") } else { (SessionPhase::Failed, "JobFailed") };
    let last_line = tail.lines().last().unwrap_or("");
    let message =
        format!("the job exited with code {exit_code} (last line: {last_line:?}); the instance was destroyed");
    teardown::end(step, phase, reason, message).await?;
    Ok(Some(Action::await_change()))
}

/// `Some` when the machine has been idle too long (the session ended).
async fn check_idle(step: &mut Step<'_>, key: &SessionKey, idle_timeout: Duration) -> Result<Option<Action>> {
    let query = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits";
    let Ok(out) = run_on_machine(step, key, query).await else { return Ok(None) };
    let busiest = out.stdout.lines().filter_map(|l| l.rsplit(',').next()?.trim().parse::<u32>().ok()).max();
    let Some(busiest) = busiest else { return Ok(None) };
    if busiest >= IDLE_BELOW_PERCENT {
        step.status.idle_since = None;
        return Ok(None);
    }
    let since = step.status.idle_since.get_or_insert(Time(step.now)).0;
    if step.seconds_since(since) >= idle_timeout.as_secs_f64() {
        let message = format!(
            "GPUs idle (below {IDLE_BELOW_PERCENT}%) for {}s; the instance was destroyed",
            idle_timeout.as_secs()
        );
        teardown::end(step, SessionPhase::Succeeded, "Idle", message).await?;
        return Ok(Some(Action::await_change()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
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

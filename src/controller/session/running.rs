//! A handed-over machine: keep its cost current and end it when its lifetime,
//! idle time or budget is used up, or when its Job exits. Ending destroys the
//! instance at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

use super::cost::until_budget;
use super::exit_watch;
use super::launcher::work_dir;
use super::login::run_on_machine;
use super::outputs::{self, Saving};
use super::secret::SessionKey;
use super::step::{COST_WRITE_EVERY, Step, tail_chars};
use super::teardown;
use crate::crd::conditions::{self, Status, types};
use crate::crd::duration::parse;
use crate::crd::{SessionPhase, WorkloadKind};
use crate::error::Result;

/// How often a running machine is looked at when nothing is due sooner: the
/// inventory wakes a session whose machine is lost, so this only refreshes cost.
const RUNNING_POLL: Duration = COST_WRITE_EVERY;
/// Below this GPU utilisation (percent) a machine counts as idle.
const IDLE_BELOW_PERCENT: u32 = 5;
const LOG_TAIL_LINES: usize = 40;
/// The most of the log tail read from the machine (one line can be endless).
const LOG_TAIL_BYTES: usize = 2048;

pub async fn step(step: &mut Step<'_>, key: &SessionKey) -> Result<Action> {
    // The cost is settled and the lifetime enforced already: `limits::enforce` runs before every step.
    let idle_timeout = step.session.spec.lifetime.as_ref().and_then(|l| l.idle_timeout.as_deref()).and_then(parse);
    let is_job = step.session.spec.workload.kind == WorkloadKind::Job;
    // SSH logins are rationed per machine, however often the session is reconciled.
    let uid = step.session.metadata.uid.clone().unwrap_or_default();
    let mut check_again = None;
    if is_job {
        // A held login waits on the job's exit and wakes the session the moment it comes.
        exit_watch::ensure(step, key);
        let saving =
            conditions::find(&step.status.conditions, types::OUTPUTS_SAVED).is_some_and(|c| c.status == "Unknown");
        if (step.ctx.exit_watches.take_exited(&uid) || saving)
            && let Some(action) = check_job(step, key).await?
        {
            return Ok(action);
        }
    }
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
    let job = step.status.job.get_or_insert_with(Default::default);
    job.exit_code = exit_code;
    job.log_tail = tail_chars(tail.to_string(), LOG_TAIL_BYTES);
    let last_line = tail.lines().last().unwrap_or("").to_string();
    let (mut phase, mut reason) =
        if exit_code == 0 { (SessionPhase::Succeeded, "JobSucceeded") } else { (SessionPhase::Failed, "JobFailed") };
    let mut message =
        format!("the job exited with code {exit_code} (last line: {last_line:?}); the instance was destroyed");
    // Outputs are saved before the machine goes, whether the job succeeded or failed.
    match outputs::save(step, key).await? {
        Saving::NotYet(progress) => {
            step.condition(types::OUTPUTS_SAVED, Status::Unknown, "Saving", progress);
            return Ok(Some(Action::requeue(SAVING_POLL)));
        }
        Saving::Saved { objects, log } => {
            if !step.session.spec.workload.outputs.is_empty() {
                let bytes: u64 = objects.iter().map(|o| o.bytes).sum();
                let saved =
                    format!("{} objects ({bytes} bytes) confirmed in their buckets, and the job's log", objects.len());
                step.condition(types::OUTPUTS_SAVED, true, "Saved", saved.clone());
                message = format!("{message}; outputs saved: {saved}");
            }
            let job = step.status.job.get_or_insert_with(Default::default);
            job.outputs = objects;
            job.log = log;
        }
        Saving::Lost { objects, log, lost } => {
            let why = format!("not saved before the machine was destroyed: {lost}");
            step.condition(types::OUTPUTS_SAVED, false, "OutputsLost", why.clone());
            let job = step.status.job.get_or_insert_with(Default::default);
            job.outputs = objects;
            job.log = log;
            job.lost = Some(tail_chars(lost, 8000));
            (phase, reason) = (SessionPhase::Failed, "OutputsLost");
            message = format!("the job exited with code {exit_code}; outputs {why}");
        }
    }
    teardown::end(step, phase, reason, message).await?;
    step.ctx.exit_watches.forget(&step.session.metadata.uid.clone().unwrap_or_default());
    Ok(Some(Action::await_change()))
}

/// How often outputs being saved are looked at.
const SAVING_POLL: Duration = Duration::from_secs(3);

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

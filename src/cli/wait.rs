//! `gpu-shopper wait SESSION`: blocks until the session is Ready (or, with
//! `--for complete`, has ended as intended), showing each change of phase on a
//! terminal; exits non-zero when the session fails, ends otherwise, vanishes
//! or the timeout passes, as `kubectl wait` does. It follows a watch of the
//! one session, so it returns as soon as the change is made.

use std::io::IsTerminal;
use std::time::Instant;

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::CliError;
use super::output::Format;
use crate::crd::conditions::{self, types};
use crate::crd::{GpuSession, SessionPhase};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// The machine is proven and handed over (condition Ready=True).
    Ready,
    /// The session ended as intended (condition Complete=True), for Jobs.
    Complete,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  gpu-shopper wait interactive-4090
  kubectl gpu-shopper wait finetune --for complete --timeout 2h -o yaml")]
pub struct WaitArgs {
    /// Name of the GpuSession.
    pub session: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// What to wait for.
    #[arg(long = "for", value_enum, default_value = "ready")]
    pub goal: Goal,
    /// Give up after this long (exit 1), for example 90s, 30m or 2h.
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Where a session stands with respect to `goal`.
#[derive(Debug, PartialEq)]
enum Verdict {
    Reached,
    /// It can no longer get there: why.
    Unreachable(String),
    /// Its finalizer is destroying the machine: it will not get anywhere now.
    BeingDeleted,
    Waiting,
}

fn judge(session: &GpuSession, goal: Goal) -> Verdict {
    if session.metadata.deletion_timestamp.is_some() {
        return Verdict::BeingDeleted;
    }
    let Some(status) = session.status.as_ref() else { return Verdict::Waiting };
    let is_true = |type_| conditions::is_true(&status.conditions, type_);
    let why =
        || format!("{} ({})", status.message.clone().unwrap_or_default(), status.reason.clone().unwrap_or_default());
    match (goal, status.phase) {
        (Goal::Ready, _) if is_true(types::READY) => Verdict::Reached,
        (Goal::Complete, _) if is_true(types::COMPLETE) => Verdict::Reached,
        (_, Some(SessionPhase::Failed)) => Verdict::Unreachable(format!("the session failed: {}", why())),
        (Goal::Ready, Some(SessionPhase::Succeeded)) => {
            Verdict::Unreachable(format!("the session ended without being ready now: {}", why()))
        }
        _ => Verdict::Waiting,
    }
}

/// A refusal that no retry changes (401, 403, 404), as the user's error.
fn refusal(error: &watcher::Error) -> Option<CliError> {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status,
        _ => return None,
    };
    matches!(status.code, 401 | 403 | 404).then(|| kube::Error::Api(status.clone()).into())
}

/// "Verifying (InstanceRunning): instance 123 runs; logging in".
fn progress_line(session: &GpuSession) -> String {
    let Some(status) = session.status.as_ref() else { return "waiting for the operator".into() };
    format!(
        "{} ({}): {}",
        status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into()),
        status.reason.clone().unwrap_or_default(),
        status.message.clone().unwrap_or_default()
    )
}

pub async fn run(args: WaitArgs) -> Result<String, CliError> {
    let namespace = super::namespace(args.namespace.clone()).await;
    let sessions: Api<GpuSession> = Api::namespaced(super::client().await?, &namespace);
    let format = Format::chosen(false);
    let show_progress = std::io::stderr().is_terminal();
    let deadline = Instant::now() + args.timeout;
    let whose = format!("{namespace}/{}", args.session);
    // One watch on this one name: each change arrives as the API server makes it,
    // where a poll would see it up to a poll late and ask again and again meanwhile.
    let only_this = watcher::Config::default().fields(&format!("metadata.name={}", args.session));
    let mut changes = watcher::watcher(sessions, only_this).default_backoff().boxed();
    let mut last_line = String::new();
    let mut exists = false;
    let mut last_error = None;
    loop {
        let change = match tokio::time::timeout_at(deadline.into(), changes.next()).await {
            Err(_) => {
                let still = if exists { last_line.as_str() } else { "not listed yet" };
                let after = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
                return Err(CliError::Failed(format!(
                    "{whose}: timed out after {}; still {still}{after}",
                    crate::crd::duration::format(args.timeout)
                )));
            }
            Ok(None) => return Err(CliError::Failed(format!("{whose}: the watch ended"))),
            Ok(Some(Err(error))) => match refusal(&error) {
                // Not allowed, or no such resource: waiting longer cannot change that.
                Some(refused) => return Err(refused),
                // Anything else (the API server restarting, a watch expiring) is retried
                // with backoff by the watcher; the last one is named if time runs out.
                None => {
                    last_error = Some(error.to_string());
                    continue;
                }
            },
            Ok(Some(Ok(change))) => change,
        };
        let session = match change {
            watcher::Event::Apply(session) | watcher::Event::InitApply(session) => session,
            watcher::Event::Delete(_) => return Err(CliError::Failed(format!("{whose} was deleted while waiting"))),
            watcher::Event::Init => {
                exists = false;
                continue;
            }
            watcher::Event::InitDone if !exists => {
                return Err(CliError::Failed(format!("{whose} does not exist (any more)")));
            }
            watcher::Event::InitDone => continue,
        };
        exists = true;
        last_error = None;
        let line = progress_line(&session);
        if show_progress && line != last_line {
            eprintln!("{}: {}", args.session, super::terminal::printable(&line));
        }
        last_line = line;
        match judge(&session, args.goal) {
            Verdict::Reached => {
                return Ok(match format.structured(&serde_json::to_value(&session).unwrap_or_default()) {
                    Some(structured) => structured,
                    None => format!("{whose}: {last_line}\n"),
                });
            }
            Verdict::BeingDeleted => return Err(CliError::Failed(format!("{whose} is being deleted"))),
            Verdict::Unreachable(why) => return Err(CliError::Failed(format!("{whose}: {why}"))),
            Verdict::Waiting => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::{ConditionUpdate, Status, set};
    use crate::crd::session::GpuSessionStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn session(phase: SessionPhase, conditions: &[(&'static str, bool)]) -> GpuSession {
        let mut status = GpuSessionStatus { phase: Some(phase), ..Default::default() };
        for (type_, value) in conditions {
            let update = ConditionUpdate { type_, status: Status::from(*value), reason: "R", message: String::new() };
            set(&mut status.conditions, update, None, Time(jiff::Timestamp::now()));
        }
        let mut s = GpuSession::new("s", Default::default());
        s.status = Some(status);
        s
    }

    #[test]
    fn ready_and_complete_are_reached_failure_and_an_early_end_are_not() {
        assert_eq!(judge(&session(SessionPhase::Running, &[(types::READY, true)]), Goal::Ready), Verdict::Reached);
        assert_eq!(judge(&session(SessionPhase::Verifying, &[]), Goal::Ready), Verdict::Waiting);
        assert!(matches!(judge(&session(SessionPhase::Failed, &[]), Goal::Ready), Verdict::Unreachable(_)));
        assert!(matches!(judge(&session(SessionPhase::Succeeded, &[]), Goal::Ready), Verdict::Unreachable(_)));
        let done = session(SessionPhase::Succeeded, &[(types::COMPLETE, true)]);
        assert_eq!(judge(&done, Goal::Complete), Verdict::Reached);
        // A session being deleted gets nowhere any more.
        let mut going = session(SessionPhase::Running, &[(types::READY, false)]);
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(judge(&going, Goal::Ready), Verdict::BeingDeleted);
        // A running Job is ready, not complete.
        assert_eq!(judge(&session(SessionPhase::Running, &[(types::READY, true)]), Goal::Complete), Verdict::Waiting);
    }
}

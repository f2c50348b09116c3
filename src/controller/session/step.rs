//! One reconcile's working state: the session, the status being built, and
//! what to announce once that status is stored. Every part of the session
//! controller works on a `Step`; it owns the status write (never over a newer
//! copy) and the Events that wait for it.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::controller::context::Context;
use crate::controller::events::{Event, EventType};
use crate::controller::status;
use crate::crd::conditions::{self, ConditionUpdate, Status};
use crate::crd::kstatus;
use crate::crd::{GpuSession, GpuSessionStatus, SessionPhase};
use crate::error::Result;

/// How soon to look again while a machine is being rented or proven.
pub const PROVISIONING_POLL: Duration = Duration::from_secs(2);

/// How often a running session's cost alone is worth a status write.
pub const COST_WRITE_EVERY: Duration = Duration::from_secs(300);

/// After a stage passes, the watch event of our own status write starts the next
/// stage with the fresh object; this requeue is only the fallback. (Requeueing at
/// once raced the watch: the next reconcile read a stale copy and its write got 409.)
pub const NEXT_STAGE: Duration = Duration::from_secs(1);

/// One reconcile's working state: the session, the status being built, and what
/// to announce once that status is written.
pub struct Step<'a> {
    pub session: &'a GpuSession,
    pub ctx: &'a Context,
    pub status: GpuSessionStatus,
    pub now: Timestamp,
    /// The status as last stored, and the resourceVersion that store produced.
    stored: GpuSessionStatus,
    resource_version: Option<String>,
    /// A machine was destroyed in this step: the status that says so must be stored.
    pub destroyed_a_machine: bool,
    /// The session is being deleted: its CleanupComplete Event names the destroyed machine.
    pub deleting: bool,
    /// Events and observations held until the status they describe is stored, so a
    /// step that is redone after a refused write does not announce itself twice.
    announcements: Vec<Announcement>,
}

enum Announcement {
    Event(Box<Event>),
    TimeToReady(f64),
}

impl<'a> Step<'a> {
    pub fn new(session: &'a GpuSession, ctx: &'a Context) -> Self {
        let stored = session.status.clone().unwrap_or_default();
        let mut status = stored.clone();
        status.observed_generation = session.meta().generation;
        Step {
            session,
            ctx,
            status,
            now: Timestamp::now(),
            stored,
            resource_version: session.resource_version(),
            destroyed_a_machine: false,
            deleting: false,
            announcements: Vec::new(),
        }
    }

    /// The status as it was last stored (before this step changed anything).
    pub fn stored_status(&self) -> &GpuSessionStatus {
        &self.stored
    }

    pub fn api(&self) -> Api<GpuSession> {
        Api::namespaced(self.ctx.client.clone(), &self.session.namespace().unwrap_or_default())
    }

    /// Stores the status now, before a step goes on (a create intent must be
    /// stored before the create is sent). Refused when the object changed since
    /// it was read, so nothing is sent on a stale copy.
    pub async fn persist(&mut self) -> Result<()> {
        self.summarize_for_kstatus();
        let name = self.session.name_any();
        self.resource_version =
            status::apply_at(&self.api(), &name, self.resource_version.clone(), &self.status).await?;
        self.stored = self.status.clone();
        Ok(())
    }

    /// Nothing a user reads changed but the running cost, and it was stored less than
    /// `COST_WRITE_EVERY` ago: not worth a write (a running session would otherwise
    /// write every time it is looked at).
    fn only_cost_moved_recently(&self) -> bool {
        let mut without_cost = self.status.clone();
        without_cost.accrued_cost_usd = self.stored.accrued_cost_usd;
        without_cost.accrued_cost_at = self.stored.accrued_cost_at.clone();
        let stored_at = self.stored.accrued_cost_at.as_ref().map(|t| t.0);
        without_cost == self.stored
            && stored_at.is_some_and(|at| self.seconds_since(at) < COST_WRITE_EVERY.as_secs_f64())
    }

    /// Stores the status if it changed, never over a newer copy: a refused write
    /// is redone from the fresh object. What a destroy decided was stored before
    /// the destroy was sent (an ended phase, a replacement), so a lost write here
    /// is finished by the next reconcile, not taken for a lost machine.
    pub async fn store(&mut self) -> Result<()> {
        self.summarize_for_kstatus();
        if self.status == self.stored || self.only_cost_moved_recently() {
            return Ok(());
        }
        self.persist().await
    }

    /// `Reconciling` and `Stalled` from the phase and reason, for kstatus (Flux).
    fn summarize_for_kstatus(&mut self) {
        let (reconciling, stalled) = kstatus::session(
            self.status.phase,
            self.status.reason.as_deref(),
            conditions::is_true(&self.status.conditions, conditions::types::READY),
        );
        let reason = self.status.reason.clone().unwrap_or_else(|| "Pending".into());
        let message = self.status.message.clone().unwrap_or_default();
        let at_rest = "the session is not being worked on";
        for (type_, status) in [(kstatus::RECONCILING, reconciling), (kstatus::STALLED, stalled)] {
            let text = if status == Status::True { message.as_str() } else { at_rest };
            self.condition(type_, status, &reason, text);
        }
    }

    pub fn time(&self) -> Time {
        Time(self.now)
    }

    pub fn condition(&mut self, type_: &str, status: impl Into<Status>, reason: &str, message: impl Into<String>) {
        let generation = self.session.meta().generation;
        let update = ConditionUpdate { type_, status: status.into(), reason, message: for_status(message.into()) };
        let now = self.time();
        conditions::set(&mut self.status.conditions, update, generation, now);
    }

    pub fn condition_is_true(&self, type_: &str) -> bool {
        conditions::is_true(&self.status.conditions, type_)
    }

    /// When `type_` last became True.
    pub fn true_since(&self, type_: &str) -> Option<Timestamp> {
        conditions::find(&self.status.conditions, type_)
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.0)
    }

    pub fn phase(&mut self, phase: SessionPhase, reason: &str, message: impl Into<String>) {
        self.status.phase = Some(phase);
        self.status.reason = Some(reason.to_string());
        self.status.message = Some(for_status(message.into()));
    }

    /// Queues an Event on the session, published by `announce` once the status is stored.
    pub fn event(&mut self, warning: bool, reason: &str, note: impl Into<String>) {
        let note: String = note.into();
        self.announcements.push(Announcement::Event(Box::new(Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        })));
    }

    /// Records the time from creation to Ready, once the Ready status is stored.
    pub fn observe_time_to_ready(&mut self) {
        if let Some(created) = self.session.metadata.creation_timestamp.as_ref() {
            self.announcements.push(Announcement::TimeToReady(self.now.duration_since(created.0).as_secs_f64()));
        }
    }

    /// Publishes the queued Events and observations; a failure to record an Event is logged, not fatal.
    pub async fn announce(&mut self) {
        for announcement in std::mem::take(&mut self.announcements) {
            match announcement {
                Announcement::Event(event) => {
                    if let Err(error) = self.ctx.events.publish(&event, &self.session.object_ref(&())).await {
                        tracing::warn!(session = %self.session.name_any(), %error, "could not publish an event");
                    }
                }
                Announcement::TimeToReady(seconds) => self.ctx.metrics.time_to_ready.observe(seconds),
            }
        }
    }

    pub fn seconds_since(&self, then: Timestamp) -> f64 {
        self.now.duration_since(then).as_secs_f64()
    }
}

/// The most of one message kept in status (conditions, phase message, job log tail).
pub const STATUS_TEXT_MAX: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_keeps_its_end_within_the_cap() {
        let text = format!("{}the end", "é".repeat(10_000));
        let cut = for_status(text);
        assert!(cut.len() <= STATUS_TEXT_MAX + "…".len());
        assert!(cut.ends_with("the end"));
        assert_eq!(for_status("short".into()), "short");
    }
}

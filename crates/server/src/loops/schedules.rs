//! The leader's loop that fires schedules' due slots.
//!
//! Firing a slot is one store transaction ([`Store::fire_schedule`]): the
//! slot's task is inserted and the schedule's next slot moved on only if
//! the next slot is still the one this server read, under the leader's
//! lease. So each slot fires once, across restarts and leader changes: a
//! server that dies before the commit left nothing, one that dies after it
//! left the slot moved on.

use crate::loops::leader::{fenced, Leadership};
use crate::service::auth::Caller;
use crate::service::error::ServiceError;
use crate::service::schedules::{ScheduleService, SCHEDULE_LABEL, SLOT_LABEL};
use shepherd_core::schedule::due;
use shepherd_core::{Schedule, Timestamp};
use shepherd_store::{ScheduleFiring, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A schedule's failing slots are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Fires schedules' due slots, through the schedule service.
pub struct SlotFiring {
    schedules: Arc<ScheduleService>,
    /// When each schedule last logged that its slots failed (a line a
    /// minute at most per schedule; the count and reason are on it).
    warned: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl SlotFiring {
    /// The loop over a schedule service.
    pub fn new(schedules: Arc<ScheduleService>) -> SlotFiring {
        SlotFiring { schedules, warned: Default::default() }
    }

    fn store(&self) -> &dyn Store {
        self.schedules.store.as_ref()
    }

    /// Fires what is due at `now`; the number of tasks created. Leader only.
    pub async fn fire_due(&self, now: Timestamp, leadership: &Leadership) -> Result<usize, StoreError> {
        let mut created = 0;
        for schedule in self.store().due_schedules(now, 100).await? {
            let Some(lease) = leadership.lease() else { break };
            match self.fire_one(&schedule, now, &lease).await {
                Ok(n) => created += n,
                // Not leading any more: stop here.
                Err(e) if fenced(&e) => return Err(e),
                // This one is tried again at the next look; the others go on.
                Err(e) => tracing::warn!(schedule = %schedule.id, error = %e, "firing a schedule failed; will retry"),
            }
        }
        Ok(created)
    }

    async fn fire_one(&self, s: &Schedule, now: Timestamp, lease: &shepherd_store::Lease) -> Result<usize, StoreError> {
        let Some(expected) = s.next_at else { return Ok(0) };
        let firing = |next, skipped, failed, reason, tasks, audit| ScheduleFiring {
            id: s.id.clone(),
            expected_next: expected,
            next,
            skipped,
            failed,
            reason,
            tasks,
            audit,
            at: now,
        };
        let slots = match s.spec.slots(s.created_at) {
            Ok(slots) => slots,
            Err(e) => {
                tracing::error!(schedule = %s.id, error = %e, "a stored schedule no longer parses; it is stopped");
                let reason = Some(format!("no longer parses: {e}"));
                self.store().fire_schedule(firing(None, 0, 0, reason, Vec::new(), Vec::new()), lease).await?;
                return Ok(0);
            }
        };
        let running = match &s.last_task {
            Some(id) => match id.parse() {
                Ok(id) => self.store().get_task(id).await?.is_some_and(|t| !t.state.is_terminal()),
                Err(_) => false,
            },
            None => false,
        };
        let decision = due(&s.spec, &slots, expected, now, s.fired.saturating_add(s.failed), running);
        let owner = Caller::Schedule { project: s.spec.project.clone(), id: s.id.clone() };
        let (mut tasks, mut audit, mut skipped) = (Vec::new(), Vec::new(), decision.skipped);
        let (mut failed, mut reason) = (0, None);
        if !decision.fire.is_empty() {
            match self.slot_tasks(&owner, s, &decision.fire).await {
                Ok((made, lines)) => (tasks, audit) = (made, lines),
                // The store failed: nothing is written, the slots fire at the next look.
                Err(ServiceError::Store(e)) => return Err(e),
                Err(e) => {
                    // The task cannot be made now (its code deleted, the
                    // project's queue full): the slots pass, counted as
                    // failed (run_times counts them), the reason on the
                    // schedule, a log line a minute at most.
                    failed = decision.fire.len() as u32;
                    skipped += failed;
                    reason = Some(e.to_string());
                    if self.should_warn(&s.id) {
                        tracing::warn!(schedule = %s.id, error = %e, failed_so_far = s.failed + failed, "schedule slots failed (logged once a minute; see the schedule's reason)");
                    }
                }
            }
        }
        let fired = tasks.len();
        let wrote = self.store().fire_schedule(firing(decision.next, skipped, failed, reason, tasks, audit), lease).await?;
        if wrote && fired > 0 {
            self.schedules.tasks.wakeup.notify_one();
            tracing::info!(schedule = %s.id, tasks = fired, skipped, "schedule fired");
        }
        Ok(if wrote { fired } else { 0 })
    }

    /// Whether a schedule's failing slots may be logged now.
    fn should_warn(&self, id: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() > 10_000 {
            warned.retain(|_, at| at.elapsed() < WARN_EVERY);
        }
        match warned.get(id) {
            Some(at) if at.elapsed() < WARN_EVERY => false,
            _ => {
                warned.insert(id.to_string(), std::time::Instant::now());
                true
            }
        }
    }

    async fn slot_tasks(
        &self,
        owner: &Caller,
        s: &Schedule,
        slots: &[Timestamp],
    ) -> Result<(Vec<shepherd_core::NewTask>, Vec<shepherd_store::AuditEntry>), ServiceError> {
        let mut spec = self.schedules.make_task(owner, &s.spec).await?;
        spec.labels.insert(SCHEDULE_LABEL.into(), s.id.clone());
        let specs = slots
            .iter()
            .map(|slot| {
                let mut one = spec.clone();
                one.labels.insert(SLOT_LABEL.into(), slot.to_rfc3339());
                one
            })
            .collect();
        self.schedules.tasks.prepare_new(owner, specs).await
    }

    /// The firing loop: while this server leads, fires due slots, sleeping
    /// until the next one (at most a second, so schedules created through
    /// other servers are seen).
    pub async fn run(self: Arc<Self>, leadership: Leadership, mut shutdown: watch::Receiver<bool>) {
        loop {
            if leadership.is_leader() {
                if let Err(e) = self.fire_due(Timestamp::now(), &leadership).await {
                    if fenced(&e) {
                        leadership.step_down();
                    } else {
                        tracing::warn!(error = %e, "firing schedules failed");
                    }
                }
            }
            let mut wait = Duration::from_secs(1);
            if let Ok(Some(next)) = self.store().next_schedule_at().await {
                let until = Duration::from_millis(next.millis().saturating_sub(Timestamp::now().millis()).max(0) as u64);
                wait = wait.min(until.max(Duration::from_millis(5)));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedules.wakeup.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

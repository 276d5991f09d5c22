//! Schedules: create, read, list, pause, resume, cancel. The leader's loop
//! that fires their due slots is `crate::loops::schedules`.

use super::audit::audit_entry;
use super::codes::{project_of, readable_project};
use super::error::ServiceError;
use super::tasks::TaskService;
use crate::service::auth::Caller;
use shepherd_core::{FieldError, Schedule, ScheduleSpec, ScheduleState, TaskSpec, Timestamp};
use shepherd_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The label each task a schedule creates carries: the schedule's id.
pub const SCHEDULE_LABEL: &str = "shepherd.schedule";
/// The label holding the slot (RFC 3339) a schedule's task was made for.
pub const SLOT_LABEL: &str = "shepherd.slot";

/// Schedule operations, and what firing needs.
pub struct ScheduleService {
    pub store: Arc<dyn Store>,
    pub tasks: Arc<TaskService>,
    /// Wakes the firing loop when a schedule is created or resumed.
    pub wakeup: Arc<Notify>,
    ids: std::sync::Mutex<ulid::Generator>,
}

impl ScheduleService {
    /// The service over a store and the task service that makes its tasks.
    pub fn new(store: Arc<dyn Store>, tasks: Arc<TaskService>) -> ScheduleService {
        ScheduleService { store, tasks, wakeup: Arc::new(Notify::new()), ids: std::sync::Mutex::new(ulid::Generator::new()) }
    }

    /// Checks a schedule (its timing, and that its task would be accepted
    /// now) and stores it with its first slot.
    pub async fn create(&self, caller: &Caller, mut spec: ScheduleSpec) -> Result<Schedule, ServiceError> {
        let task_project = spec.task.get("project").and_then(|p| p.as_str()).map(str::to_string);
        let asked = Some(spec.project.clone()).filter(|p| !p.is_empty()).or(task_project.clone());
        spec.project = project_of(caller, asked.as_deref())?;
        if task_project.as_ref().is_some_and(|p| *p != spec.project) {
            return Err(FieldError::new("task.project", format!("must be the schedule's project `{}`", spec.project)).into());
        }
        spec.task.insert("project".into(), spec.project.clone().into());
        let now = Timestamp::now();
        if spec.end_at.is_some_and(|end| end <= now) {
            return Err(FieldError::new("end_at", "is in the past: the schedule would never fire").into());
        }
        // Checking a cron pattern is CPU work: off the async runtime.
        let checked = spec.clone();
        let slots =
            tokio::task::spawn_blocking(move || checked.slots(now)).await.map_err(|_| ServiceError::Store(StoreError::Closed))??;
        let limits = self.store.get_project(&spec.project).await?.map(|p| p.limits).unwrap_or_default();
        let kept = self
            .store
            .list_schedules(Some(spec.project.clone()))
            .await?
            .iter()
            .filter(|s| matches!(s.state, ScheduleState::Active | ScheduleState::Paused))
            .count() as u64;
        if kept >= limits.schedules() {
            return Err(ServiceError::QuotaExceeded(format!(
                "project {} may have {} schedules (active or paused) and has {kept}: cancel some",
                spec.project,
                limits.schedules()
            )));
        }
        // The task as it would be made now: refused here rather than at every slot.
        let owner = Caller::Schedule { project: spec.project.clone(), id: "new".into() };
        let made = self.make_task(&owner, &spec).await.map_err(|e| match e {
            ServiceError::Invalid(e) => ServiceError::Invalid(e.within("task")),
            other => other,
        })?;
        if made.array.is_some() || !made.depends_on.is_empty() {
            let field = if made.array.is_some() { "task.array" } else { "task.depends_on" };
            return Err(FieldError::new(field, "a schedule's slots make single tasks (no arrays, no dependencies)").into());
        }
        self.tasks.check(&owner, vec![made]).map_err(|e| match e {
            ServiceError::Invalid(e) => ServiceError::Invalid(e.within("task")),
            other => other,
        })?;
        let next_at = spec.first_slot(&slots, now);
        let id = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            shepherd_core::TaskId::generate(&mut ids, now).to_string()
        };
        let schedule = Schedule {
            id,
            state: if next_at.is_some() { ScheduleState::Active } else { ScheduleState::Done },
            created_at: now,
            next_at,
            fired: 0,
            skipped: 0,
            failed: 0,
            last_task: None,
            last_fired_at: None,
            reason: None,
            spec,
        };
        self.store.create_schedule(schedule.clone()).await?;
        self.audit(caller, &schedule, "schedule.create").await;
        self.wakeup.notify_one();
        Ok(schedule)
    }

    /// One schedule the caller may see.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Schedule, ServiceError> {
        match self.store.get_schedule(id).await? {
            Some(s) if caller.can_access(&s.spec.project) => Ok(s),
            _ => Err(ServiceError::Missing(format!("schedule {id}"))),
        }
    }

    /// The caller's project's schedules (the admin's: of `project`, or
    /// all), oldest first (each project holds at most its `max_schedules`
    /// live ones; the edges page what they answer).
    pub async fn list(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<Schedule>, ServiceError> {
        let project = match (caller.project(), project) {
            (None, None) => None,
            _ => Some(readable_project(caller, project)?),
        };
        Ok(self.store.list_schedules(project).await?)
    }

    /// Pauses: no slot fires until resumed.
    pub async fn pause(&self, caller: &Caller, id: &str) -> Result<Schedule, ServiceError> {
        let s = self.get(caller, id).await?;
        if s.state != ScheduleState::Active {
            return Err(ServiceError::Conflict(format!("schedule {id} is {}, not active", s.state.as_str())));
        }
        self.store.set_schedule_state(id, ScheduleState::Paused, None).await?;
        self.audit(caller, &s, "schedule.pause").await;
        self.get(caller, id).await
    }

    /// Resumes from now: slots that passed while paused do not fire.
    pub async fn resume(&self, caller: &Caller, id: &str) -> Result<Schedule, ServiceError> {
        let s = self.get(caller, id).await?;
        if s.state != ScheduleState::Paused {
            return Err(ServiceError::Conflict(format!("schedule {id} is {}, not paused", s.state.as_str())));
        }
        let now = Timestamp::now();
        let checked = s.spec.clone();
        let created = s.created_at;
        let slots =
            tokio::task::spawn_blocking(move || checked.slots(created)).await.map_err(|_| ServiceError::Store(StoreError::Closed))??;
        // From now, but never a slot that fired already (this server's clock
        // may be behind the leader's) nor one before start_at.
        let mut from = now.minus(Duration::from_millis(1));
        if let Some(fired) = s.last_fired_at {
            from = from.max(fired);
        }
        if let Some(start) = s.spec.start_at {
            from = from.max(start.minus(Duration::from_millis(1)));
        }
        let next = slots.after(from).filter(|_| s.spec.run_times.is_none_or(|max| s.fired.saturating_add(s.failed) < max));
        let state = if next.is_some() { ScheduleState::Active } else { ScheduleState::Done };
        self.store.set_schedule_state(id, state, next).await?;
        self.audit(caller, &s, "schedule.resume").await;
        self.wakeup.notify_one();
        self.get(caller, id).await
    }

    /// Cancels for good (kept, as `cancelled`, for the record).
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Schedule, ServiceError> {
        let s = self.get(caller, id).await?;
        if !self.store.set_schedule_state(id, ScheduleState::Cancelled, None).await? {
            return Err(ServiceError::Conflict(format!("schedule {id} is already cancelled")));
        }
        self.audit(caller, &s, "schedule.cancel").await;
        self.get(caller, id).await
    }

    async fn audit(&self, caller: &Caller, s: &Schedule, action: &str) {
        if let Err(e) = self.store.append_audit(vec![audit_entry(caller, Some(&s.spec.project), action, &s.id, None)]).await {
            tracing::error!(error = %e, schedule = %s.id, "could not write the audit log");
        }
    }

    /// The task one slot creates: the template, a code laid under it.
    /// The task a schedule makes, as `owner` would submit it (its code expanded).
    pub async fn make_task(&self, owner: &Caller, spec: &ScheduleSpec) -> Result<TaskSpec, ServiceError> {
        let bytes = serde_json::to_vec(&spec.task).map_err(|e| FieldError::new("task", e.to_string()))?;
        let decoded: TaskSpec = shepherd_core::decode_json(&bytes).map_err(|e| FieldError::new(e.field, e.message))?;
        let object = spec.task.clone();
        let mut made = self.tasks.expand_codes(owner, vec![decoded], &|_| Some(object.clone()), &|_| String::new()).await?;
        made.pop().ok_or_else(|| FieldError::new("task", "no task").into())
    }
}

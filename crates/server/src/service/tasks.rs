//! Tasks: create (one or a batch), get, list, cancel, wait.

use crate::nodes::links::NodeLinks;
use crate::placement_notes::PlacementNotes;
pub use crate::service::audit::audit_entry;
use crate::service::auth::{Auth, Caller};
use crate::service::error::{Refusal, ServiceError};
use serde_json::{Map, Value};
use shepherd_core::{validate, Event, FieldError, Limits, NewTask, Task, TaskId, TaskSpec, Timestamp};
use shepherd_store::{ApplyError, AuditEntry, Store, StoreError, TaskFilter, TaskPage};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Task operations with their authorization, quotas and audit lines.
pub struct TaskService {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    /// Placement profiles, to check the profile a task names.
    pub engine: shepherd_sched::SharedEngine,
    pub notes: Arc<PlacementNotes>,
    /// Project limits (cached).
    pub auth: Arc<Auth>,
    /// Reaches the agents, to stop cancelled attempts.
    pub links: Arc<dyn NodeLinks>,
    /// Wakes the scheduler when tasks arrive.
    pub wakeup: Arc<Notify>,
    /// Counts quota refusals.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub(crate) ids: Mutex<ulid::Generator>,
}

impl TaskService {
    /// The service over these parts.
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        engine: shepherd_sched::SharedEngine,
        notes: Arc<PlacementNotes>,
        auth: Arc<Auth>,
        links: Arc<dyn NodeLinks>,
        wakeup: Arc<Notify>,
    ) -> TaskService {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        TaskService { store, limits, engine, notes, auth, links, wakeup, metrics, ids: Mutex::new(ulid::Generator::new()) }
    }

    /// Makes the tasks that name a `code` from their code (its latest
    /// revision, or the one they pin): `objects(i)` is the i-th request's
    /// JSON object as sent, laid over the code's template so that what the
    /// request sets wins (see `shepherd_core::code`). Others pass unchanged.
    pub async fn expand_codes(
        &self,
        caller: &Caller,
        specs: Vec<TaskSpec>,
        objects: &(dyn Fn(usize) -> Option<Map<String, Value>> + Sync),
        prefix: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Vec<TaskSpec>, ServiceError> {
        let mut codes: BTreeMap<(String, String, Option<u32>), shepherd_core::Code> = BTreeMap::new();
        let mut out = Vec::with_capacity(specs.len());
        for (index, mut spec) in specs.into_iter().enumerate() {
            let Some(name) = spec.code.clone() else {
                out.push(spec);
                continue;
            };
            claim(caller, &mut spec, &within(&prefix(index), "project"))?;
            let project = if spec.project.is_empty() { TaskSpec::default_project() } else { spec.project.clone() };
            let key = (project.clone(), name.clone(), spec.code_revision);
            if !codes.contains_key(&key) {
                let code = self.store.get_code(&project, &name, spec.code_revision).await?.ok_or_else(|| {
                    let what = spec.code_revision.map_or(String::new(), |r| format!(" at revision {r}"));
                    FieldError::new("code", format!("project `{project}` has no code `{name}`{what}")).within(&prefix(index))
                })?;
                codes.insert(key.clone(), code);
            }
            let Some(code) = codes.get(&key) else { continue };
            let mut object = objects(index).unwrap_or_default();
            object.insert("project".into(), Value::String(project));
            let merged = shepherd_core::code::lay_over(code, &object);
            let bytes = serde_json::to_vec(&Value::Object(merged)).map_err(|e| FieldError::new("body", e.to_string()))?;
            let made: TaskSpec = shepherd_core::decode_json(&bytes)
                .map_err(|e| ServiceError::Invalid(FieldError::new(e.field, e.message).within(&prefix(index))))?;
            out.push(made);
        }
        Ok(out)
    }

    /// Validates and stores one task, with its audit line; on disk before
    /// this returns.
    pub async fn create(&self, caller: &Caller, spec: TaskSpec) -> Result<Task, ServiceError> {
        let mut created = self.store_new(caller, vec![spec], &|_| String::new(), false).await?;
        created.pop().ok_or_else(|| ServiceError::Store(StoreError::Corrupt("no task was created".into())))
    }

    /// Validates and stores a batch in one transaction (all or none), with
    /// one audit line per project; on disk before this returns. Errors name
    /// the spec's place in the batch (`tasks[3].image`).
    pub async fn create_batch(&self, caller: &Caller, specs: Vec<TaskSpec>) -> Result<Vec<Task>, ServiceError> {
        if specs.is_empty() || specs.len() > self.limits.max_batch {
            let message = format!("a batch holds 1 to {} tasks, not {}", self.limits.max_batch, specs.len());
            return Err(FieldError::new("tasks", message).into());
        }
        self.store_new(caller, specs, &|i| format!("tasks[{i}]"), true).await
    }

    /// Validates specs as `create` would, storing nothing.
    pub fn check(&self, caller: &Caller, specs: Vec<TaskSpec>) -> Result<(), ServiceError> {
        self.prepare(caller, specs, &|_| String::new()).map(|_| ())
    }

    /// Validated, admitted (quota, secrets) tasks ready to store, with
    /// their audit lines, for a caller that stores them in a transaction
    /// of its own (a schedule's firing).
    pub async fn prepare_new(&self, caller: &Caller, specs: Vec<TaskSpec>) -> Result<(Vec<NewTask>, Vec<AuditEntry>), ServiceError> {
        let prefix = |_| String::new();
        let tasks = self.prepare(caller, specs, &prefix)?;
        self.admit(&tasks, &prefix, &[]).await?;
        let audit = audit_lines(caller, &tasks, false);
        Ok((tasks, audit))
    }

    async fn store_new(
        &self,
        caller: &Caller,
        specs: Vec<TaskSpec>,
        prefix: &(dyn Fn(usize) -> String + Sync),
        batch: bool,
    ) -> Result<Vec<Task>, ServiceError> {
        let began = std::time::Instant::now();
        let tasks = self.prepare(caller, specs, prefix)?;
        self.admit(&tasks, prefix, &[]).await?;
        let created: Vec<Task> = tasks.iter().map(Task::from_new).collect();
        let audit = audit_lines(caller, &tasks, batch);
        self.metrics.stage("api_submit", began.elapsed());
        let storing = std::time::Instant::now();
        self.store.create_tasks_audited(tasks, audit).await?;
        self.metrics.stage("api_submit_store", storing.elapsed());
        self.wakeup.notify_one();
        Ok(created)
    }

    /// One task the caller may see, with why it waits if it does.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Task, ServiceError> {
        let mut task = self.load_visible(caller, id).await?;
        self.notes.annotate(&mut task, self.store.shape_key());
        if task.state == shepherd_core::TaskState::Queued {
            if let Some((in_project, in_cluster)) = self.store.queue_position(task.id).await? {
                let in_cluster = matches!(caller, Caller::Admin).then_some(in_cluster);
                task.queue = Some(self.metrics.queue_position(&task, in_project, in_cluster));
            }
        }
        Ok(task)
    }

    /// A page of tasks; a project token sees its own project's only (asking
    /// for another is refused).
    pub async fn list(&self, caller: &Caller, mut filter: TaskFilter) -> Result<TaskPage, ServiceError> {
        if let Some(own) = caller.project() {
            match &filter.project {
                Some(asked) if asked != own => {
                    return Err(ServiceError::Forbidden {
                        field: "project".into(),
                        message: format!("this token sees project `{own}` only"),
                    })
                }
                _ => filter.project = Some(own.to_string()),
            }
        }
        let mut page = self.store.list_tasks(filter).await?;
        page.tasks.iter_mut().for_each(|t| self.notes.annotate(t, self.store.shape_key()));
        Ok(page)
    }

    /// Cancels a task: a queued one ends at once; one on a node is stopped
    /// by its agent (SIGTERM, grace, SIGKILL) and then ends as cancelled.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Task, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        let results = self.store.apply(vec![(task.id, Event::Cancel)], Timestamp::now()).await?;
        match results.into_iter().next() {
            Some(Ok(applied)) => {
                if applied.decision.request_cancel {
                    if let Some(node) = &applied.node_id {
                        self.links.cancel(node, task.id);
                    }
                }
            }
            // (NotOnNode: only for reports, which name their node.)
            Some(Err(ApplyError::NotFound(_) | ApplyError::NotOnNode(_))) | None => return Err(ServiceError::NotFound(id.to_string())),
            Some(Err(ApplyError::Illegal(e))) => return Err(ServiceError::NotCancellable(e.to_string())),
        }
        let line = audit_entry(caller, Some(&task.project), "task.cancel", &task.id.to_string(), None);
        if let Err(e) = self.store.append_audit(vec![line]).await {
            tracing::error!(error = %e, task = %task.id, "could not write the audit log");
        }
        self.get(caller, id).await
    }

    /// Waits until the task ends or `limit` passes; the task either way.
    pub async fn wait(&self, caller: &Caller, id: &str, limit: Duration) -> Result<Task, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut task = self.store.get_task(task.id).await?.ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
            if task.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                self.notes.annotate(&mut task, self.store.shape_key());
                return Ok(task);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A task the caller may see: someone else's answers exactly as a
    /// missing one, and so does an id that cannot exist.
    pub async fn load_visible(&self, caller: &Caller, id: &str) -> Result<Task, ServiceError> {
        let parsed: TaskId = id.parse().map_err(|_| ServiceError::NotFound(id.to_string()))?;
        match self.store.get_task(parsed).await? {
            Some(task) if caller.can_access(&task.project) => Ok(task),
            _ => Err(ServiceError::NotFound(id.to_string())),
        }
    }

    /// Sets a task's progress (0-100 and a message); refused once the task
    /// has ended. The task as it is now.
    pub async fn set_progress(&self, caller: &Caller, id: &str, percent: f64, message: String) -> Result<Task, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        let progress = shepherd_core::Progress::new(percent, message)?;
        if task.state.is_terminal() {
            return Err(ServiceError::refused(
                Refusal::Conflict,
                "ended",
                format!("task {} has ended ({}): its progress is final", task.id, task.state),
            ));
        }
        self.store.set_progress(task.id, progress).await?;
        self.get(caller, id).await
    }

    /// The webhook deliveries of a task, every try.
    pub async fn webhook(&self, caller: &Caller, id: &str) -> Result<shepherd_store::WebhookDelivery, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        self.store.webhook_of(task.id).await?.ok_or_else(|| ServiceError::Missing(format!("webhook: task {id} names none")))
    }

    /// A task with its payload (the bytes its attempts read).
    pub async fn with_payload(&self, caller: &Caller, id: &str) -> Result<(Task, Option<Vec<u8>>), ServiceError> {
        let task = self.get(caller, id).await?;
        let payload = self.store.launch_spec(task.id).await?.and_then(|l| l.payload);
        Ok((task, payload))
    }

    /// A page of a task's stored output after chunk `after`.
    pub async fn output(
        &self,
        caller: &Caller,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<shepherd_store::StoredLogChunk>, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        Ok(self.store.read_logs(task.id, after, limit).await?)
    }

    /// A new task like an ended one (the same spec, code revision and
    /// payload), after `delay_seconds` if given.
    pub async fn retry(&self, caller: &Caller, id: &str, delay_seconds: Option<u32>) -> Result<Task, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        if !task.state.is_terminal() {
            return Err(ServiceError::refused(
                Refusal::Conflict,
                "not_ended",
                format!("task {id} has not ended; only an ended task is retried"),
            ));
        }
        let launch = self.store.launch_spec(task.id).await?.ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        let mut spec = launch.spec;
        spec.payload = launch.payload.map(|p| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, p));
        spec.start_at = None;
        spec.delay_seconds = delay_seconds.filter(|d| *d > 0);
        self.create(caller, spec).await
    }

    pub(crate) fn prepare(
        &self,
        caller: &Caller,
        specs: Vec<TaskSpec>,
        prefix: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Vec<NewTask>, ServiceError> {
        let now = Timestamp::now();
        let mut ids = self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        specs
            .into_iter()
            .enumerate()
            .map(|(index, mut spec)| {
                claim(caller, &mut spec, &within(&prefix(index), "project"))?;
                if let Some(profile) = spec.profile.as_deref().filter(|p| !self.engine.get().has_profile(p)) {
                    let known = self.engine.get().profile_names().join(", ");
                    return Err(FieldError::new("profile", format!("unknown profile `{profile}`; known: {known}"))
                        .within(&prefix(index))
                        .into());
                }
                let id = TaskId::generate(&mut ids, now);
                validate(spec, &self.limits, id, now).map_err(|e| e.within(&prefix(index)).into())
            })
            .collect()
    }

    /// Refuses tasks beyond a project's `max_queued`, and tasks naming
    /// secrets the project does not have.
    /// `extra`: tasks to count beyond one per entry (an array's children).
    pub(crate) async fn admit(
        &self,
        tasks: &[NewTask],
        prefix: &(dyn Fn(usize) -> String + Sync),
        extra: &[(String, u64)],
    ) -> Result<(), ServiceError> {
        let mut per_project: BTreeMap<&str, u64> = BTreeMap::new();
        for task in tasks {
            *per_project.entry(task.spec.project.as_str()).or_default() += 1;
        }
        for (project, more) in extra {
            *per_project.entry(project.as_str()).or_default() += more;
        }
        for (project, adding) in per_project {
            let Some(limits) = self.auth.project_limits(self.store.as_ref(), project).await? else { continue };
            if let Some(max) = limits.max_queued {
                let queued = self.store.count_queued(project).await?;
                if queued + adding > max {
                    self.metrics.quota_refused(project);
                    return Err(ServiceError::QuotaExceeded(format!(
                        "project `{project}` may have {max} queued tasks; it has {queued} and this adds {adding}"
                    )));
                }
            }
        }
        let mut packages = std::collections::BTreeSet::new();
        for (index, task) in tasks.iter().enumerate() {
            if let Some(package) = &task.spec.package {
                if !packages.insert((task.spec.project.as_str(), package.digest.as_str())) {
                    continue;
                }
                if self.store.package_size(&task.spec.project, &package.digest).await?.is_none() {
                    let message = format!("project `{}` has no package {}", task.spec.project, package.digest);
                    return Err(FieldError::new("package.digest", message).within(&prefix(index)).into());
                }
            }
        }
        let mut known: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (index, task) in tasks.iter().enumerate() {
            for (i, secret) in task.spec.secrets.iter().enumerate() {
                if !known.contains_key(&task.spec.project) {
                    let names = self.store.list_secrets(&task.spec.project).await?.into_iter().map(|s| s.name).collect();
                    known.insert(task.spec.project.clone(), names);
                }
                if !known.get(&task.spec.project).is_some_and(|names| names.contains(&secret.name)) {
                    let message = format!("project `{}` has no secret `{}`", task.spec.project, secret.name);
                    return Err(FieldError::new(format!("secrets[{i}].name"), message).within(&prefix(index)).into());
                }
            }
        }
        // Volumes and networks: only the project's own (another project's
        // are as unknown as ones that do not exist).
        let mut volumes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut policies: BTreeMap<String, shepherd_core::ProjectPolicy> = BTreeMap::new();
        for (index, task) in tasks.iter().enumerate() {
            let project = &task.spec.project;
            for (i, mount) in task.spec.volumes.iter().enumerate() {
                if !volumes.contains_key(project) {
                    let names = self.store.volumes(Some(project.clone())).await?.into_iter().map(|v| v.name).collect();
                    volumes.insert(project.clone(), names);
                }
                if !volumes.get(project).is_some_and(|names| names.contains(&mount.name)) {
                    let message = format!("project `{project}` has no volume `{}` (make it with `shepherd volume create`)", mount.name);
                    return Err(FieldError::new(format!("volumes[{i}].name"), message).within(&prefix(index)).into());
                }
            }
            if !policies.contains_key(project) && (!task.spec.networks.is_empty() || !task.spec.devices.is_empty()) {
                let policy = self.store.get_project(project).await?.map(|p| p.policy).unwrap_or_default();
                policies.insert(project.clone(), policy);
            }
            for (i, name) in task.spec.devices.iter().enumerate() {
                if !policies.get(project).is_some_and(|p| p.devices.contains(name)) {
                    let message = format!(
                        "project `{project}` may not use device `{name}` (the admin allows devices: `shepherd project policy --device`)"
                    );
                    return Err(ServiceError::Forbidden { field: within(&prefix(index), &format!("devices[{i}]")), message });
                }
            }
            for (i, name) in task.spec.networks.iter().enumerate() {
                if !policies.get(project).is_some_and(|p| p.networks.contains_key(name)) {
                    let message =
                        format!("project `{project}` has no network `{name}` (the admin adds it with `shepherd project network`)");
                    return Err(FieldError::new(format!("networks[{i}]"), message).within(&prefix(index)).into());
                }
            }
        }
        Ok(())
    }
}

fn within(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Puts a project token's task in its project (a task that names none
/// goes there); naming any other project is refused.
fn claim(caller: &Caller, spec: &mut TaskSpec, field: &str) -> Result<(), ServiceError> {
    if let Some(own) = caller.project() {
        if spec.project.is_empty() || spec.project == own {
            spec.project = own.to_string();
        } else {
            return Err(ServiceError::Forbidden {
                field: field.to_string(),
                message: format!("this token belongs to project `{own}` and cannot submit to `{}`", spec.project),
            });
        }
    }
    Ok(())
}

/// The audit line of a created task, or one per project for a batch.
fn audit_lines(caller: &Caller, tasks: &[NewTask], batch: bool) -> Vec<AuditEntry> {
    if let (false, [task]) = (batch, tasks) {
        return vec![audit_entry(caller, Some(&task.spec.project), "task.create", &task.id.to_string(), None)];
    }
    let (Some(first), Some(last)) = (tasks.first(), tasks.last()) else { return Vec::new() };
    let projects: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t.spec.project.as_str()).collect();
    projects
        .into_iter()
        .map(|project| {
            let detail = format!("{} tasks, {} to {}", tasks.len(), first.id, last.id);
            audit_entry(caller, Some(project), "task.create_batch", &first.id.to_string(), Some(detail))
        })
        .collect()
}

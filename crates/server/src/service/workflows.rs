//! Workflows: submissions with arrays, dependencies (batch positions
//! resolved to ids) and idempotency keys; arrays read, cancelled and
//! retried.

use crate::service::auth::Caller;
use crate::service::error::{Refusal, ServiceError};
use crate::service::tasks::{audit_entry, TaskService};
use serde::{Deserialize, Serialize};
use shepherd_core::{ArrayStatus, DependencyTarget, FieldError, NewTask, Task, TaskId, TaskSpec, Timestamp};
use shepherd_store::{ApplyResult, Children, Entry, IdempotencyKey, NewArray, Submission, Submitted};

/// What creating an array answers (`POST /v1/tasks` with `array`): its id
/// and size; `GET /v1/arrays/{id}` follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayCreated {
    /// The array's id (also a dependency target, `shepherd inspect ID`).
    pub id: String,
    pub project: String,
    /// `SHEPHERD_ARRAY_SIZE`.
    pub size: u32,
    /// How many children were made.
    pub children: u32,
    /// Always true: tells an array's answer from a task's.
    pub array: bool,
}

/// One created entry of a submission.
#[derive(Debug, Clone)]
pub enum Created {
    Task(Box<Task>),
    Array(ArrayCreated),
}

impl Created {
    /// Its id.
    pub fn id(&self) -> String {
        match self {
            Created::Task(t) => t.id.to_string(),
            Created::Array(a) => a.id.clone(),
        }
    }
}

/// An `Idempotency-Key` as a request brought it.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The header's value (1-255 visible ASCII characters).
    pub key: String,
    /// SHA-256 of the route and the body.
    pub request: String,
}

impl Idempotency {
    /// A checked key for the request `route` with `body`; the error names the header.
    pub fn new(key: &str, route: &str, body: &[u8]) -> Result<Idempotency, FieldError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldError::new("Idempotency-Key", "1 to 255 visible ASCII characters"));
        }
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(route.as_bytes());
        hash.update(b"\n");
        hash.update(body);
        let request = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Idempotency { key: key.to_string(), request })
    }
}

/// Renders what a submission made as its HTTP answer (status, JSON body),
/// which an idempotency key keeps.
pub type Render = dyn Fn(&[Created]) -> Result<(u16, String), ServiceError> + Sync;

/// The answer to a submission: made now, or the first one given for its key.
pub enum Answer {
    Created(Vec<Created>),
    Replayed { status: u16, body: String },
}

/// The most children of arrays one request may make (a batch of arrays
/// included): one array at its largest.
pub const MAX_CHILDREN_PER_REQUEST: u64 = shepherd_core::workflow::MAX_ARRAY_SIZE as u64;

impl TaskService {
    /// Whether a submission needs the workflow path (arrays, dependencies,
    /// an idempotency key) rather than plain creation.
    pub fn is_workflow(specs: &[TaskSpec], idempotency: Option<&Idempotency>) -> bool {
        idempotency.is_some() || specs.iter().any(|s| s.array.is_some() || !s.depends_on.is_empty())
    }

    /// The first answer given for `idempotency` in the caller's project,
    /// if the key was used in the last 24 hours; 409 if for another request.
    pub async fn replay(&self, caller: &Caller, project: &str, idempotency: &Idempotency) -> Result<Option<(u16, String)>, ServiceError> {
        let project = caller.project().unwrap_or(project);
        match self.store.idempotent_answer(project, &idempotency.key, Timestamp::now()).await? {
            Some((request, status, body)) if request == idempotency.request => Ok(Some((status, body))),
            Some(_) => Err(key_reused(&idempotency.key)),
            None => Ok(None),
        }
    }

    /// Validates and stores tasks and arrays with their dependencies (batch
    /// positions resolved to the ids made here) in one transaction.
    /// `answer` renders what was made as the HTTP answer (status, JSON)
    /// that an idempotency key keeps, stored in the same transaction.
    pub async fn submit(
        &self,
        caller: &Caller,
        specs: Vec<TaskSpec>,
        batch: bool,
        idempotency: Option<Idempotency>,
        answer: &Render,
    ) -> Result<Answer, ServiceError> {
        let prefix = |i: usize| if batch { format!("tasks[{i}]") } else { String::new() };
        if batch && (specs.is_empty() || specs.len() > self.limits.max_batch) {
            let message = format!("a batch holds 1 to {} tasks, not {}", self.limits.max_batch, specs.len());
            return Err(FieldError::new("tasks", message).into());
        }
        let lists: Vec<&[shepherd_core::Dependency]> = specs.iter().map(|s| s.depends_on.as_slice()).collect();
        if batch {
            shepherd_core::workflow::check_positions(&lists)?;
        } else if let Some(i) =
            specs.first().and_then(|s| s.depends_on.iter().position(|d| matches!(d.task, DependencyTarget::Position(_))))
        {
            return Err(FieldError::new(
                format!("depends_on[{i}].task"),
                "a position names an earlier task of a batch (POST /v1/tasks/batch)",
            )
            .into());
        }
        let mut tasks = self.prepare(caller, specs, &prefix)?;
        let children: u64 = tasks.iter().filter_map(|t| t.spec.array.map(|a| u64::from(a.size))).sum();
        if children > MAX_CHILDREN_PER_REQUEST {
            return Err(
                FieldError::new("tasks", format!("at most {MAX_CHILDREN_PER_REQUEST} array children per request, not {children}")).into()
            );
        }
        // Positions become the ids just made.
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        for task in &mut tasks {
            for dep in &mut task.spec.depends_on {
                if let DependencyTarget::Position(p) = dep.task {
                    dep.task = DependencyTarget::Id(ids[p as usize].to_string());
                }
            }
        }
        self.admit_counting(&tasks, &prefix).await?;
        let now = Timestamp::now();
        let mut entries = Vec::with_capacity(tasks.len());
        let mut created = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.spec.array {
                None => {
                    created.push(Created::Task(Box::new(Task::from_new(&task))));
                    entries.push(Entry::Task(task));
                }
                Some(array) => {
                    let children = Children::all(TaskId::block(now), array.size);
                    created.push(Created::Array(ArrayCreated {
                        id: task.id.to_string(),
                        project: task.spec.project.clone(),
                        size: array.size,
                        children: array.size,
                        array: true,
                    }));
                    entries.push(Entry::Array(NewArray {
                        id: task.id,
                        created_at: task.created_at,
                        spec: task.spec,
                        payload: task.payload,
                        children,
                        retry_of: None,
                    }));
                }
            }
        }
        self.store_entries(caller, entries, created, batch, idempotency, answer).await
    }

    async fn store_entries(
        &self,
        caller: &Caller,
        entries: Vec<Entry>,
        created: Vec<Created>,
        batch: bool,
        idempotency: Option<Idempotency>,
        answer: &Render,
    ) -> Result<Answer, ServiceError> {
        let project = entries.first().map(|e| e.spec().project.clone()).unwrap_or_default();
        let idempotency = match idempotency {
            None => None,
            Some(i) => {
                let (status, response) = answer(&created)?;
                Some(IdempotencyKey {
                    project: caller.project().unwrap_or(&project).to_string(),
                    key: i.key,
                    request: i.request,
                    status,
                    response,
                    at: Timestamp::now(),
                })
            }
        };
        let key = idempotency.as_ref().map(|k| k.key.clone());
        let audit = audit_lines(caller, &entries, batch);
        let submission = Submission { entries, audit, batch, idempotency };
        match self.store.submit(submission).await {
            Ok(Submitted::Created) => {
                // A failpoint for the crash test: the commit is on disk, the
                // answer never leaves (a retry with the key must replay it).
                if std::env::var_os("SHEPHERD_FAILPOINT_CRASH_AFTER_SUBMIT").is_some() {
                    tracing::error!("failpoint: crashing between the commit and the answer");
                    std::process::abort();
                }
                self.wakeup.notify_one();
                Ok(Answer::Created(created))
            }
            Ok(Submitted::Replayed { status, response }) => Ok(Answer::Replayed { status, body: response }),
            Err(shepherd_store::StoreError::IdempotencyConflict(_)) => Err(key_reused(key.as_deref().unwrap_or(""))),
            Err(shepherd_store::StoreError::Invalid { field, message }) => Err(FieldError::new(field, message).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// `admit`, counting each array as its children.
    async fn admit_counting(&self, tasks: &[NewTask], prefix: &(dyn Fn(usize) -> String + Sync)) -> Result<(), ServiceError> {
        let extra: Vec<(String, u64)> =
            tasks.iter().filter_map(|t| t.spec.array.map(|a| (t.spec.project.clone(), u64::from(a.size).saturating_sub(1)))).collect();
        self.admit(tasks, prefix, &extra).await
    }

    /// One array the caller may see (another project's answers as a missing one).
    pub async fn array(&self, caller: &Caller, id: &str) -> Result<ArrayStatus, ServiceError> {
        match self.store.get_array(id).await? {
            Some(array) if caller.can_access(&array.project) => Ok(array),
            _ => Err(ServiceError::Missing(format!("array with id {id}"))),
        }
    }

    /// The caller's arrays (a project token's own project only), newest first.
    pub async fn arrays(
        &self,
        caller: &Caller,
        project: Option<String>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<ArrayStatus>, ServiceError> {
        let project = match (caller.project(), project) {
            (Some(own), Some(asked)) if own != asked => {
                return Err(ServiceError::Forbidden { field: "project".into(), message: format!("this token sees project `{own}` only") })
            }
            (Some(own), _) => Some(own.to_string()),
            (None, asked) => asked,
        };
        Ok(self.store.list_arrays(project, before, limit).await?)
    }

    /// Cancels every child of an array that has not ended; those on a
    /// node are stopped by their agents.
    pub async fn cancel_array(&self, caller: &Caller, id: &str) -> Result<ArrayStatus, ServiceError> {
        let array = self.array(caller, id).await?;
        let results = self
            .store
            .cancel_array(Some(array.project.clone()), id, Timestamp::now())
            .await?
            .ok_or_else(|| ServiceError::Missing(format!("array with id {id}")))?;
        self.stop_on_nodes(&results);
        let line = audit_entry(caller, Some(&array.project), "array.cancel", id, None);
        if let Err(e) = self.store.append_audit(vec![line]).await {
            tracing::error!(error = %e, array = %id, "could not write the audit log");
        }
        self.array(caller, id).await
    }

    /// Asks the agents to stop the attempts a change asked to cancel.
    pub fn stop_on_nodes(&self, results: &[ApplyResult]) {
        for applied in results.iter().flatten() {
            if applied.decision.request_cancel {
                if let Some(node) = &applied.node_id {
                    self.links.cancel(node, applied.task_id);
                }
            }
        }
    }

    /// A new array of the failed (or timed-out) children of an ended one,
    /// same spec and payload, the same indices (`retry_of` names the old).
    pub async fn retry_failed(&self, caller: &Caller, id: &str) -> Result<ArrayCreated, ServiceError> {
        let array = self.array(caller, id).await?;
        if !matches!(array.state.as_str(), "succeeded" | "failed" | "cancelled") {
            return Err(ServiceError::refused(Refusal::Conflict, "not_ended", format!("array {id} has not ended; retry it once it has")));
        }
        let source = self.store.array_source(id).await?.ok_or_else(|| ServiceError::Missing(format!("array with id {id}")))?;
        if source.failed.is_empty() {
            return Err(ServiceError::refused(Refusal::Conflict, "nothing_failed", format!("no child of array {id} failed")));
        }
        let mut spec = source.spec;
        spec.payload = source.payload.map(|p| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, p));
        spec.start_at = None;
        spec.delay_seconds = None;
        // Its dependencies were met (or it would not have run): not again.
        spec.depends_on.clear();
        let mut tasks = self.prepare(caller, vec![spec], &|_| String::new())?;
        let task = tasks.pop().ok_or_else(|| ServiceError::Store(shepherd_store::StoreError::Corrupt("no array was made".into())))?;
        let extra = vec![(task.spec.project.clone(), (source.failed.len() as u64).saturating_sub(1))];
        self.admit(std::slice::from_ref(&task), &|_| String::new(), &extra).await?;
        let size = task.spec.array.map_or(0, |a| a.size);
        let created = ArrayCreated {
            id: task.id.to_string(),
            project: task.spec.project.clone(),
            size,
            children: source.failed.len() as u32,
            array: true,
        };
        let entry = Entry::Array(NewArray {
            id: task.id,
            created_at: task.created_at,
            spec: task.spec,
            payload: task.payload,
            children: Children::of(TaskId::block(Timestamp::now()), source.failed),
            retry_of: Some(id.to_string()),
        });
        let never = |_: &[Created]| Ok((201, String::new()));
        match self.store_entries(caller, vec![entry], vec![Created::Array(created.clone())], false, None, &never).await? {
            Answer::Created(_) => Ok(created),
            Answer::Replayed { .. } => Err(ServiceError::Store(shepherd_store::StoreError::Corrupt("a retry has no key".into()))),
        }
    }

    /// What a task's latest attempt that wrote one left in its result file.
    pub async fn result(&self, caller: &Caller, id: &str) -> Result<Vec<u8>, ServiceError> {
        let task = self.load_visible(caller, id).await?;
        self.store.task_result(task.id).await?.ok_or_else(|| ServiceError::Missing(format!("result: task {id} has written none")))
    }

    /// The edges around a task or an array: `(dependent, dependency, on)`.
    pub async fn edges(&self, caller: &Caller, id: &str) -> Result<Vec<(String, String, shepherd_core::DependOn)>, ServiceError> {
        let visible = match self.store.get_array(id).await? {
            Some(array) => caller.can_access(&array.project),
            None => self.load_visible(caller, id).await.is_ok(),
        };
        if !visible {
            return Err(ServiceError::NotFound(id.to_string()));
        }
        Ok(self.store.dependency_edges(id, 1000).await?)
    }
}

fn key_reused(key: &str) -> ServiceError {
    ServiceError::refused(
        Refusal::Conflict,
        "idempotency_key_reused",
        format!("Idempotency-Key `{key}` was used within 24 hours for a different request"),
    )
    .on_field("Idempotency-Key")
}

/// One audit line per entry for a single submission, one per project for a batch.
fn audit_lines(caller: &Caller, entries: &[Entry], batch: bool) -> Vec<shepherd_store::AuditEntry> {
    let action = |e: &Entry| if matches!(e, Entry::Array(_)) { "array.create" } else { "task.create" };
    if let (false, [entry]) = (batch, entries) {
        let detail = match entry {
            Entry::Array(a) => Some(format!("{} children", a.children.count)),
            Entry::Task(_) => None,
        };
        return vec![audit_entry(caller, Some(&entry.spec().project), action(entry), &entry.id().to_string(), detail)];
    }
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Vec::new() };
    let projects: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.spec().project.as_str()).collect();
    projects
        .into_iter()
        .map(|project| {
            let detail = format!("{} entries, {} to {}", entries.len(), first.id(), last.id());
            audit_entry(caller, Some(project), "task.create_batch", &first.id().to_string(), Some(detail))
        })
        .collect()
}

//! Task endpoints: create (one or a batch), get, list, cancel, wait.

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{validate, Event, NewTask, Task, TaskId, TaskSpec, TaskState, Timestamp};
use shepherd_store::{ApplyError, TaskFilter};
use std::time::Duration;

/// `POST /v1/tasks/batch` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 10,000 tasks, stored in one transaction: all or none.
    pub tasks: Vec<TaskSpec>,
}

/// The ids of a stored batch, in request order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    #[schema(value_type = Vec<String>)]
    pub ids: Vec<TaskId>,
}

/// A page of tasks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_cursor: Option<TaskId>,
}

pub fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    // An id that cannot exist answers exactly as a missing one does.
    raw.parse().map_err(|_| ApiError::not_found(format!("no task with id {raw}")))
}

/// A task the caller may see: someone else's answers exactly as a missing one.
pub async fn load_visible(state: &AppState, caller: &Caller, id: TaskId) -> Result<Task, ApiError> {
    match state.store.get_task(id).await? {
        Some(task) if caller.can_access(&task.project) => Ok(task),
        _ => Err(ApiError::not_found(format!("no task with id {id}"))),
    }
}

/// Puts a project token's tasks in its project; refuses another project.
fn claim(caller: &Caller, spec: &mut TaskSpec, field: &str) -> Result<(), ApiError> {
    if let Some(own) = caller.project() {
        if spec.project.is_empty() || spec.project == own {
            spec.project = own.to_string();
        } else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token belongs to project `{own}` and cannot submit to `{}`", spec.project),
            )
            .with_field(field));
        }
    }
    Ok(())
}

/// Refuses tasks beyond a project's `max_queued`, and tasks naming
/// secrets the project does not have.
async fn admit(state: &AppState, tasks: &[NewTask], prefix: &(dyn Fn(usize) -> String + Sync)) -> Result<(), ApiError> {
    let mut per_project: std::collections::BTreeMap<&str, u64> = Default::default();
    for task in tasks {
        *per_project.entry(task.spec.project.as_str()).or_default() += 1;
    }
    for (project, adding) in per_project {
        let Some(limits) = state.auth.project_limits(state.store.as_ref(), project).await? else { continue };
        if let Some(max) = limits.max_queued {
            let queued = state.store.count_queued(project).await?;
            if queued + adding > max {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    format!("project `{project}` may have {max} queued tasks; it has {queued} and this adds {adding}"),
                ));
            }
        }
    }
    let mut known: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (index, task) in tasks.iter().enumerate() {
        for (i, secret) in task.spec.secrets.iter().enumerate() {
            if !known.contains_key(&task.spec.project) {
                let names = state.store.list_secrets(&task.spec.project).await?.into_iter().map(|s| s.name).collect();
                known.insert(task.spec.project.clone(), names);
            }
            if !known.get(&task.spec.project).is_some_and(|names| names.contains(&secret.name)) {
                return Err(ApiError::from(
                    shepherd_core::FieldError::new(
                        format!("secrets[{i}].name"),
                        format!("project `{}` has no secret `{}`", task.spec.project, secret.name),
                    )
                    .within(&prefix(index)),
                ));
            }
        }
    }
    Ok(())
}

fn prepare(state: &AppState, caller: &Caller, specs: Vec<TaskSpec>, prefix: &(dyn Fn(usize) -> String + Sync)) -> Result<Vec<NewTask>, ApiError> {
    let now = Timestamp::now();
    let mut ids = state.ids.lock().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "id generator poisoned"))?;
    specs
        .into_iter()
        .enumerate()
        .map(|(index, mut spec)| {
            let field = if prefix(index).is_empty() { "project".to_string() } else { format!("{}.project", prefix(index)) };
            claim(caller, &mut spec, &field)?;
            if let Some(profile) = spec.profile.as_deref().filter(|p| !state.engine.has_profile(p)) {
                let known = state.engine.profile_names().join(", ");
                return Err(ApiError::from(
                    shepherd_core::FieldError::new("profile", format!("unknown profile `{profile}`; known: {known}")).within(&prefix(index)),
                ));
            }
            let id = TaskId::generate(&mut ids, now);
            validate(spec, &state.limits, id, now).map_err(|e| ApiError::from(e.within(&prefix(index))))
        })
        .collect()
}

/// Submit one task. It is on disk before this answers 201.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskSpec,
    responses((status = 201, body = Task), (status = 400, body = super::ErrorBody), (status = 413, body = super::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let mut tasks = prepare(&state, &caller, vec![spec], &|_| String::new())?;
    admit(&state, &tasks, &|_| String::new()).await?;
    let task = Task::from_new(&tasks[0]);
    let audit = super::audit_entry(&caller, Some(&task.project), "task.create", &task.id.to_string(), None);
    state.store.create_tasks_audited(std::mem::take(&mut tasks), vec![audit]).await?;
    state.scheduler_wakeup.notify_one();
    Ok((StatusCode::CREATED, Json(task)))
}

/// Submit up to 10,000 tasks in one durable transaction.
#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = BatchRequest,
    responses((status = 201, body = BatchResponse), (status = 400, body = super::ErrorBody), (status = 413, body = super::ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let count = batch.tasks.len();
    if count == 0 || count > state.limits.max_batch {
        return Err(ApiError::field("tasks", format!("a batch holds 1 to {} tasks, not {count}", state.limits.max_batch)));
    }
    let tasks = prepare(&state, &caller, batch.tasks, &|i| format!("tasks[{i}]"))?;
    admit(&state, &tasks, &|i| format!("tasks[{i}]")).await?;
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let projects: std::collections::BTreeSet<String> = tasks.iter().map(|t| t.spec.project.clone()).collect();
    let audit = projects
        .iter()
        .map(|project| {
            let detail = format!("{count} tasks, {} to {}", ids[0], ids[count - 1]);
            super::audit_entry(&caller, Some(project), "task.create_batch", &ids[0].to_string(), Some(detail))
        })
        .collect();
    state.store.create_tasks_audited(tasks, audit).await?;
    state.scheduler_wakeup.notify_one();
    Ok((StatusCode::CREATED, Json(BatchResponse { ids })))
}

/// One task with its attempts.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = super::ErrorBody)))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    let mut task = load_visible(&state, &caller, id).await?;
    state.notes.annotate(&mut task);
    Ok(Json(task))
}

fn list_filter(query: Option<String>) -> Result<TaskFilter, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query string: {e}")))?;
    let mut filter = TaskFilter { limit: 50, ..Default::default() };
    for (key, value) in pairs {
        match key.as_str() {
            "state" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let state: TaskState = name.parse().map_err(|e: shepherd_core::state::UnknownState| ApiError::field("state", e.to_string()))?;
                    filter.states.push(state);
                }
            }
            "project" => filter.project = Some(value),
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| ApiError::field("label", format!("`{value}`: use key=value")))?;
                filter.labels.push((k.to_string(), v.to_string()));
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::field("limit", "must be a number from 1 to 1000"))?;
            }
            "cursor" => {
                filter.before = Some(value.parse().map_err(|_| ApiError::field("cursor", "not a cursor from a previous page"))?);
            }
            other => return Err(ApiError::field(other, "unknown query parameter; use state, project, label, limit, cursor")),
        }
    }
    Ok(filter)
}

/// List tasks, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(
        ("state" = Option<String>, Query, description = "comma-separated states"),
        ("project" = Option<String>, Query, description = "project name"),
        ("label" = Option<String>, Query, description = "key=value; repeat to require several"),
        ("limit" = Option<u32>, Query, description = "page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = TaskList), (status = 400, body = super::ErrorBody)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, RawQuery(query): RawQuery) -> Result<Json<TaskList>, ApiError> {
    let mut filter = list_filter(query)?;
    if let Some(own) = caller.project() {
        match &filter.project {
            Some(asked) if asked != own => {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this token sees project `{own}` only"))
                    .with_field("project"))
            }
            _ => filter.project = Some(own.to_string()),
        }
    }
    let page = state.store.list_tasks(filter).await?;
    let mut tasks = page.tasks;
    tasks.iter_mut().for_each(|t| state.notes.annotate(t));
    Ok(Json(TaskList { tasks, next_cursor: page.next_cursor }))
}

/// Cancel a task. A queued task ends at once; a task on a node is stopped
/// by its agent (SIGTERM, then SIGKILL) and then ends as cancelled.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    let task = load_visible(&state, &caller, id).await?;
    let results = state.store.apply(vec![(id, Event::Cancel)], Timestamp::now()).await?;
    match results.into_iter().next() {
        Some(Ok(applied)) => {
            if applied.decision.request_cancel {
                if let Some(node) = &applied.node_id {
                    state.links.cancel(node, id);
                }
            }
        }
        Some(Err(ApplyError::NotFound(_))) | None => return Err(ApiError::not_found(format!("no task with id {id}"))),
        Some(Err(ApplyError::Illegal(e))) => return Err(ApiError::new(StatusCode::CONFLICT, "not_cancellable", e.to_string())),
    }
    state.audit(&caller, Some(&task.project), "task.cancel", &id.to_string(), None).await;
    get(State(state), Extension(caller), Path(id.to_string())).await
}

/// `wait` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Longest wait in seconds (default 60, at most 600).
    pub timeout_seconds: Option<u64>,
}

/// Long-poll until the task ends or the timeout passes; returns the task either way.
#[utoipa::path(get, path = "/v1/tasks/{id}/wait", tag = "tasks", params(("id" = String, Path, description = "task id"), WaitQuery),
    responses((status = 200, body = Task), (status = 404, body = super::ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    load_visible(&state, &caller, id).await?;
    let query: WaitQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("timeout_seconds", format!("bad query: {e}")))?;
    let limit = Duration::from_secs(query.timeout_seconds.unwrap_or(60).min(600));
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let task = state.store.get_task(id).await?.ok_or_else(|| ApiError::not_found(format!("no task with id {id}")))?;
        if task.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            let mut task = task;
            state.notes.annotate(&mut task);
            return Ok(Json(task));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Task endpoints: create (one or a batch), get, list, cancel, wait. Thin:
//! each decodes the request, calls the `TaskService`, and renders its answer
//! or its error.

use crate::http::error::ApiError;
use crate::http::error::ApiJsonBody;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shepherd_core::{Task, TaskId, TaskSpec, TaskState};
use shepherd_store::TaskFilter;
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

/// Submit one task. It is on disk before this answers 201.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskSpec,
    responses((status = 201, body = Task), (status = 400, body = crate::http::error::ErrorBody), (status = 413, body = crate::http::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJsonBody(spec, body): ApiJsonBody<TaskSpec>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let spec = if spec.code.is_some() {
        let object: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
        let mut specs = state.tasks.expand_codes(&caller, vec![spec], &|_| object.clone(), &|_| String::new()).await?;
        specs.pop().ok_or_else(|| ApiError::field("code", "no task was made"))?
    } else {
        spec
    };
    Ok((StatusCode::CREATED, Json(state.tasks.create(&caller, spec).await?)))
}

/// Submit up to 10,000 tasks in one durable transaction.
#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = BatchRequest,
    responses((status = 201, body = BatchResponse), (status = 400, body = crate::http::error::ErrorBody), (status = 413, body = crate::http::error::ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJsonBody(batch, body): ApiJsonBody<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let mut specs = batch.tasks;
    if specs.iter().any(|s| s.code.is_some()) {
        /// The batch's task objects as sent, for the tasks that name a code.
        #[derive(Deserialize)]
        struct Objects {
            tasks: Vec<Map<String, Value>>,
        }
        let objects: Option<Objects> = serde_json::from_slice(&body).ok();
        let object = |i: usize| objects.as_ref().and_then(|o| o.tasks.get(i).cloned());
        specs = state.tasks.expand_codes(&caller, specs, &object, &|i| format!("tasks[{i}]")).await?;
    }
    let created = state.tasks.create_batch(&caller, specs).await?;
    Ok((StatusCode::CREATED, Json(BatchResponse { ids: created.iter().map(|t| t.id).collect() })))
}

/// One task with its attempts.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.tasks.get(&caller, &id).await?))
}

fn list_filter(query: Option<String>) -> Result<TaskFilter, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query string: {e}")))?;
    let mut filter = TaskFilter { limit: 50, ..Default::default() };
    for (key, value) in pairs {
        match key.as_str() {
            "state" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let state: TaskState =
                        name.parse().map_err(|e: shepherd_core::state::UnknownState| ApiError::field("state", e.to_string()))?;
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
    responses((status = 200, body = TaskList), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskList>, ApiError> {
    let page = state.tasks.list(&caller, list_filter(query)?).await?;
    Ok(Json(TaskList { tasks: page.tasks, next_cursor: page.next_cursor }))
}

/// Cancel a task. A queued task ends at once; a task on a node is stopped
/// by its agent (SIGTERM, then SIGKILL) and then ends as cancelled.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.tasks.cancel(&caller, &id).await?))
}

/// A task's own report of its progress.
#[utoipa::path(post, path = "/v1/tasks/{id}/progress", tag = "tasks", params(("id" = String, Path, description = "task id")),
    request_body = shepherd_core::Progress,
    responses((status = 200, body = Task), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    crate::http::error::ApiJson(progress): crate::http::error::ApiJson<shepherd_core::Progress>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.tasks.set_progress(&caller, &id, f64::from(progress.percent), progress.message).await?))
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
    responses((status = 200, body = Task), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Task>, ApiError> {
    // An unknown or foreign task answers 404 before a bad query is looked at.
    state.tasks.load_visible(&caller, &id).await?;
    let query: WaitQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("timeout_seconds", format!("bad query: {e}")))?;
    let limit = Duration::from_secs(query.timeout_seconds.unwrap_or(60).min(600));
    Ok(Json(state.tasks.wait(&caller, &id, limit).await?))
}

/// How one candidate node scored for a task.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CandidateView {
    pub node_id: String,
    /// The sum of the weighted scores; the highest was chosen.
    pub total: f64,
    /// Each score plugin's weight × score in [0, 1].
    pub scores: std::collections::BTreeMap<String, f64>,
}

/// Why a task is where it is: for a placed task, how its best candidate
/// nodes scored (as long as this server remembers); for a waiting one, why.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementView {
    #[schema(value_type = String)]
    pub task_id: TaskId,
    pub state: TaskState,
    pub node_id: Option<String>,
    /// Why a queued task waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The best candidates of its latest placement, best first (empty if unknown).
    pub candidates: Vec<CandidateView>,
}

/// How the scheduler placed a task: the scores of its best candidates.
#[utoipa::path(get, path = "/v1/tasks/{id}/placement", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = PlacementView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn placement(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<PlacementView>, ApiError> {
    let task = state.tasks.get(&caller, &id).await?;
    let candidates = state
        .tasks
        .notes
        .scores(task.id)
        .into_iter()
        .map(|c| CandidateView { node_id: c.node_id, total: c.total, scores: c.scores.into_iter().collect() })
        .collect();
    let reason = (task.state == TaskState::Queued).then_some(task.reason).flatten();
    Ok(Json(PlacementView { task_id: task.id, state: task.state, node_id: task.node_id, reason, candidates }))
}

//! Task endpoints: create (one or a batch), get, list, cancel, wait. Thin:
//! each decodes the request, calls the `TaskService`, and renders its answer
//! or its error.

use crate::http::error::ApiError;
use crate::http::error::ApiJsonBody;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::error::ServiceError;
use crate::service::workflows::{Answer, Created, Idempotency, Render};
use crate::service::TaskService;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
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

/// The ids of a stored batch, in request order (an array's id for an array).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub ids: Vec<String>,
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

/// Submit one task, or an array of tasks (`array`), or a task that waits
/// for others (`depends_on`). It is on disk before this answers 201: a
/// task's JSON, or, for an array, an `ArrayCreated`. With an
/// `Idempotency-Key` header the same request within 24 hours answers the
/// same again (header `Idempotent-Replayed: true`) and stores nothing; the
/// same key with another body is refused (409).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; the same request answers the same for 24 h")),
    responses((status = 201, body = Task, description = "the task, or an `ArrayCreated` for an array"), (status = 400, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody), (status = 413, body = crate::http::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJsonBody(spec, body): ApiJsonBody<TaskSpec>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_of(&headers, "POST /v1/tasks", &body)?;
    if let Some(key) = &idempotency {
        if let Some((status, answer)) = state.tasks.replay(&caller, &project_of(&spec), key).await? {
            return Ok(raw_json(status, answer, true));
        }
    }
    let spec = if spec.code.is_some() {
        let object: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
        let mut specs = state.tasks.expand_codes(&caller, vec![spec], &|_| object.clone(), &|_| String::new()).await?;
        specs.pop().ok_or_else(|| ApiError::field("code", "no task was made"))?
    } else {
        spec
    };
    if !TaskService::is_workflow(std::slice::from_ref(&spec), idempotency.as_ref()) {
        return Ok((StatusCode::CREATED, Json(state.tasks.create(&caller, spec).await?)).into_response());
    }
    let answer = |created: &[Created]| -> Result<(u16, String), ServiceError> {
        let text = match created.first() {
            Some(Created::Task(task)) => serde_json::to_string(task),
            Some(Created::Array(array)) => serde_json::to_string(array),
            None => Ok("{}".to_string()),
        };
        Ok((201, text.map_err(|e| ServiceError::Store(shepherd_store::StoreError::Corrupt(e.to_string())))?))
    };
    answer_of(state.tasks.submit(&caller, vec![spec], false, idempotency, &answer).await?, &answer)
}

/// Submit up to 10,000 tasks (or arrays) in one durable transaction. An
/// entry may depend on an earlier one by its position (`"task": 0`), so a
/// whole graph goes in one call. `Idempotency-Key` as for one task.
#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; the same request answers the same for 24 h")),
    responses((status = 201, body = BatchResponse), (status = 400, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody), (status = 413, body = crate::http::error::ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJsonBody(batch, body): ApiJsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_of(&headers, "POST /v1/tasks/batch", &body)?;
    if let (Some(key), Some(first)) = (&idempotency, batch.tasks.first()) {
        if let Some((status, answer)) = state.tasks.replay(&caller, &project_of(first), key).await? {
            return Ok(raw_json(status, answer, true));
        }
    }
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
    if !TaskService::is_workflow(&specs, idempotency.as_ref()) {
        let created = state.tasks.create_batch(&caller, specs).await?;
        return Ok((StatusCode::CREATED, Json(BatchResponse { ids: created.iter().map(|t| t.id.to_string()).collect() })).into_response());
    }
    let answer = |created: &[Created]| -> Result<(u16, String), ServiceError> {
        let ids = created.iter().map(Created::id).collect();
        let text = serde_json::to_string(&BatchResponse { ids });
        Ok((201, text.map_err(|e| ServiceError::Store(shepherd_store::StoreError::Corrupt(e.to_string())))?))
    };
    answer_of(state.tasks.submit(&caller, specs, true, idempotency, &answer).await?, &answer)
}

/// The project a request is about, as its idempotency key is kept under.
fn project_of(spec: &TaskSpec) -> String {
    if spec.project.is_empty() {
        TaskSpec::default_project()
    } else {
        spec.project.clone()
    }
}

/// The request's `Idempotency-Key`, if it has one (400 naming the header if it is not one).
fn idempotency_of(headers: &HeaderMap, route: &str, body: &[u8]) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::field("Idempotency-Key", "1 to 255 visible ASCII characters"))?;
    Ok(Some(Idempotency::new(text, route, body)?))
}

/// A JSON answer as stored (so that a replay is the same bytes).
fn raw_json(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    response
}

fn answer_of(answer: Answer, render: &Render) -> Result<Response, ApiError> {
    match answer {
        Answer::Created(created) => {
            let (status, body) = render(&created)?;
            Ok(raw_json(status, body, false))
        }
        Answer::Replayed { status, body } => Ok(raw_json(status, body, true)),
    }
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
            "array" => {
                value.parse::<TaskId>().map_err(|_| ApiError::field("array", format!("`{value}` is not an array id")))?;
                filter.array = Some(value);
            }
            other => return Err(ApiError::field(other, "unknown query parameter; use state, project, label, array, limit, cursor")),
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
        ("array" = Option<String>, Query, description = "only the children of this array"),
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

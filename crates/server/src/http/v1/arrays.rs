//! Array endpoints: read one or a page, cancel, retry the failed children;
//! and the dependency edges around a task or an array. Thin over the
//! `TaskService`.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::workflows::ArrayCreated;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{ArrayStatus, DependOn};

/// A page of arrays, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayList {
    pub arrays: Vec<ArrayStatus>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/arrays` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArrayQuery {
    /// Only this project's (a project token sees its own only).
    pub project: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Arrays, newest first, with their children's counts.
#[utoipa::path(get, path = "/v1/arrays", tag = "arrays", params(ArrayQuery),
    responses((status = 200, body = ArrayList), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<ArrayList>, ApiError> {
    let query: ArrayQuery = crate::http::error::query(query)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "must be a number from 1 to 100"));
    }
    let mut arrays = state.tasks.arrays(&caller, query.project, query.cursor, limit + 1).await?;
    let next_cursor = if arrays.len() > limit {
        arrays.truncate(limit);
        arrays.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok(Json(ArrayList { arrays, next_cursor }))
}

/// One array: its state, its children's counts by state, the indices of
/// those that failed.
#[utoipa::path(get, path = "/v1/arrays/{id}", tag = "arrays", params(("id" = String, Path, description = "array id")),
    responses((status = 200, body = ArrayStatus), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ArrayStatus>, ApiError> {
    Ok(Json(state.tasks.array(&caller, &id).await?))
}

/// Cancel an array: every child that has not ended (those on a node are
/// stopped by their agents), in one transaction.
#[utoipa::path(post, path = "/v1/arrays/{id}/cancel", tag = "arrays", params(("id" = String, Path, description = "array id")),
    responses((status = 200, body = ArrayStatus), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ArrayStatus>, ApiError> {
    Ok(Json(state.tasks.cancel_array(&caller, &id).await?))
}

/// `POST /v1/arrays/{id}/retry` body.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Only the failed (and timed-out) children: the only kind of retry
    /// there is (default true).
    #[serde(default = "yes")]
    pub failed: bool,
}

fn yes() -> bool {
    true
}

/// Run an ended array's failed children again: a new array with the same
/// spec and payload and only those indices (`retry_of` names the old one).
#[utoipa::path(post, path = "/v1/arrays/{id}/retry", tag = "arrays", params(("id" = String, Path, description = "array id")),
    request_body = RetryRequest,
    responses((status = 201, body = ArrayCreated), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    crate::http::error::ApiJson(request): crate::http::error::ApiJson<RetryRequest>,
) -> Result<(StatusCode, Json<ArrayCreated>), ApiError> {
    if !request.failed {
        return Err(ApiError::field("failed", "only the failed children are retried (`\"failed\": true`)"));
    }
    Ok((StatusCode::CREATED, Json(state.tasks.retry_failed(&caller, &id).await?)))
}

/// What a task wrote to `$SHEPHERD_RESULT_FILE` (its latest attempt that
/// wrote one; at most 64 KiB), as it wrote it.
#[utoipa::path(get, path = "/v1/tasks/{id}/result", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn result(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let bytes = state.tasks.result(&caller, &id).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// One edge of the dependency graph: `task` waits for `depends_on`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Edge {
    pub task: String,
    pub depends_on: String,
    pub on: DependOn,
}

/// The edges around a task or an array.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Edges {
    pub edges: Vec<Edge>,
}

/// What a task or an array waits for, and what waits for it.
#[utoipa::path(get, path = "/v1/tasks/{id}/dependencies", tag = "tasks", params(("id" = String, Path, description = "task or array id")),
    responses((status = 200, body = Edges), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn dependencies(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Edges>, ApiError> {
    let edges = state.tasks.edges(&caller, &id).await?;
    Ok(Json(Edges { edges: edges.into_iter().map(|(task, depends_on, on)| Edge { task, depends_on, on }).collect() }))
}

//! Schedules: thin handlers over `ScheduleService`.

use crate::http::error::{query, ApiError, ApiJson};
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{Schedule, ScheduleSpec};

/// Query of `GET /v1/schedules`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// The project (the admin sees every project's by default).
    pub project: Option<String>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The page after this schedule id (the previous page's `next`).
    pub after: Option<String>,
}

/// Schedules, oldest first, a page at a time.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
    /// Where the next page starts (`?after=`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Create a schedule.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleSpec,
    responses((status = 201, body = Schedule), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.schedules.create(&caller, spec).await?)))
}

/// List schedules.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(ScheduleQuery), responses((status = 200, body = ScheduleList)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ScheduleList>, ApiError> {
    let q: ScheduleQuery = query(raw)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 1000"));
    }
    let all = state.schedules.list(&caller, q.project.as_deref()).await?;
    let start = match &q.after {
        Some(after) => all.iter().position(|s| s.id == *after).map_or(all.len(), |at| at + 1),
        None => 0,
    };
    let schedules: Vec<Schedule> = all.iter().skip(start).take(limit).cloned().collect();
    let next = (all.len() > start + limit).then(|| schedules.last().map(|s| s.id.clone())).flatten();
    Ok(Json(ScheduleList { schedules, next }))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.get(&caller, &id).await?))
}

/// Pause a schedule: no slot fires until it is resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.pause(&caller, &id).await?))
}

/// Resume a paused schedule from now (slots that passed meanwhile do not fire).
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.resume(&caller, &id).await?))
}

/// Cancel a schedule for good (it stays listed as `cancelled`).
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn cancel_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.cancel(&caller, &id).await?))
}

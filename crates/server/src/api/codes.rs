//! Codes and schedules: thin handlers over `CodeService` and `ScheduleService`.

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{Code, CodeSpec, Schedule, ScheduleSpec};

/// Query of the code endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CodeQuery {
    /// The project (a project token's own by default; the admin's: `default`, or every project when listing).
    pub project: Option<String>,
    /// A revision (default: the latest).
    pub revision: Option<u32>,
}

fn query<T: serde::de::DeserializeOwned + Default>(raw: Option<String>) -> Result<T, ApiError> {
    match raw.as_deref() {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_urlencoded::from_str(text).map_err(|e| ApiError::field("query", format!("bad query string: {e}"))),
    }
}

/// Codes, by name.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeList {
    pub codes: Vec<Code>,
}

/// A code's revisions, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevisionList {
    pub revisions: Vec<Code>,
}

/// `POST /v1/codes/{name}/rollback` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to make current again (as a new revision, its copy).
    pub revision: u32,
}

/// Push a code: a new revision of it (the first if the name is new).
#[utoipa::path(post, path = "/v1/codes", tag = "codes", request_body = CodeSpec,
    responses((status = 201, body = Code), (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody)))]
pub async fn push(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<CodeSpec>,
) -> Result<(StatusCode, Json<Code>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.codes.push(&caller, spec).await?)))
}

/// List codes (each at its latest revision).
#[utoipa::path(get, path = "/v1/codes", tag = "codes", params(CodeQuery), responses((status = 200, body = CodeList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CodeList>, ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok(Json(CodeList { codes: state.codes.list(&caller, q.project.as_deref()).await? }))
}

/// One code, at its latest revision or the one asked.
#[utoipa::path(get, path = "/v1/codes/{name}", tag = "codes", params(("name" = String, Path, description = "code name"), CodeQuery),
    responses((status = 200, body = Code), (status = 404, body = super::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Code>, ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok(Json(state.codes.get(&caller, q.project.as_deref(), &name, q.revision).await?))
}

/// A code's revisions, newest first.
#[utoipa::path(get, path = "/v1/codes/{name}/revisions", tag = "codes", params(("name" = String, Path, description = "code name"), CodeQuery),
    responses((status = 200, body = RevisionList), (status = 404, body = super::ErrorBody)))]
pub async fn revisions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RevisionList>, ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok(Json(RevisionList { revisions: state.codes.revisions(&caller, q.project.as_deref(), &name).await? }))
}

/// Make an earlier revision current again (as a new revision).
#[utoipa::path(post, path = "/v1/codes/{name}/rollback", tag = "codes", params(("name" = String, Path, description = "code name"), CodeQuery),
    request_body = RollbackRequest, responses((status = 201, body = Code), (status = 404, body = super::ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    ApiJson(body): ApiJson<RollbackRequest>,
) -> Result<(StatusCode, Json<Code>), ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok((StatusCode::CREATED, Json(state.codes.rollback(&caller, q.project.as_deref(), &name, body.revision).await?)))
}

/// Delete a code: it can no longer be run; tasks made from it go on.
#[utoipa::path(delete, path = "/v1/codes/{name}", tag = "codes", params(("name" = String, Path, description = "code name"), CodeQuery),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiError> {
    let q: CodeQuery = query(raw)?;
    state.codes.delete(&caller, q.project.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Store a code package: the body is the zip (at most 32 MiB). Name its
/// digest in a code's `package` to run it.
#[utoipa::path(post, path = "/v1/packages", tag = "codes", params(CodeQuery),
    request_body(content = Vec<u8>, content_type = "application/zip"),
    responses((status = 201, body = crate::service::codes::StoredPackage), (status = 400, body = super::ErrorBody), (status = 413, body = super::ErrorBody)))]
pub async fn put_package(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<crate::service::codes::StoredPackage>), ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok((StatusCode::CREATED, Json(state.codes.put_package(&caller, q.project.as_deref(), body.to_vec()).await?)))
}

/// A project's code packages, oldest first, and its package quota.
#[utoipa::path(get, path = "/v1/packages", tag = "codes", params(CodeQuery),
    responses((status = 200, body = crate::service::codes::PackageList), (status = 404, body = super::ErrorBody)))]
pub async fn list_packages(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<crate::service::codes::PackageList>, ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok(Json(state.codes.packages(&caller, q.project.as_deref()).await?))
}

/// Remove a code package (refused while a live code or an unfinished task runs it).
#[utoipa::path(delete, path = "/v1/packages/{digest}", tag = "codes", params(("digest" = String, Path, description = "the package's SHA-256"), CodeQuery),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn delete_package(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiError> {
    let q: CodeQuery = query(raw)?;
    state.codes.delete_package(&caller, q.project.as_deref(), &digest).await?;
    Ok(StatusCode::NO_CONTENT)
}

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
    responses((status = 201, body = Schedule), (status = 400, body = super::ErrorBody)))]
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
    responses((status = 200, body = Schedule), (status = 404, body = super::ErrorBody)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.get(&caller, &id).await?))
}

/// Pause a schedule: no slot fires until it is resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.pause(&caller, &id).await?))
}

/// Resume a paused schedule from now (slots that passed meanwhile do not fire).
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.resume(&caller, &id).await?))
}

/// Cancel a schedule for good (it stays listed as `cancelled`).
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn cancel_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.cancel(&caller, &id).await?))
}

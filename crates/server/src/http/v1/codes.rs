//! Codes: thin handlers over `CodeService`.

use crate::http::error::{query, ApiError, ApiJson};
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{Code, CodeSpec};

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
    responses((status = 201, body = Code), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody)))]
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
    responses((status = 200, body = Code), (status = 404, body = crate::http::error::ErrorBody)))]
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
    responses((status = 200, body = RevisionList), (status = 404, body = crate::http::error::ErrorBody)))]
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
    request_body = RollbackRequest, responses((status = 201, body = Code), (status = 404, body = crate::http::error::ErrorBody)))]
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
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
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

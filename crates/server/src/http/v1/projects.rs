//! Tenants: projects and their limits, API tokens, secrets, and the audit log.
//!
//! The admin token manages projects and tokens; a project token sees its
//! own project, sets its own secrets, and reads its own audit log. Another
//! project answers 404, as a missing one does.

use crate::http::error::ApiError;
use crate::http::error::ApiJson;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::projects::NewToken;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{ProjectLimits, Timestamp};
use shepherd_store::{AuditEntry, Project, TokenRecord};

/// A project as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectView {
    pub name: String,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    pub limits: ProjectLimits,
    /// Volume drivers, networks, egress and devices its tasks may use.
    pub policy: shepherd_core::ProjectPolicy,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> ProjectView {
        ProjectView { name: p.name, created_at: p.created_at, limits: p.limits, policy: p.policy }
    }
}

/// `POST /v1/projects` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1-63 of lower-case letters, digits, - and _.
    pub name: String,
    #[serde(default)]
    pub limits: ProjectLimits,
}

/// A new project with its first token (shown only in this answer).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedProject {
    pub project: ProjectView,
    pub token: CreatedToken,
}

/// The projects the caller can see.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

/// A token as lists show it: never the token itself.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub project: String,
    pub name: String,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub revoked_at: Option<Timestamp>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> TokenView {
        TokenView { id: t.id, project: t.project, name: t.name, created_at: t.created_at, revoked_at: t.revoked_at }
    }
}

/// A new token. `token` is shown this once; only its hash is kept.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenView,
    pub token: String,
}

/// `POST /v1/projects/{project}/tokens` body.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (default `default`).
    #[serde(default)]
    pub name: Option<String>,
}

/// A project's tokens.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// `PUT /v1/projects/{project}/secrets/{name}` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value (UTF-8 text, at most 64 KiB). Never returned by the API.
    pub value: String,
}

/// A secret's name; its value is never shown.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    pub name: String,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
}

/// A project's secrets, names only.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
}

/// One audit log line.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    /// The entry's number: within its project when the list is of one
    /// project (a project token's always is), so it reveals nothing of
    /// other projects; in the whole log when the admin lists everything.
    pub seq: i64,
    #[schema(value_type = String)]
    pub at: Timestamp,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub action: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> AuditView {
        AuditView { seq: e.seq, at: e.at, actor: e.actor, project: e.project, action: e.action, target: e.target, detail: e.detail }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for older entries; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

impl From<NewToken> for CreatedToken {
    fn from(t: NewToken) -> CreatedToken {
        CreatedToken { info: t.record.into(), token: t.token }
    }
}

/// Create a project and its first token (admin).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProject,
    responses((status = 201, body = CreatedProject), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody),
        (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<CreatedProject>), ApiError> {
    let (project, token) = state.projects.create(&caller, &body.name, body.limits).await?;
    Ok((StatusCode::CREATED, Json(CreatedProject { project: project.into(), token: token.into() })))
}

/// Projects: all of them for the admin, its own for a project token.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", responses((status = 200, body = ProjectList)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<ProjectList>, ApiError> {
    let projects = state.projects.list(&caller).await?.into_iter().map(ProjectView::from).collect();
    Ok(Json(ProjectList { projects }))
}

/// One project.
#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(state.projects.visible(&caller, &name).await?.into()))
}

/// `PATCH /v1/projects/{project}` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    /// The new limits (replacing the old ones entirely).
    pub limits: ProjectLimits,
}

/// Change a project's limits (admin).
#[utoipa::path(patch, path = "/v1/projects/{project}", tag = "projects", request_body = UpdateProject,
    params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectView), (status = 403, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateProject>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(state.projects.set_limits(&caller, &name, body.limits).await?.into()))
}

/// Create another token for a project (admin).
#[utoipa::path(post, path = "/v1/projects/{project}/tokens", tag = "projects", request_body = CreateToken,
    params(("project" = String, Path, description = "project name")),
    responses((status = 201, body = CreatedToken), (status = 403, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    state.projects.visible(&caller, &name).await?;
    caller.require_admin()?;
    let body: CreateToken = if body.iter().all(u8::is_ascii_whitespace) {
        CreateToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::field("name", format!("bad body: {e}")))?
    };
    Ok((StatusCode::CREATED, Json(state.projects.create_token(&caller, &name, body.name).await?.into())))
}

/// A project's tokens (never the tokens themselves).
#[utoipa::path(get, path = "/v1/projects/{project}/tokens", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = TokenList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.projects.tokens(&caller, &name).await?.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { tokens }))
}

/// Revoke a token: it stops working at once. A project token may revoke
/// its project's tokens, itself included.
#[utoipa::path(delete, path = "/v1/projects/{project}/tokens/{id}", tag = "projects",
    params(("project" = String, Path, description = "project name"), ("id" = String, Path, description = "token id")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.projects.revoke_token(&caller, &name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a secret (create or replace). Its value is never returned.
#[utoipa::path(put, path = "/v1/projects/{project}/secrets/{name}", tag = "projects", request_body = SecretValue,
    params(("project" = String, Path, description = "project name"), ("name" = String, Path, description = "secret name")),
    responses((status = 204), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn put_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SecretValue>,
) -> Result<StatusCode, ApiError> {
    state.projects.put_secret(&caller, &project, &name, body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a secret.
#[utoipa::path(delete, path = "/v1/projects/{project}/secrets/{name}", tag = "projects",
    params(("project" = String, Path, description = "project name"), ("name" = String, Path, description = "secret name")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.projects.delete_secret(&caller, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's secrets, names only.
#[utoipa::path(get, path = "/v1/projects/{project}/secrets", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = SecretList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list_secrets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    let secrets = state
        .projects
        .secrets(&caller, &project)
        .await?
        .into_iter()
        .map(|s| SecretView { name: s.name, updated_at: s.updated_at })
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// The audit log, newest first: everything for the admin (or one
/// `project`), the token's own project otherwise.
#[utoipa::path(get, path = "/v1/audit", tag = "projects",
    params(
        ("project" = Option<String>, Query, description = "only this project"),
        ("limit" = Option<u32>, Query, description = "page size, 1 to 1000 (default 100)"),
        ("cursor" = Option<i64>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = AuditList), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditList>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query string: {e}")))?;
    let (mut project, mut limit, mut before) = (None, 100usize, None);
    for (key, value) in pairs {
        match key.as_str() {
            "project" => project = Some(value),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::field("limit", "a number from 1 to 1000"))?
            }
            "cursor" => before = Some(value.parse().map_err(|_| ApiError::field("cursor", "not a cursor from a previous page"))?),
            other => return Err(ApiError::field(other, "unknown query parameter; use project, limit, cursor")),
        }
    }
    let entries: Vec<AuditView> = state.projects.audit(&caller, project, before, limit).await?.into_iter().map(AuditView::from).collect();
    let next_cursor = if entries.len() == limit { entries.last().map(|e| e.seq) } else { None };
    Ok(Json(AuditList { entries, next_cursor }))
}

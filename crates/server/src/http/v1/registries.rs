//! A project's registry logins (`/v1/projects/{project}/registries`): kept
//! as project secrets (`registry.HOST`), never returned, and handed to the
//! agent only with the launch spec of that project's tasks whose image
//! comes from that registry.

use super::projects::project_or_404;
use crate::http::error::ApiError;
use crate::http::error::ApiJson;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::registry::{is_registry_host, registry_of_secret, secret_name};
use shepherd_core::{RegistryAuth, RegistryLogin, Timestamp};

/// A registry the project has a login to (never its password).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryView {
    pub registry: String,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
}

/// A project's registry logins.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryList {
    pub registries: Vec<RegistryView>,
}

/// Log a project in to a registry (create or replace): its tasks whose
/// image comes from there pull with it.
#[utoipa::path(put, path = "/v1/projects/{project}/registries/{registry}", tag = "projects", request_body = RegistryLogin,
    params(("project" = String, Path, description = "project name"), ("registry" = String, Path, description = "host[:port], e.g. ghcr.io")),
    responses((status = 204), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, registry)): Path<(String, String)>,
    ApiJson(body): ApiJson<RegistryLogin>,
) -> Result<StatusCode, ApiError> {
    project_or_404(&state, &caller, &project).await?;
    if !is_registry_host(&registry) {
        return Err(ApiError::field("registry", format!("`{registry}`: a registry is host[:port], e.g. ghcr.io or 127.0.0.1:5000")));
    }
    if body.username.is_empty() || body.username.len() > 256 {
        return Err(ApiError::field("username", "1-256 characters"));
    }
    if body.password.is_empty() || body.password.len() > 8192 {
        return Err(ApiError::field("password", "1-8192 characters"));
    }
    let username = body.username.clone();
    let value = serde_json::to_vec(&RegistryAuth { registry: registry.clone(), username: body.username, password: body.password })
        .map_err(|e| ApiError::field("password", e.to_string()))?;
    state.store.put_secret(&project, &secret_name(&registry), value, Timestamp::now()).await?;
    state.audit(&caller, Some(&project), "registry.login", &registry, Some(format!("as {username}"))).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Forget a project's login to a registry.
#[utoipa::path(delete, path = "/v1/projects/{project}/registries/{registry}", tag = "projects",
    params(("project" = String, Path, description = "project name"), ("registry" = String, Path, description = "host[:port]")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, registry)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    project_or_404(&state, &caller, &project).await?;
    if !state.store.delete_secret(&project, &secret_name(&registry)).await? {
        return Err(ApiError::not_found(format!("project {project} has no login to {registry}")));
    }
    state.audit(&caller, Some(&project), "registry.logout", &registry, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The registries a project has logins to.
#[utoipa::path(get, path = "/v1/projects/{project}/registries", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = RegistryList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<RegistryList>, ApiError> {
    project_or_404(&state, &caller, &project).await?;
    let registries = state
        .store
        .list_secrets(&project)
        .await?
        .into_iter()
        .filter_map(|s| registry_of_secret(&s.name).map(|registry| RegistryView { registry, updated_at: s.updated_at }))
        .collect();
    Ok(Json(RegistryList { registries }))
}

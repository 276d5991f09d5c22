//! A project's registry logins (`/v1/projects/{project}/registries`): kept
//! as project secrets (`registry.HOST`), never returned, and handed to the
//! agent only with the launch spec of that project's tasks whose image
//! comes from that registry.

use crate::http::error::ApiError;
use crate::http::error::ApiJson;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{RegistryLogin, Timestamp};

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
    state.projects.registry_login(&caller, &project, &registry, body).await?;
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
    state.projects.registry_logout(&caller, &project, &registry).await?;
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
    let registries = state.projects.registries(&caller, &project).await?;
    Ok(Json(RegistryList {
        registries: registries.into_iter().map(|(registry, updated_at)| RegistryView { registry, updated_at }).collect(),
    }))
}

//! A project's named volumes (`/v1/projects/{project}/volumes`) and its
//! policy (`PUT /v1/projects/{project}/policy`, admin).
//!
//! A project token manages its own project's volumes, through the drivers
//! the admin allows it and within its quotas; another project's volumes
//! answer 404, as missing ones do. A volume is made on an engine when the
//! first task that mounts it starts there; removing it removes it from the
//! engines that hold it.

use crate::http::error::ApiError;
use crate::http::error::ApiJson;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{ProjectPolicy, Volume, VolumeSpec};

/// A project's volumes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeList {
    pub volumes: Vec<Volume>,
}

/// Make a volume in a project (recorded now; made on an engine when its
/// first task starts).
#[utoipa::path(post, path = "/v1/projects/{project}/volumes", tag = "volumes", request_body = VolumeSpec,
    params(("project" = String, Path, description = "project name")),
    responses((status = 201, body = Volume), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody), (status = 429, body = crate::http::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    ApiJson(spec): ApiJson<VolumeSpec>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.volumes.create(&caller, &project, spec).await?)))
}

/// A project's volumes.
#[utoipa::path(get, path = "/v1/projects/{project}/volumes", tag = "volumes", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = VolumeList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<VolumeList>, ApiError> {
    Ok(Json(VolumeList { volumes: state.volumes.list(&caller, &project).await? }))
}

/// One volume.
#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{name}", tag = "volumes",
    params(("project" = String, Path, description = "project name"), ("name" = String, Path, description = "volume name")),
    responses((status = 200, body = Volume), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(state.volumes.get(&caller, &project, &name).await?))
}

/// Remove a volume and its data on every engine that holds it. Refused
/// (409) while a queued, scheduled or running task of the project mounts it.
#[utoipa::path(delete, path = "/v1/projects/{project}/volumes/{name}", tag = "volumes",
    params(("project" = String, Path, description = "project name"), ("name" = String, Path, description = "volume name")),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.volumes.delete(&caller, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a project's policy: the volume drivers it may use, its named
/// networks, its egress and the devices its tasks may ask for (admin).
/// Replaces the old policy entirely.
#[utoipa::path(put, path = "/v1/projects/{project}/policy", tag = "projects", request_body = ProjectPolicy,
    params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectPolicy), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn set_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    ApiJson(policy): ApiJson<ProjectPolicy>,
) -> Result<Json<ProjectPolicy>, ApiError> {
    Ok(Json(state.projects.set_policy(&caller, &project, policy).await?))
}

/// A project's policy.
#[utoipa::path(get, path = "/v1/projects/{project}/policy", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectPolicy), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<ProjectPolicy>, ApiError> {
    Ok(Json(state.projects.visible(&caller, &project).await?.policy))
}

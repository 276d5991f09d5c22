//! A project's named volumes (`/v1/projects/{project}/volumes`) and its
//! policy (`PUT /v1/projects/{project}/policy`, admin).
//!
//! A project token manages its own project's volumes, through the drivers
//! the admin allows it and within its quotas; another project's volumes
//! answer 404, as missing ones do. A volume is made on an engine when the
//! first task that mounts it starts there; removing it removes it from the
//! engines that hold it.

use super::projects::project_or_404;
use crate::http::error::ApiError;
use crate::http::error::ApiJson;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{ProjectPolicy, TaskState, Timestamp, Volume, VolumeScope, VolumeSpec};
use shepherd_store::TaskFilter;

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
    let found = project_or_404(&state, &caller, &project).await?;
    spec.validate(&found.policy)?;
    if !found.policy.allows_volume_driver(&spec.driver) {
        let allowed = if found.policy.volume_drivers.is_empty() { "local".to_string() } else { found.policy.volume_drivers.join(", ") };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "driver_not_allowed",
            format!("project {project} may not use volume driver `{}` (allowed: {allowed}; the admin sets them)", spec.driver),
        )
        .with_field("driver"));
    }
    let existing = state.store.volumes(Some(project.clone())).await?;
    if let Some(max) = found.limits.max_volumes {
        if existing.len() as u64 >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("project {project} may have {max} volumes; it has {}", existing.len()),
            ));
        }
    }
    if let (Some(max), Some(size)) = (found.limits.max_volume_size_mib, spec.size_mib) {
        let used: u64 = existing.iter().filter_map(|v| v.size_mib).sum();
        if used + size > max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("project {project} may have {max} MiB of volumes; it has {used} and this adds {size}"),
            )
            .with_field("size_mib"));
        }
    }
    if existing.iter().any(|v| v.name == spec.name) {
        return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("project {project} has a volume {} already", spec.name)));
    }
    let volume = Volume::new(&project, spec, Timestamp::now());
    if !state.store.create_volume(volume.clone()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("the engine name {} is taken by another project's volume: choose another name", volume.engine_name),
        )
        .with_field("name"));
    }
    let detail = format!("driver {}, {:?} scope", volume.driver, volume.scope).to_lowercase();
    state.audit(&caller, Some(&project), "volume.create", &volume.name, Some(detail)).await;
    Ok((StatusCode::CREATED, Json(volume)))
}

/// A project's volumes.
#[utoipa::path(get, path = "/v1/projects/{project}/volumes", tag = "volumes", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = VolumeList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<VolumeList>, ApiError> {
    project_or_404(&state, &caller, &project).await?;
    Ok(Json(VolumeList { volumes: state.store.volumes(Some(project)).await? }))
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
    project_or_404(&state, &caller, &project).await?;
    let volume = state.store.get_volume(&project, &name).await?;
    volume.map(Json).ok_or_else(|| ApiError::not_found(format!("no volume {name} in project {project}")))
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
    project_or_404(&state, &caller, &project).await?;
    let Some(volume) = state.store.get_volume(&project, &name).await? else {
        return Err(ApiError::not_found(format!("no volume {name} in project {project}")));
    };
    // Tasks that still need it: the newest 10,000 unfinished ones of the project.
    let filter = TaskFilter {
        states: vec![TaskState::Queued, TaskState::Scheduled, TaskState::Running],
        project: Some(project.clone()),
        labels: Vec::new(),
        before: None,
        limit: 10_000,
    };
    let page = state.store.list_tasks(filter).await?;
    if let Some(user) = page.tasks.iter().find(|t| t.volumes.iter().any(|m| m.name == name)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("task {} ({}) mounts volume {name}: cancel it or let it finish first", user.id, user.state.as_str()),
        ));
    }
    if !state.store.delete_volume(&project, &name).await? {
        return Err(ApiError::not_found(format!("no volume {name} in project {project}")));
    }
    // Its data: on its node, or, for a cluster-wide one, on every node that may have made it.
    let nodes: Vec<String> = match (&volume.scope, &volume.node_id) {
        (VolumeScope::Node, Some(node)) => vec![node.clone()],
        (VolumeScope::Node, None) => Vec::new(),
        (VolumeScope::Cluster, _) => state.store.list_nodes().await?.into_iter().map(|n| n.id).collect(),
    };
    for node in &nodes {
        state.tasks.links.remove_volume(node, &volume.engine_name, &project);
    }
    state.audit(&caller, Some(&project), "volume.delete", &name, None).await;
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
    project_or_404(&state, &caller, &project).await?;
    caller.require_admin()?;
    policy.validate()?;
    state.store.set_project_policy(&project, policy.clone()).await?;
    let detail = serde_json::to_string(&policy).unwrap_or_default();
    state.audit(&caller, Some(&project), "project.policy", &project, Some(detail)).await;
    Ok(Json(policy))
}

/// A project's policy.
#[utoipa::path(get, path = "/v1/projects/{project}/policy", tag = "projects", params(("project" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectPolicy), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn get_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<ProjectPolicy>, ApiError> {
    Ok(Json(project_or_404(&state, &caller, &project).await?.policy))
}

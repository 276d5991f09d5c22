//! `GET /v1/health`.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The server is up and its store answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers 200.
    pub status: String,
    pub version: String,
    /// Tasks per state: of every project for the admin token, of its
    /// project for a project token, absent without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, u64>>,
    /// This server's id and role (`leader` runs the scheduler; `follower`
    /// serves the API) among servers sharing a store.
    #[serde(default)]
    pub server: ServerRole,
}

/// Which server answered, and its role.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerRole {
    pub id: String,
    pub role: String,
}

/// A server of the cluster.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerView {
    pub id: String,
    pub url: String,
    pub role: String,
    #[schema(value_type = String)]
    pub started_at: shepherd_core::Timestamp,
    #[schema(value_type = String)]
    pub last_seen_at: shepherd_core::Timestamp,
}

/// The servers sharing this cluster's store.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

/// The servers sharing the store, with their roles and last heartbeat (admin).
#[utoipa::path(get, path = "/v1/servers", tag = "cluster", responses((status = 200, body = ServerList), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn servers(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::service::auth::Caller>,
) -> Result<Json<ServerList>, ApiError> {
    caller.require_admin()?;
    let servers = state
        .store
        .list_servers()
        .await?
        .into_iter()
        .map(|s| ServerView { id: s.id, url: s.url, role: s.role, started_at: s.started_at, last_seen_at: s.last_seen_at })
        .collect();
    Ok(Json(ServerList { servers }))
}

/// Health and task counts.
#[utoipa::path(get, path = "/v1/health", tag = "cluster",
    responses((status = 200, body = Health), (status = 503, body = crate::http::error::ErrorBody)))]
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Health>, ApiError> {
    let caller = crate::http::auth::caller_of(&state, &headers).await?;
    let tasks = match caller {
        Some(caller) => {
            let counts = state.store.count_by_state(caller.project().map(str::to_string)).await?;
            Some(counts.into_iter().map(|(s, n)| (s.to_string(), n)).collect())
        }
        None => {
            // Still check that the store answers.
            state.store.get_project("").await?;
            None
        }
    };
    let role = if state.leadership.is_leader() { "leader" } else { "follower" };
    let server = ServerRole { id: state.leadership.id().to_string(), role: role.into() };
    Ok(Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), tasks, server }))
}

/// Prometheus metrics in the text exposition format (admin).
#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"), (status = 403, body = crate::http::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::service::auth::Caller>,
) -> Result<axum::response::Response, ApiError> {
    caller.require_admin()?;
    Ok(open_metrics(State(state)).await)
}

/// The same without a token: only on the `--metrics-listen` address.
pub async fn open_metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let plugins = state.scheduling.report().plugins;
    let body = state.metrics.render(state.store.as_ref(), &plugins).await;
    ([(axum::http::header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], body).into_response()
}

//! `GET /v1/health`.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The server is up and its store answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers 200.
    pub status: String,
    pub version: String,
    /// Tasks per state.
    pub tasks: BTreeMap<String, u64>,
}

/// Health and task counts.
#[utoipa::path(get, path = "/v1/health", tag = "cluster",
    responses((status = 200, body = Health), (status = 503, body = super::ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let counts = state.store.count_by_state().await?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        tasks: counts.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
    }))
}

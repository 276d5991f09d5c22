//! `GET /v1/health`.

use super::{ApiError, AppState};
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
}

/// Health and task counts.
#[utoipa::path(get, path = "/v1/health", tag = "cluster",
    responses((status = 200, body = Health), (status = 503, body = super::ErrorBody)))]
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Health>, ApiError> {
    let caller = crate::auth::caller_of(&state, &headers).await?;
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
    Ok(Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), tasks }))
}

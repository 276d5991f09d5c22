//! Webhooks: a task's deliveries, and a project's signing secret.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

/// One try at posting a task's end.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookAttemptView {
    pub number: u32,
    #[schema(value_type = String, format = DateTime)]
    pub at: shepherd_core::Timestamp,
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// A task's webhook and every try at it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// `pending` (the task runs, or a retry is due), `delivered`, `failed` (given up after a day).
    pub state: String,
    pub attempts: u32,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_at: Option<shepherd_core::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<shepherd_core::Timestamp>,
    pub history: Vec<WebhookAttemptView>,
}

/// A project's webhook signing secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// Key of `X-Shepherd-Signature: sha256=HEX(HMAC-SHA256(secret, TIMESTAMP + "." + BODY))`.
    pub secret: String,
}

/// A task's webhook deliveries.
#[utoipa::path(get, path = "/v1/tasks/{id}/webhook", tag = "tasks", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = WebhookView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn of_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let delivery = state.tasks.webhook(&caller, &id).await?;
    Ok(Json(WebhookView {
        url: delivery.url,
        state: delivery.state,
        attempts: delivery.attempts,
        next_at: delivery.next_at,
        delivered_at: delivery.delivered_at,
        history: delivery
            .history
            .into_iter()
            .map(|a| WebhookAttemptView { number: a.number, at: a.at, status: a.status, latency_ms: a.latency_ms, error: a.error })
            .collect(),
    }))
}

/// The project's webhook signing secret (made on first use).
#[utoipa::path(get, path = "/v1/projects/{project}/webhook-secret", tag = "projects", params(("project" = String, Path, description = "project")),
    responses((status = 200, body = WebhookSecret), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = state.projects.webhook_secret(&caller, &project).await?;
    Ok(Json(WebhookSecret { secret }))
}

/// Replaces the project's webhook signing secret.
#[utoipa::path(post, path = "/v1/projects/{project}/webhook-secret", tag = "projects", params(("project" = String, Path, description = "project")),
    responses((status = 200, body = WebhookSecret), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = state.projects.rotate_webhook_secret(&caller, &project).await?;
    Ok(Json(WebhookSecret { secret }))
}

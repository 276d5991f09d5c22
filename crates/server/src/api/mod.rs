//! The REST API under `/v1`: one file per resource, one router here.

pub mod error;
mod health;
mod logs;
mod nodes;
mod openapi;
mod tasks;

pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;
pub use health::Health;
pub use nodes::{NodeList, NodeView};
pub use tasks::{BatchRequest, BatchResponse, TaskList};

use crate::links::NodeLinks;
use crate::placement_notes::PlacementNotes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use shepherd_core::Limits;
use shepherd_store::Store;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    /// Wakes the scheduler when tasks arrive.
    pub scheduler_wakeup: Arc<Notify>,
    /// Reaches the agents, to stop cancelled attempts.
    pub links: Arc<dyn NodeLinks>,
    pub ids: Arc<Mutex<ulid::Generator>>,
    pub notes: Arc<PlacementNotes>,
    /// Placement profiles, to check the profile a task names.
    pub engine: Arc<shepherd_sched::Engine>,
    /// Remote agents: join token and connections.
    pub agent_api: crate::agents::AgentApi,
}

/// Largest request body: a full batch with small payloads.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/wait", get(tasks::wait))
        .route("/v1/tasks/{id}/logs", get(logs::logs))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/openapi.json", get(openapi::document))
        .merge(crate::agents::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route; see /v1/openapi.json")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

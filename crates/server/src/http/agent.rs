//! The agent API (`/v1/agent/…`, protocol v1): thin handlers over
//! [`AgentService`]; connected agents are kept by
//! [`crate::nodes::remote::RemoteAgents`].
//!
//! An agent registers with the cluster's join token and gets a node token;
//! it then holds `GET /v1/agent/stream` open and the server pushes
//! newline-delimited JSON messages on it (`assign`, `cancel`, `reconcile`
//! first on every connect, `ping` every 5 s). Reports come back as
//! `POST /v1/agent/events`; the state machine refuses any about an attempt
//! that is not the task's current one, and the server refuses any about a
//! task placed on another node: a node cut off and come back can never
//! change a task that was given away.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::agents::{AgentError, AgentService};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shepherd_proto::{
    AssignedAttempt, Captured, EventsRequest, EventsResponse, Heartbeat, HeartbeatAnswer, LogsRequest, Registered, Registration,
    WireLaunch, PROTOCOL_HEADER, PROTOCOL_VERSION,
};

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> ApiError {
        match e {
            AgentError::Unauthorized(message) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
            AgentError::JoiningDisabled => ApiError::new(StatusCode::FORBIDDEN, "joining_disabled", e.to_string()),
            AgentError::NodeIdTaken(_) => ApiError::new(StatusCode::CONFLICT, "node_id_taken", e.to_string()).with_field("node_id"),
            AgentError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            AgentError::NotFound(message) => ApiError::not_found(message),
            AgentError::Invalid(e) => e.into(),
            AgentError::Store(e) => e.into(),
        }
    }
}

fn check_protocol(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) {
        Some(PROTOCOL_VERSION) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "protocol_mismatch",
            format!("agent protocol {other:?} is not supported; this server speaks {PROTOCOL_VERSION}"),
        )),
    }
}

/// The agent service and the node a request's bearer token belongs to.
fn node_of<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<(&'a AgentService, String), ApiError> {
    check_protocol(headers)?;
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    Ok((&state.agents, state.agents.node_of(token)?))
}

/// The agent API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/register", post(register))
        .route("/v1/agent/stream", get(stream))
        .route("/v1/agent/heartbeat", post(heartbeat))
        .route("/v1/agent/events", post(events))
        .route("/v1/agent/logs", post(logs))
        .route("/v1/agent/assigned", get(assigned))
        .route("/v1/agent/tasks/{id}/launch", get(launch))
        .route("/v1/agent/tasks/{id}/captured", get(captured))
        .route("/v1/agent/tasks/{id}/package", get(package))
        .route("/v1/agent/tasks/{id}/progress", post(progress))
}

async fn register(State(state): State<AppState>, headers: HeaderMap, Json(reg): Json<Registration>) -> Result<Json<Registered>, ApiError> {
    check_protocol(&headers)?;
    Ok(Json(state.agents.register(reg).await?))
}

async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    let rx = agents.open_stream(&node);
    // Messages waiting together go out in one write (a pass that places
    // many tasks on a node sends them as one chunk).
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut message = Some(rx.recv().await?);
        let mut lines = Vec::new();
        while let Some(next) = message.take() {
            lines.extend(serde_json::to_vec(&next).unwrap_or_default());
            lines.push(b'\n');
            if lines.len() < STREAM_CHUNK {
                message = rx.try_recv().ok();
            }
        }
        Some((Ok::<_, std::io::Error>(lines), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Bytes of messages one stream write gathers at most.
const STREAM_CHUNK: usize = 256 * 1024;

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(beat): Json<Heartbeat>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    Ok(Json(agents.heartbeat(&node, beat)?))
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<EventsRequest>,
) -> Result<Json<EventsResponse>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    Ok(Json(agents.report(&node, request).await?))
}

async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<LogsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    let refused = agents.logs(&node, request).await?;
    Ok(Json(serde_json::json!({"ok": true, "refused": refused})))
}

async fn assigned(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<AssignedAttempt>>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    Ok(Json(agents.assigned(&node).await?))
}

async fn launch(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Option<WireLaunch>>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    Ok(Json(agents.launch(&node, &id).await?))
}

#[derive(serde::Deserialize)]
struct CapturedQuery {
    attempt: u32,
}

/// How much of an attempt's output is stored, per stream.
async fn captured(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<CapturedQuery>,
) -> Result<Json<Captured>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    Ok(Json(agents.captured(&node, &id, query.attempt).await?))
}

/// The code package of a task on this node (the zip's bytes).
async fn package(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    let zip = agents.package(&node, &id).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/zip")], zip).into_response())
}

async fn progress(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(report): Json<shepherd_proto::ProgressReport>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (agents, node) = node_of(&state, &headers)?;
    let taken = agents.progress(&node, &id, report).await?;
    Ok(Json(serde_json::json!({ "taken": taken })))
}

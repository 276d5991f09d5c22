//! The HTTP edges, composed into one router: the REST API under `/v1`
//! ([`v1`], one file per resource), the agent API ([`agent`]), the
//! IronWorker API ([`ironworker`]), the dashboard ([`ui`]) and `/metrics`.
//! Every edge is a thin translation over the domain below (`service`,
//! `nodes`, `loops`); the request plumbing they share is [`state`],
//! [`error`] and [`auth`], which use no edge.

pub mod agent;
pub mod auth;
pub mod error;
pub mod ironworker;
pub mod openapi;
pub mod serve;
pub mod state;
pub mod tls;
pub mod ui;
pub mod v1;

use crate::http::auth::MAX_BODY_BYTES;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Every edge in one router: `/v1`, `/metrics`, the agent API, the
/// IronWorker API and the dashboard, with the limits they share.
pub fn router(state: AppState) -> Router {
    let app = Router::new()
        .route("/v1/health", get(v1::health::health))
        .route("/v1/openapi.json", get(openapi::document))
        .merge(ui::routes())
        .merge(v1::routes(&state))
        .merge(ironworker::routes(state.clone()))
        .merge(agent::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route; see /v1/openapi.json")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(auth::refuse_oversized));
    let metrics = state.metrics.clone();
    // Request durations, kept cheap for every request: the closure holds
    // the metrics alone (no `AppState` clone), and the histogram is found
    // without building its label.
    app.layer(axum::middleware::from_fn(move |request, next| timed(metrics.clone(), request, next))).with_state(state)
}

/// Middleware: each request's duration, by route (as declared: no ids),
/// method and status.
async fn timed(
    metrics: Arc<crate::metrics::Metrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let method = request.method().clone();
    let iron = request.uri().path().starts_with("/2/");
    let mut response = json_errors(next.run(request).await, iron).await;
    // A browser never takes a task's output (text/plain) or a JSON answer for a page.
    response.headers_mut().insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    // Methods are the client's to choose: any but the standard ones are `other`.
    let method = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    };
    metrics.request(route, method, response.status().as_u16(), started.elapsed());
    response
}

/// An error that an extractor answered as plain text (a path that is not
/// UTF-8, a body that is not multipart): said as JSON, as every other
/// error is (`{"error": …}`, or IronWorker's `{"msg": …}` under `/2/`).
async fn json_errors(response: axum::response::Response, iron: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let plain =
        response.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/plain"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !plain {
        return response;
    }
    let status = response.status();
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    if iron {
        return (status, axum::Json(serde_json::json!({ "msg": text }))).into_response();
    }
    ApiError::new(status, if status.is_client_error() { "bad_request" } else { "internal" }, text).into_response()
}

/// The router of `--metrics-listen`: `/metrics` without a token, nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(v1::health::open_metrics)).with_state(state)
}

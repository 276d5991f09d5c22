//! Authentication at the HTTP edge: every API request but health and the
//! OpenAPI document carries `Authorization: Bearer TOKEN`, checked by
//! [`authenticate`] against the domain's [`Auth`]; each project token is
//! rate limited by its project's `requests_per_second`. Also the request
//! timeout and the body limit every route shares.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Largest request body: a full batch with small payloads.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The caller of a request on a route that works without a token too;
/// `None` without a valid token.
pub async fn caller_of(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Option<Caller>, ApiError> {
    match bearer(headers) {
        Some(token) => Ok(state.auth.identify(state.store.as_ref(), token).await?.map(|(caller, _)| caller)),
        None => Ok(None),
    }
}

/// The token a request came with (a request extension beside its
/// [`Caller`]): what a long-lived response checks again while it lasts.
#[derive(Clone)]
pub struct BearerToken(pub String);

/// How often a long-lived response (an event stream, a followed log)
/// checks that its token is still live.
const STREAM_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Resolves once `token` no longer admits anyone (revoked, or its project
/// removed): a stream it opened ends then. Revoked through this server it
/// is seen within [`STREAM_CHECK_EVERY`]; through another, within the
/// token cache's 2 s more.
pub async fn revoked(state: AppState, token: String) {
    loop {
        tokio::time::sleep(STREAM_CHECK_EVERY).await;
        if let Ok(None) = state.auth.identify(state.store.as_ref(), &token).await {
            return;
        }
    }
}

/// Middleware: authenticates the request, applies the token's rate limit,
/// and hands the [`Caller`] (and the [`BearerToken`]) to the handler as
/// request extensions.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(token) = bearer(request.headers()).map(str::to_string) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer TOKEN` header").into_response();
    };
    match admit(&state, &token).await {
        Ok(caller) => {
            request.extensions_mut().insert(BearerToken(token));
            run_as(caller, request, next).await
        }
        Err(response) => *response,
    }
}

/// Runs the rest of a request as `caller`.
pub async fn run_as(caller: Caller, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The caller a token stands for, after its rate limit; the answer to give
/// instead (401, 429) if it may not go on.
pub async fn admit(state: &AppState, token: &str) -> Result<Caller, Box<Response>> {
    let (caller, limits) = match state.auth.identify(state.store.as_ref(), token).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(Box::new(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown or revoked token").into_response()));
        }
        Err(e) => return Err(Box::new(ApiError::from(e).into_response())),
    };
    if let (Caller::Project { token_id, project, .. }, Some(rate)) = (&caller, limits.requests_per_second) {
        if let Err(wait) = state.auth.take(token_id, rate) {
            state.metrics.rate_limited(project);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this token may make {rate} requests per second; retry in {} ms", wait.as_millis().max(1)),
            )
            .into_response();
            let seconds = wait.as_secs() + 1;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
            return Err(Box::new(response));
        }
    }
    Ok(caller)
}

/// How long an ordinary request may take by default, from its headers to
/// the answer (a client trickling its body in holds nothing for longer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Middleware: answers 503 to a request that takes longer than the
/// server's request timeout (long polls and log follows are routed around it).
pub async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; try again").into_response(),
    }
}

/// Middleware: refuses at once (413) a request whose `Content-Length`
/// says its body is over [`MAX_BODY_BYTES`], before reading any
/// of it. (Bodies without a length are cut off at the limit as they arrive.)
pub async fn refuse_oversized(request: Request, next: Next) -> Response {
    let announced =
        request.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(length) if length > MAX_BODY_BYTES as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is {length} bytes; the limit is {} bytes", MAX_BODY_BYTES),
        )
        .with_field("body")
        .into_response(),
        _ => next.run(request).await,
    }
}

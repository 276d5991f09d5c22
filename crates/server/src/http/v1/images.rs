//! Prefetch (`/v1/images/prefetch`): thin handlers over `ImageService`.

use crate::http::error::{ApiError, ApiJson};
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::images::{PrefetchRequest, PrefetchStatus};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

/// Pull an image onto the ready nodes of a pool now, ahead of the tasks
/// that will need it. Answers at once with the nodes asked; follow them
/// with `GET /v1/images/prefetch`.
#[utoipa::path(post, path = "/v1/images/prefetch", tag = "cluster", request_body = PrefetchRequest,
    responses((status = 202, body = PrefetchStatus), (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn prefetch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<PrefetchRequest>,
) -> Result<(StatusCode, Json<PrefetchStatus>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(state.images.prefetch(&caller, request).await?)))
}

/// Which ready nodes of a pool hold an image, as their last heartbeats said.
#[utoipa::path(get, path = "/v1/images/prefetch", tag = "cluster", params(PrefetchRequest),
    responses((status = 200, body = PrefetchStatus), (status = 400, body = crate::http::error::ErrorBody)))]
pub async fn prefetch_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(request): Query<PrefetchRequest>,
) -> Result<Json<PrefetchStatus>, ApiError> {
    Ok(Json(state.images.prefetch_status(&caller, request).await?))
}

//! Code packages (zips a code runs): thin handlers over `CodeService`.

use crate::http::error::{query, ApiError};
use crate::http::state::AppState;
use crate::http::v1::codes::CodeQuery;
use crate::service::auth::Caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

/// Store a code package: the body is the zip (at most 32 MiB). Name its
/// digest in a code's `package` to run it.
#[utoipa::path(post, path = "/v1/packages", tag = "codes", params(CodeQuery),
    request_body(content = Vec<u8>, content_type = "application/zip"),
    responses((status = 201, body = crate::service::codes::StoredPackage), (status = 400, body = crate::http::error::ErrorBody), (status = 413, body = crate::http::error::ErrorBody)))]
pub async fn put_package(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<crate::service::codes::StoredPackage>), ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok((StatusCode::CREATED, Json(state.codes.put_package(&caller, q.project.as_deref(), body.to_vec()).await?)))
}

/// A project's code packages, oldest first, and its package quota.
#[utoipa::path(get, path = "/v1/packages", tag = "codes", params(CodeQuery),
    responses((status = 200, body = crate::service::codes::PackageList), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn list_packages(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<crate::service::codes::PackageList>, ApiError> {
    let q: CodeQuery = query(raw)?;
    Ok(Json(state.codes.packages(&caller, q.project.as_deref()).await?))
}

/// Remove a code package (refused while a live code or an unfinished task runs it).
#[utoipa::path(delete, path = "/v1/packages/{digest}", tag = "codes", params(("digest" = String, Path, description = "the package's SHA-256"), CodeQuery),
    responses((status = 204), (status = 404, body = crate::http::error::ErrorBody), (status = 409, body = crate::http::error::ErrorBody)))]
pub async fn delete_package(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiError> {
    let q: CodeQuery = query(raw)?;
    state.codes.delete_package(&caller, q.project.as_deref(), &digest).await?;
    Ok(StatusCode::NO_CONTENT)
}

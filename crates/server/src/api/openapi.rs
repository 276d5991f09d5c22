//! The OpenAPI 3 document, generated from the handlers' annotations and
//! served at `/v1/openapi.json`. A copy is checked in at `docs/openapi.json`
//! and a test keeps the two equal.

use axum::Json;
use utoipa::OpenApi;

/// Shepherd's API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Shepherd API", description = "Run container tasks on Docker hosts.", version = "1"),
    paths(
        super::health::health,
        super::tasks::create,
        super::tasks::create_batch,
        super::tasks::list,
        super::tasks::get,
        super::tasks::cancel,
        super::tasks::wait,
        super::logs::logs,
        super::nodes::list,
        super::nodes::drain,
        document,
    ),
    tags((name = "tasks", description = "Submit, follow and cancel tasks"), (name = "cluster", description = "Nodes and health"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster", responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

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
        super::tasks::placement,
        super::tasks::progress,
        super::webhooks::of_task,
        super::webhooks::secret,
        super::webhooks::rotate,
        super::logs::logs,
        super::nodes::list,
        super::health::servers,
        super::nodes::drain,
        super::machines::list,
        super::machines::autoscale,
        super::projects::create,
        super::projects::list,
        super::projects::get,
        super::projects::update,
        super::projects::create_token,
        super::projects::list_tokens,
        super::projects::revoke_token,
        super::projects::put_secret,
        super::projects::delete_secret,
        super::projects::list_secrets,
        super::projects::audit,
        super::registries::login,
        super::registries::logout,
        super::registries::list,
        super::images::prefetch,
        super::images::prefetch_status,
        super::volumes::create,
        super::volumes::list,
        super::volumes::get,
        super::volumes::delete,
        super::volumes::set_policy,
        super::volumes::get_policy,
        super::codes::push,
        super::codes::list,
        super::codes::get,
        super::codes::revisions,
        super::codes::rollback,
        super::codes::delete,
        super::codes::put_package,
        super::codes::list_packages,
        super::codes::delete_package,
        super::codes::create_schedule,
        super::codes::list_schedules,
        super::codes::get_schedule,
        super::codes::pause_schedule,
        super::codes::resume_schedule,
        super::codes::cancel_schedule,
        super::events::events,
        super::usage::usage,
        crate::ui::overview,
        super::health::metrics,
        document,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "Submit, follow and cancel tasks"),
        (name = "cluster", description = "Nodes, machines, autoscaled pools and health"),
        (name = "projects", description = "Tenants: projects, API tokens, secrets and the audit log"),
        (name = "volumes", description = "A project's named volumes"),
        (name = "codes", description = "Named, versioned task templates"),
        (name = "schedules", description = "Tasks run at cron times or at intervals"),
        (name = "events", description = "The cluster's event stream (Server-Sent Events)")
    )
)]
pub struct ApiDoc;

/// Every call but health and this document needs `Authorization: Bearer TOKEN`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster", responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

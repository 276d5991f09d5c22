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
        super::v1::health::health,
        super::v1::tasks::create,
        super::v1::tasks::create_batch,
        super::v1::tasks::list,
        super::v1::tasks::get,
        super::v1::tasks::cancel,
        super::v1::tasks::wait,
        super::v1::tasks::placement,
        super::v1::tasks::progress,
        super::v1::arrays::dependencies,
        super::v1::arrays::result,
        super::v1::arrays::list,
        super::v1::arrays::get,
        super::v1::arrays::cancel,
        super::v1::arrays::retry,
        super::v1::webhooks::of_task,
        super::v1::webhooks::secret,
        super::v1::webhooks::rotate,
        super::v1::logs::logs,
        super::v1::nodes::list,
        super::v1::health::servers,
        super::v1::nodes::drain,
        super::v1::machines::list,
        super::v1::machines::autoscale,
        super::v1::plugins::list,
        super::v1::plugins::reload,
        super::v1::projects::create,
        super::v1::projects::list,
        super::v1::projects::get,
        super::v1::projects::update,
        super::v1::projects::create_token,
        super::v1::projects::list_tokens,
        super::v1::projects::revoke_token,
        super::v1::projects::put_secret,
        super::v1::projects::delete_secret,
        super::v1::projects::list_secrets,
        super::v1::projects::audit,
        super::v1::registries::login,
        super::v1::registries::logout,
        super::v1::registries::list,
        super::v1::images::prefetch,
        super::v1::images::prefetch_status,
        super::v1::volumes::create,
        super::v1::volumes::list,
        super::v1::volumes::get,
        super::v1::volumes::delete,
        super::v1::volumes::set_policy,
        super::v1::volumes::get_policy,
        super::v1::codes::push,
        super::v1::codes::list,
        super::v1::codes::get,
        super::v1::codes::revisions,
        super::v1::codes::rollback,
        super::v1::codes::delete,
        super::v1::packages::put_package,
        super::v1::packages::list_packages,
        super::v1::packages::delete_package,
        super::v1::schedules::create_schedule,
        super::v1::schedules::list_schedules,
        super::v1::schedules::get_schedule,
        super::v1::schedules::pause_schedule,
        super::v1::schedules::resume_schedule,
        super::v1::schedules::cancel_schedule,
        super::v1::events::events,
        super::v1::usage::usage,
        super::v1::history::history,
        super::v1::history::replay,
        crate::http::ui::overview,
        super::v1::health::metrics,
        document,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "Submit, follow and cancel tasks"),
        (name = "arrays", description = "Arrays of tasks that share one spec"),
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

//! The REST API under `/v1`: one file per resource, each a thin
//! translation over the services (`crate::service`), and [`routes`], which
//! puts them behind authentication and the request timeout.

pub mod arrays;
pub mod codes;
pub mod events;
pub mod health;
pub mod history;
pub mod images;
pub mod logs;
pub mod machines;
pub mod nodes;
pub mod packages;
pub mod plugins;
pub mod projects;
pub mod registries;
pub mod schedules;
pub mod tasks;
pub mod usage;
pub mod volumes;
pub mod webhooks;

pub use codes::{CodeList, RevisionList, RollbackRequest};
pub use health::{Health, ServerList, ServerRole, ServerView};
pub use machines::{MachineList, MachineView};
pub use nodes::{NodeList, NodeView};
pub use projects::{AuditList, AuditView, CreatedToken, ProjectView, SecretList, TokenView};
pub use schedules::ScheduleList;
pub use tasks::{BatchRequest, BatchResponse, CandidateView, PlacementView, TaskList};
pub use usage::{UsageReport, UsageView};
pub use webhooks::{WebhookAttemptView, WebhookSecret, WebhookView};

use crate::http::state::AppState;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, put};
use axum::Router;

/// The `/v1` routes (and `/metrics`), every one authenticated; all but long
/// polls, live follows and the event stream answered within the request
/// timeout.
pub fn routes(state: &AppState) -> Router<AppState> {
    let short = Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/dependencies", get(arrays::dependencies))
        .route("/v1/tasks/{id}/result", get(arrays::result))
        .route("/v1/arrays", get(arrays::list))
        .route("/v1/arrays/{id}", get(arrays::get))
        .route("/v1/arrays/{id}/cancel", post(arrays::cancel))
        .route("/v1/arrays/{id}/retry", post(arrays::retry))
        .route("/v1/tasks/{id}/placement", get(tasks::placement))
        .route("/v1/tasks/{id}/progress", post(tasks::progress))
        .route("/v1/tasks/{id}/webhook", get(webhooks::of_task))
        .route("/v1/projects/{project}/webhook-secret", get(webhooks::secret).post(webhooks::rotate))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/machines", get(machines::list))
        .route("/v1/autoscale", get(machines::autoscale))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/reload", post(plugins::reload))
        .route("/v1/servers", get(health::servers))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/projects", post(projects::create).get(projects::list))
        .route("/v1/projects/{project}", get(projects::get).patch(projects::update))
        .route("/v1/projects/{project}/tokens", post(projects::create_token).get(projects::list_tokens))
        .route("/v1/projects/{project}/tokens/{id}", delete(projects::revoke_token))
        .route("/v1/projects/{project}/secrets", get(projects::list_secrets))
        .route("/v1/projects/{project}/secrets/{name}", put(projects::put_secret).delete(projects::delete_secret))
        .route("/v1/projects/{project}/volumes", post(volumes::create).get(volumes::list))
        .route("/v1/projects/{project}/volumes/{name}", get(volumes::get).delete(volumes::delete))
        .route("/v1/projects/{project}/policy", get(volumes::get_policy).put(volumes::set_policy))
        .route("/v1/images/prefetch", post(images::prefetch).get(images::prefetch_status))
        .route("/v1/projects/{project}/registries", get(registries::list))
        .route("/v1/projects/{project}/registries/{registry}", put(registries::login).delete(registries::logout))
        .route("/v1/audit", get(projects::audit))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/history", get(history::history))
        .route("/v1/history/replay", get(history::replay))
        .route("/v1/overview", get(crate::http::ui::overview))
        .route("/v1/codes", post(codes::push).get(codes::list))
        .route("/v1/codes/{name}", get(codes::get).delete(codes::delete))
        .route("/v1/codes/{name}/revisions", get(codes::revisions))
        .route("/v1/codes/{name}/rollback", post(codes::rollback))
        .route("/v1/packages", post(packages::put_package).get(packages::list_packages))
        .route("/v1/packages/{digest}", delete(packages::delete_package))
        .route("/v1/schedules", post(schedules::create_schedule).get(schedules::list_schedules))
        .route("/v1/schedules/{id}", get(schedules::get_schedule).delete(schedules::cancel_schedule))
        .route("/v1/schedules/{id}/pause", post(schedules::pause_schedule))
        .route("/v1/schedules/{id}/resume", post(schedules::resume_schedule))
        .layer(from_fn_with_state(state.clone(), crate::http::auth::request_timeout));
    // Long polls and live follows keep their own limits.
    let long = Router::new()
        .route("/v1/tasks/{id}/wait", get(tasks::wait))
        .route("/v1/tasks/{id}/logs", get(logs::logs))
        .route("/v1/events", get(events::events))
        .route("/metrics", get(health::metrics));
    short.merge(long).layer(from_fn_with_state(state.clone(), crate::http::auth::authenticate))
}

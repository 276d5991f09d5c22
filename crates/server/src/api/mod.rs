//! The REST API under `/v1`: one file per resource, one router here.

mod codes;
pub mod error;
pub mod events;
mod health;
mod images;
mod logs;
mod machines;
mod nodes;
mod openapi;
mod projects;
mod registries;
mod tasks;
mod usage;
mod volumes;
mod webhooks;

pub use codes::{CodeList, RevisionList, RollbackRequest, ScheduleList};
pub use error::{ApiError, ErrorBody};
pub use health::{Health, ServerList, ServerRole, ServerView};
pub use machines::{MachineList, MachineView};
pub use nodes::{NodeList, NodeView};
pub use openapi::ApiDoc;
pub use projects::{AuditList, AuditView, CreatedToken, ProjectView, SecretList, TokenView};
pub use tasks::{BatchRequest, BatchResponse, CandidateView, PlacementView, TaskList};
pub use usage::{UsageReport, UsageView};
pub use webhooks::{WebhookAttemptView, WebhookSecret, WebhookView};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use shepherd_store::Store;
use std::sync::Arc;
use tokio::sync::Notify;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Task operations (create, get, list, cancel, wait), authorization included.
    pub tasks: Arc<crate::service::TaskService>,
    /// Codes (named, versioned task templates).
    pub codes: Arc<crate::service::CodeService>,
    /// Schedules (and, through them, their firing loop's wakeup).
    pub schedules: Arc<crate::service::ScheduleService>,
    /// Wakes the scheduler when nodes or limits change.
    pub scheduler_wakeup: Arc<Notify>,
    /// Remote agents: join token and connections.
    pub agent_api: crate::agents::AgentApi,
    /// API tokens and rate limits.
    pub auth: Arc<crate::auth::Auth>,
    /// Longest time an ordinary request may take.
    pub request_timeout: std::time::Duration,
    /// Whether this server leads (servers sharing a store).
    pub leadership: crate::leader::Leadership,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The event stream's poller.
    pub events: Arc<crate::events::EventHub>,
    /// The dashboard's last hour.
    pub timeline: Arc<crate::ui::Timeline>,
    /// Autoscaled pools, when configured.
    pub autoscaler: Option<Arc<crate::autoscale::Autoscaler>>,
}

impl AppState {
    /// The state of an API over `store` alone: the default placement
    /// engine, no in-process agent, no agents allowed to join. For tests
    /// of the router (`tower::ServiceExt::oneshot`) and for embedding.
    pub fn standalone(store: Arc<dyn Store>, admin_token: &str) -> AppState {
        let wakeup = Arc::new(Notify::new());
        let notes = Arc::new(crate::placement_notes::PlacementNotes::default());
        let auth = Arc::new(crate::auth::Auth::new(admin_token));
        let remote = Arc::new(crate::agents::RemoteAgents::default());
        let tasks = crate::service::TaskService::new(
            store.clone(),
            shepherd_core::Limits::default(),
            Arc::new(shepherd_sched::Engine::default()),
            notes,
            auth.clone(),
            remote.clone(),
            wakeup.clone(),
        );
        let leadership = crate::leader::Leadership::new("standalone".into(), std::time::Duration::from_secs(5));
        let observer =
            crate::view::Observer { view: Default::default(), store: store.clone(), leadership: leadership.clone(), shared: false };
        let metrics = tasks.metrics.clone();
        let tasks = Arc::new(tasks);
        AppState {
            metrics,
            events: crate::events::EventHub::new(store.clone()),
            timeline: Default::default(),
            autoscaler: None,
            codes: Arc::new(crate::service::CodeService {
                store: store.clone(),
                limits: shepherd_core::Limits::default(),
                engine: Arc::new(shepherd_sched::Engine::default()),
                stacks: Default::default(),
            }),
            schedules: Arc::new(crate::service::ScheduleService::new(store.clone(), tasks.clone())),
            store,
            tasks,
            scheduler_wakeup: wakeup,
            agent_api: crate::agents::AgentApi {
                join_token: None,
                agents: remote,
                liveness: Arc::new(crate::liveness::Liveness::new(None)),
                observer,
                node_timeout: std::time::Duration::from_secs(15),
                logs: Arc::new(crate::agent_guard::LogGuard::new(crate::cluster::DEFAULT_MAX_ATTEMPT_LOG_BYTES)),
                refusals: Default::default(),
            },
            auth,
            request_timeout: std::time::Duration::from_secs(30),
            leadership,
        }
    }

    /// Records an action in the audit log. A failure to record is logged,
    /// not returned: the action itself has already happened.
    pub async fn audit(&self, caller: &crate::auth::Caller, project: Option<&str>, action: &str, target: &str, detail: Option<String>) {
        let entry = audit_entry(caller, project, action, target, detail);
        if let Err(e) = self.store.append_audit(vec![entry]).await {
            tracing::error!(error = %e, action, target, "could not write the audit log");
        }
    }
}

pub use crate::service::tasks::audit_entry;

/// Largest request body: a full batch with small payloads.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The API router.
pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    // Answered within the request timeout.
    let short = Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/placement", get(tasks::placement))
        .route("/v1/tasks/{id}/progress", post(tasks::progress))
        .route("/v1/tasks/{id}/webhook", get(webhooks::of_task))
        .route("/v1/projects/{project}/webhook-secret", get(webhooks::secret).post(webhooks::rotate))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/machines", get(machines::list))
        .route("/v1/autoscale", get(machines::autoscale))
        .route("/v1/servers", get(health::servers))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/projects", post(projects::create).get(projects::list))
        .route("/v1/projects/{project}", get(projects::get).patch(projects::update))
        .route("/v1/projects/{project}/tokens", post(projects::create_token).get(projects::list_tokens))
        .route("/v1/projects/{project}/tokens/{id}", axum::routing::delete(projects::revoke_token))
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
        .route("/v1/overview", get(crate::ui::overview))
        .route("/v1/codes", post(codes::push).get(codes::list))
        .route("/v1/codes/{name}", get(codes::get).delete(codes::delete))
        .route("/v1/codes/{name}/revisions", get(codes::revisions))
        .route("/v1/codes/{name}/rollback", post(codes::rollback))
        .route("/v1/packages", post(codes::put_package).get(codes::list_packages))
        .route("/v1/packages/{digest}", axum::routing::delete(codes::delete_package))
        .route("/v1/schedules", post(codes::create_schedule).get(codes::list_schedules))
        .route("/v1/schedules/{id}", get(codes::get_schedule).delete(codes::cancel_schedule))
        .route("/v1/schedules/{id}/pause", post(codes::pause_schedule))
        .route("/v1/schedules/{id}/resume", post(codes::resume_schedule))
        .layer(from_fn_with_state(state.clone(), crate::auth::request_timeout));
    // Long polls and live follows keep their own limits.
    let long = Router::new()
        .route("/v1/tasks/{id}/wait", get(tasks::wait))
        .route("/v1/tasks/{id}/logs", get(logs::logs))
        .route("/v1/events", get(events::events))
        .route("/metrics", get(health::metrics));
    let authenticated = short.merge(long).layer(from_fn_with_state(state.clone(), crate::auth::authenticate));
    let app = Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/ui", get(crate::ui::index))
        .route("/ui/", get(crate::ui::index))
        .route("/ui/app.js", get(crate::ui::script))
        .route("/ui/style.css", get(crate::ui::style))
        .merge(authenticated)
        .merge(crate::ironworker::routes(state.clone()))
        .merge(crate::agents::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route; see /v1/openapi.json")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::auth::refuse_oversized));
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
    Router::new().route("/metrics", get(health::open_metrics)).with_state(state)
}

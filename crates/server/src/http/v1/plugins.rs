//! `GET /v1/plugins` and `POST /v1/plugins/reload` (admin): the scheduler
//! config's run-time plugins (WebAssembly, HTTP extenders) with their
//! calls, time and failures, and a reload of the config file.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;

/// One run-time plugin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    /// The name profiles use.
    pub name: String,
    /// `wasm` or `http`.
    pub kind: String,
    /// The WebAssembly file or the extender's URL.
    pub source: String,
    /// SHA-256 of the WebAssembly file loaded.
    pub digest: Option<String>,
    pub filter: bool,
    pub score: bool,
    /// `ok`, or `disabled` after failing `disable_after` times in a row
    /// (until the next reload; an extender is tried again after its
    /// `retry_after_seconds`).
    pub state: String,
    pub calls: u64,
    /// Nodes handed to it over all calls.
    pub nodes: u64,
    /// Time spent in its calls.
    pub seconds: f64,
    pub failures: u64,
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
}

/// How the last reload went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReloadView {
    /// Seconds since the epoch.
    pub at: u64,
    pub ok: bool,
    /// Why the new configuration was not used (the previous one stays).
    pub error: Option<String>,
}

/// The scheduler's configuration and its run-time plugins.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginsView {
    /// The `--scheduler-config` file, if any.
    pub config: Option<String>,
    /// Configurations loaded since the server started (1: the first).
    pub version: u64,
    pub plugins: Vec<PluginView>,
    pub last_reload: Option<ReloadView>,
}

fn view(report: shepherd_plugins::PluginsReport) -> PluginsView {
    PluginsView {
        config: report.config,
        version: report.version,
        plugins: report
            .plugins
            .into_iter()
            .map(|p| PluginView {
                name: p.name,
                kind: p.kind.to_string(),
                source: p.source,
                digest: p.digest,
                filter: p.filter,
                score: p.score,
                state: p.state.to_string(),
                calls: p.calls,
                nodes: p.nodes,
                seconds: p.seconds,
                failures: p.failures,
                failures_in_a_row: p.failures_in_a_row,
                last_error: p.last_error,
            })
            .collect(),
        last_reload: report.last_reload.map(|r| ReloadView { at: r.at, ok: r.ok, error: r.error }),
    }
}

/// The run-time plugins and how they are doing.
#[utoipa::path(get, path = "/v1/plugins", tag = "cluster",
    responses((status = 200, body = PluginsView), (status = 403, body = crate::http::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<PluginsView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(view(state.scheduling.report())))
}

/// Loads the scheduler config file again (as SIGHUP does). 200 with the
/// new state; 422 naming `config` when it does not load (the previous
/// version stays in use); 409 without a config file.
#[utoipa::path(post, path = "/v1/plugins/reload", tag = "cluster",
    responses((status = 200, body = PluginsView), (status = 409, body = crate::http::error::ErrorBody), (status = 422, body = crate::http::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn reload(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<PluginsView>, ApiError> {
    caller.require_admin()?;
    if state.scheduling.report().config.is_none() {
        return Err(ApiError::new(StatusCode::CONFLICT, "no_config", "the server runs without --scheduler-config: nothing to reload"));
    }
    let scheduling = state.scheduling.clone();
    let outcome = tokio::task::spawn_blocking(move || scheduling.reload())
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the reload did not finish"))?;
    match outcome {
        Ok(_) => {
            state.scheduler_wakeup.notify_one();
            state.audit(&caller, None, "scheduler.reload", "scheduler", None).await;
            Ok(Json(view(state.scheduling.report())))
        }
        Err(error) => {
            let mut refusal = ApiError::field("config", error);
            refusal.status = StatusCode::UNPROCESSABLE_ENTITY;
            Err(refusal)
        }
    }
}

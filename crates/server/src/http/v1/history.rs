//! `GET /v1/history` (admin): the cluster's scheduling history as JSON
//! Lines ([`shepherd_core::history`]), streamed a page of tasks at a time:
//! what `shepherd history export` saves and `shepherd simulate
//! --from-history` replays. Shapes and times only: no command, image,
//! environment, payload, secret or task label ever goes out.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::header;
use axum::response::Response;
use serde::Deserialize;
use shepherd_core::history::{HistoryHeader, HistoryRecord, QuotaRecord, VERSION};
use shepherd_core::{TaskId, Timestamp};
use shepherd_store::Store;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    from: Option<String>,
    to: Option<String>,
    /// Comma-separated project names (default: every project).
    projects: Option<String>,
}

/// Tasks read from the store per page.
const PAGE: usize = 2000;

/// The most projects one export may name.
const MAX_PROJECTS: usize = 100;

/// The history of tasks that arrived in a window, with the nodes they
/// could run on, as JSON Lines: a header, the nodes, the tasks in order of
/// arrival with their attempts' nodes and times.
#[utoipa::path(get, path = "/v1/history", tag = "nodes",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 start (default: `to` minus 7 days)"),
        ("to" = Option<String>, Query, description = "RFC 3339 end (default: now)"),
        ("projects" = Option<String>, Query, description = "Only these projects' tasks, comma-separated"),
    ),
    responses((status = 200, content_type = "application/x-ndjson", description = "header, node and task records, one per line"),
        (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let query: Query = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query: {e}; use from=, to= (RFC 3339) and projects=a,b")))?;
    let window = Window::of(query.from, query.to, query.projects)?;
    let mut head = String::new();
    for record in window.head(&state).await? {
        push(&mut head, &record)?;
    }
    let (after, until) = shepherd_store::history::window(window.from, window.to);
    let pages = Pages { store: state.store.clone(), after, until, projects: window.projects, head: Some(head), done: false };
    let stream = futures_util::stream::unfold(pages, Pages::next);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// A window of the history and the projects asked for.
struct Window {
    from: Timestamp,
    to: Timestamp,
    projects: Vec<String>,
}

impl Window {
    fn of(from: Option<String>, to: Option<String>, projects: Option<String>) -> Result<Window, ApiError> {
        let time = |field: &str, text: Option<String>| -> Result<Option<Timestamp>, ApiError> {
            text.map(|t| Timestamp::parse_rfc3339(&t).map_err(|e| ApiError::field(field, format!("`{t}`: {e}")))).transpose()
        };
        let to = time("to", to)?.unwrap_or_else(Timestamp::now);
        let from = time("from", from)?.unwrap_or(Timestamp(to.millis() - 7 * 24 * 3_600_000));
        if from >= to {
            return Err(ApiError::field("from", "must be before `to`"));
        }
        let projects: Vec<String> =
            projects.as_deref().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
        if projects.len() > MAX_PROJECTS {
            return Err(ApiError::field("projects", format!("at most {MAX_PROJECTS} projects")));
        }
        Ok(Window { from, to, projects })
    }

    /// The header, the settings (projects' quotas, autoscaled pools, as
    /// they are now) and the inventory over time (machines and nodes).
    async fn head(&self, state: &AppState) -> Result<Vec<HistoryRecord>, ApiError> {
        let store: &dyn Store = state.store.as_ref();
        let mut out = vec![HistoryRecord::Header(HistoryHeader {
            version: VERSION,
            from: self.from.millis(),
            to: self.to.millis(),
            projects: self.projects.clone(),
        })];
        for project in store.list_projects().await? {
            if self.projects.is_empty() || self.projects.contains(&project.name) {
                out.extend(QuotaRecord::of(project.name, &project.limits).map(HistoryRecord::Quota));
            }
        }
        if let Some(autoscaler) = &state.autoscaler {
            out.extend(autoscaler.config().history().into_iter().map(HistoryRecord::Pool));
        }
        // Machines alive at some time in the window.
        for machine in store.machine_history(self.to).await? {
            if machine.gone.is_none_or(|gone| gone >= self.from.millis()) {
                out.push(HistoryRecord::Machine(machine));
            }
        }
        // The inventory over time: every recorded state change before the
        // window's end (nodes since removed included); a node's states
        // before the window matter only as where it starts.
        let records = store.node_history(self.to).await?;
        let mut last_before: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if r.at < self.from.millis() {
                last_before.insert(r.node.clone(), i);
            }
        }
        for (i, r) in records.into_iter().enumerate() {
            if r.at >= self.from.millis() || last_before.get(&r.node) == Some(&i) {
                out.push(HistoryRecord::Node(r));
            }
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    from: Option<String>,
    to: Option<String>,
    projects: Option<String>,
    /// Seconds between the replay's passes (default 0.05).
    tick: Option<f64>,
}

/// What a replay of the server's own history answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReplayAnswer {
    /// The comparison as a Markdown table.
    pub table: String,
    /// CPU allocated and tasks waiting over time, both runs (SVG).
    pub plot: String,
    /// The whole report (`shepherd simulate --json`), time series included.
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
}

/// One replay at a time on a server (it takes a core while it runs).
static REPLAYS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Replays the window's history under the scheduler settings this server
/// runs with, beside what happened (what `shepherd simulate
/// --from-history` prints; the dashboard's "What if" page).
#[utoipa::path(get, path = "/v1/history/replay", tag = "nodes",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339 start (default: `to` minus 7 days)"),
        ("to" = Option<String>, Query, description = "RFC 3339 end (default: now)"),
        ("projects" = Option<String>, Query, description = "Only these projects' tasks, comma-separated"),
        ("tick" = Option<f64>, Query, description = "Seconds between the replay's scheduling passes (0.001 to 60; default 0.05)"),
    ),
    responses((status = 200, body = ReplayAnswer), (status = 400, body = crate::http::error::ErrorBody),
        (status = 403, body = crate::http::error::ErrorBody), (status = 429, body = crate::http::error::ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<ReplayAnswer>, ApiError> {
    caller.require_admin()?;
    let query: ReplayQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query: {e}; use from=, to= (RFC 3339), projects=a,b and tick=SECONDS")))?;
    let tick = query.tick.unwrap_or(0.05);
    if !(0.001..=60.0).contains(&tick) {
        return Err(ApiError::field("tick", "0.001 to 60 seconds"));
    }
    let window = Window::of(query.from, query.to, query.projects)?;
    let Ok(_permit) = REPLAYS.try_acquire() else {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "a replay is running on this server; try again when it ends",
        ));
    };
    // The store's pages feed the replay as it goes (it runs on a blocking
    // thread): the history is never held whole.
    let (send, mut receive) = tokio::sync::mpsc::channel::<Result<Vec<HistoryRecord>, String>>(4);
    let head = window.head(&state).await?;
    let _ = send.send(Ok(head)).await;
    let (store, projects) = (state.store.clone(), window.projects.clone());
    let (mut after, until) = shepherd_store::history::window(window.from, window.to);
    tokio::spawn(async move {
        loop {
            let page = match store.history_tasks(after, until, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = send.send(Err(e.to_string())).await;
                    return;
                }
            };
            let done = page.len() < PAGE;
            if let Some((last, _)) = page.last() {
                after = *last;
            }
            let records = page
                .into_iter()
                .filter(|(_, t)| projects.is_empty() || projects.contains(&t.project))
                .map(|(_, t)| HistoryRecord::Task(t))
                .collect();
            if send.send(Ok(records)).await.is_err() || done {
                return;
            }
        }
    });
    let engine = state.scheduling.engine().get();
    let config = shepherd_sim::ReplayConfig { tick_seconds: tick, ..Default::default() };
    let report = tokio::task::spawn_blocking(move || {
        let records = std::iter::from_fn(move || receive.blocking_recv()).flat_map(|page| match page {
            Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(shepherd_core::history::HistoryError(e))],
        });
        shepherd_sim::replay(&engine, records, &config)
    })
    .await
    .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::field("history", e.0))?;
    let title = format!("replay of {} tasks on {} nodes beside what happened", report.real.tasks, report.replay_nodes);
    let plot = shepherd_sim::svg::plot(&[report.real.clone(), report.replay.clone()], &title);
    let table = shepherd_sim::replay::table(&report, true);
    let report = serde_json::to_value(&report)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(axum::Json(ReplayAnswer { table, plot, report }))
}

fn push(out: &mut String, record: &HistoryRecord) -> Result<(), ApiError> {
    let line = serde_json::to_string(record)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    out.push_str(&line);
    out.push('\n');
    Ok(())
}

/// Where the export stands: the next page starts after `after`.
struct Pages {
    store: Arc<dyn Store>,
    after: TaskId,
    until: TaskId,
    projects: Vec<String>,
    head: Option<String>,
    done: bool,
}

impl Pages {
    async fn next(mut self) -> Option<(Result<String, std::io::Error>, Pages)> {
        if let Some(head) = self.head.take() {
            return Some((Ok(head), self));
        }
        loop {
            if self.done {
                return None;
            }
            let page = match self.store.history_tasks(self.after, self.until, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // The body has begun: the stream ends with an error (a
                    // reader sees a cut-off line or a failed read).
                    tracing::warn!(error = %e, "history export failed");
                    self.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), self));
                }
            };
            self.done = page.len() < PAGE;
            let (last, _) = page.last()?;
            self.after = *last;
            let mut out = String::new();
            for (_, task) in page {
                if !self.projects.is_empty() && !self.projects.contains(&task.project) {
                    continue;
                }
                match serde_json::to_string(&HistoryRecord::Task(task)) {
                    Ok(line) => {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), self)),
                }
            }
            if !out.is_empty() {
                return Some((Ok(out), self));
            }
        }
    }
}

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
use shepherd_core::history::{HistoryHeader, HistoryRecord, NodeHistoryState, NodeRecord, VERSION};
use shepherd_core::{TaskId, Timestamp};
use shepherd_store::{NodeState, Store};
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
    let time = |field: &str, text: Option<String>| -> Result<Option<Timestamp>, ApiError> {
        text.map(|t| Timestamp::parse_rfc3339(&t).map_err(|e| ApiError::field(field, format!("`{t}`: {e}")))).transpose()
    };
    let to = time("to", query.to)?.unwrap_or_else(Timestamp::now);
    let from = time("from", query.from)?.unwrap_or(Timestamp(to.millis() - 7 * 24 * 3_600_000));
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    let projects: Vec<String> =
        query.projects.as_deref().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    if projects.len() > MAX_PROJECTS {
        return Err(ApiError::field("projects", format!("at most {MAX_PROJECTS} projects")));
    }
    let mut head = String::new();
    push(
        &mut head,
        &HistoryRecord::Header(HistoryHeader { version: VERSION, from: from.millis(), to: to.millis(), projects: projects.clone() }),
    )?;
    for node in state.store.list_nodes().await? {
        if node.registered_at >= to {
            continue;
        }
        let record = |at: Timestamp, state: NodeHistoryState| NodeRecord {
            node: node.id.clone(),
            at: at.millis(),
            state,
            cpu: node.capacity.cpu_millicores,
            memory: node.capacity.memory_mib,
            gpus: 0,
            max_tasks: node.max_tasks,
            labels: node.labels.clone(),
        };
        push(&mut head, &HistoryRecord::Node(record(node.registered_at, NodeHistoryState::Ready)))?;
        // A node down now went away with its last heartbeat.
        if node.state == NodeState::Down && node.last_heartbeat_at < to {
            push(&mut head, &HistoryRecord::Node(record(node.last_heartbeat_at, NodeHistoryState::Gone)))?;
        }
    }
    let (after, until) = shepherd_store::history::window(from, to);
    let pages = Pages { store: state.store.clone(), after, until, projects, head: Some(head), done: false };
    let stream = futures_util::stream::unfold(pages, Pages::next);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
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

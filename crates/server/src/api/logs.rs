//! `GET /v1/tasks/{id}/logs`: the stored output, or a live follow.

use super::tasks::parse_id;
use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use axum::http::header;
use axum::response::Response;
use serde::Deserialize;
use shepherd_core::TaskId;
use shepherd_store::{LogStream, Store, StoredLogChunk};
use std::sync::Arc;
use std::time::Duration;

/// `logs` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the response open and stream new output until the task ends.
    #[serde(default)]
    pub follow: bool,
    /// `stdout`, `stderr` or `all` (default).
    pub stream: Option<String>,
}

const PAGE: usize = 1000;
const POLL: Duration = Duration::from_millis(100);

fn wanted(filter: Option<LogStream>, chunk: &StoredLogChunk) -> bool {
    match filter {
        None => true,
        Some(stream) => chunk.stream == stream || chunk.stream == LogStream::System,
    }
}

struct Follow {
    store: Arc<dyn Store>,
    id: TaskId,
    after: i64,
    filter: Option<LogStream>,
    follow: bool,
    /// Set once the task was seen terminal: one last read, then the end.
    ending: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Vec<u8>, std::io::Error>, Follow)> {
        loop {
            let chunks = match self.store.read_logs(self.id, self.after, PAGE).await {
                Ok(chunks) => chunks,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), Follow { ending: true, follow: false, ..self })),
            };
            if let Some(last) = chunks.last() {
                self.after = last.seq;
                let bytes: Vec<u8> = chunks.iter().filter(|c| wanted(self.filter, c)).flat_map(|c| c.data.iter().copied()).collect();
                if !bytes.is_empty() {
                    return Some((Ok(bytes), self));
                }
                continue;
            }
            if !self.follow || self.ending {
                return None;
            }
            // Output is stored before the final state, so after seeing the
            // task end, one more read gets everything.
            match self.store.get_task(self.id).await {
                Ok(Some(task)) if task.state.is_terminal() => self.ending = true,
                Ok(Some(_)) => tokio::time::sleep(POLL).await,
                _ => return None,
            }
        }
    }
}

/// The task's output (stdout and stderr interleaved as they were captured).
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = String, Path, description = "task id"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = super::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let query: LogsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query: {e}; use follow=true|false and stream=stdout|stderr|all")))?;
    let filter = match query.stream.as_deref() {
        None | Some("all") => None,
        Some("stdout") => Some(LogStream::Stdout),
        Some("stderr") => Some(LogStream::Stderr),
        Some(other) => return Err(ApiError::field("stream", format!("`{other}`: use stdout, stderr or all"))),
    };
    super::tasks::load_visible(&state, &caller, id).await?;
    let follow = Follow { store: state.store.clone(), id, after: 0, filter, follow: query.follow, ending: false };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

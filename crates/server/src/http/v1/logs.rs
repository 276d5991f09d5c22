//! `GET /v1/tasks/{id}/logs`: the stored output, or a live follow.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::Response;
use axum::Extension;
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
    /// Skip this many bytes of the output (a client resuming after a broken
    /// connection asks for what follows the bytes it has).
    #[serde(default)]
    pub offset: u64,
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
    /// Bytes still to skip (the `offset` asked for).
    skip: u64,
    /// The attempt of the last chunk sent, and whether it ended a line.
    attempt: Option<u32>,
    at_line_start: bool,
    /// Set once the request's token is revoked: the follow ends.
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

impl Follow {
    /// The bytes of `chunks` as sent: each attempt after the first opens
    /// with a header line, so the attempts' output never runs together.
    fn render(&mut self, chunks: &[StoredLogChunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| wanted(self.filter, c)) {
            if Some(chunk.attempt) != self.attempt && (chunk.attempt > 1 || self.attempt.is_some()) {
                if !self.at_line_start {
                    out.push(b'\n');
                }
                out.extend_from_slice(format!("--- shepherd: attempt {} ---\n", chunk.attempt).as_bytes());
                self.at_line_start = true;
            }
            self.attempt = Some(chunk.attempt);
            if let Some(last) = chunk.data.last() {
                self.at_line_start = *last == b'\n';
            }
            out.extend_from_slice(&chunk.data);
        }
        let skipped = (self.skip as usize).min(out.len());
        self.skip -= skipped as u64;
        out.drain(..skipped);
        out
    }
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Vec<u8>, std::io::Error>, Follow)> {
        loop {
            if self.revoked.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let chunks = match self.store.read_logs(self.id, self.after, PAGE).await {
                Ok(chunks) => chunks,
                Err(e) => {
                    self.ending = true;
                    self.follow = false;
                    return Some((Err(std::io::Error::other(e.to_string())), self));
                }
            };
            if let Some(last) = chunks.last() {
                self.after = last.seq;
                let bytes = self.render(&chunks);
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
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::service::auth::Caller>,
    token: Option<Extension<crate::http::auth::BearerToken>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query: LogsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
        ApiError::field("query", format!("bad query: {e}; use follow=true|false, stream=stdout|stderr|all and offset=BYTES"))
    })?;
    let filter = match query.stream.as_deref() {
        None | Some("all") => None,
        Some("stdout") => Some(LogStream::Stdout),
        Some("stderr") => Some(LogStream::Stderr),
        Some(other) => return Err(ApiError::field("stream", format!("`{other}`: use stdout, stderr or all"))),
    };
    let id = state.tasks.load_visible(&caller, &id).await?.id;
    let follow = Follow {
        store: state.store.clone(),
        id,
        after: 0,
        filter,
        follow: query.follow,
        ending: false,
        skip: query.offset,
        attempt: None,
        at_line_start: true,
        revoked: Arc::default(),
    };
    if let (true, Some(Extension(token))) = (query.follow, token) {
        // A follow lasts as long as its token: watched while the follow lives.
        let flag = Arc::downgrade(&follow.revoked);
        let state = state.clone();
        tokio::spawn(async move {
            let watch = crate::http::auth::revoked(state, token.0);
            tokio::pin!(watch);
            loop {
                tokio::select! {
                    _ = &mut watch => {
                        if let Some(flag) = flag.upgrade() {
                            flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if flag.strong_count() == 0 {
                            return; // the follow ended
                        }
                    }
                }
            }
        });
    }
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

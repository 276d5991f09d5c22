//! `GET /v1/events`: the cluster's event stream as Server-Sent Events.
//!
//! Each event's SSE `id` is its cursor; a client that reconnects with
//! `Last-Event-ID` (browsers' `EventSource` does) or `?after=` gets every
//! event after it that is still kept (the retention window), and nothing
//! twice. Without either, the stream starts now. A project token sees its
//! project's events only (never nodes'); the admin sees everything.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::loops::events::{Batch, EventHub, PAGE_ROWS};
use crate::service::auth::Caller;
use axum::extract::{Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use shepherd_core::events::EVENT_TYPES;
use shepherd_core::{EventCursor, StoredEvent, TaskId};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    project: Option<String>,
    task: Option<String>,
    /// Comma-separated kinds.
    types: Option<String>,
    /// Resume after this event id (as `Last-Event-ID`, which wins).
    after: Option<String>,
}

/// Which events a follower gets.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub project: Option<String>,
    pub task: Option<TaskId>,
    /// Empty: every kind.
    pub types: Vec<String>,
    /// Leave out cluster-wide events (nodes): a project token's stream.
    pub project_only: bool,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn admits(&self, event: &shepherd_core::ClusterEvent) -> bool {
        if self.project_only && event.project().is_none() {
            return false;
        }
        if let Some(project) = &self.project {
            if event.project() != Some(project.as_str()) {
                return false;
            }
        }
        if let Some(task) = self.task {
            if event.task() != Some(task) {
                return false;
            }
        }
        self.types.is_empty() || self.types.iter().any(|t| t == event.kind())
    }
}

/// Follow the cluster's events.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("project" = Option<String>, Query, description = "Only this project's events"),
        ("task" = Option<String>, Query, description = "Only this task's events"),
        ("types" = Option<String>, Query, description = "Comma-separated kinds: task, node, machine, project, token, secret, code, schedule"),
        ("after" = Option<String>, Query, description = "Resume after this event id (the Last-Event-ID header wins)"),
    ),
    responses(
        (status = 200, description = "text/event-stream: `id` (the cursor), `event` (the kind) and `data` (the event as JSON) per event", content_type = "text/event-stream"),
        (status = 400, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    token: Option<Extension<crate::http::auth::BearerToken>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let query: EventsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query: {e}; use project=, task=, types= and after=")))?;
    let mut filter = EventFilter::default();
    if let Some(types) = &query.types {
        for kind in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !EVENT_TYPES.contains(&kind) {
                return Err(ApiError::field("types", format!("`{kind}` is not an event type; use {}", EVENT_TYPES.join(", "))));
            }
            filter.types.push(kind.to_string());
        }
    }
    match &caller {
        Caller::Admin => filter.project = query.project.clone(),
        _ => {
            let own = caller.project().unwrap_or_default().to_string();
            if query.project.as_ref().is_some_and(|p| *p != own) {
                return Err(ApiError::not_found(format!("no project `{}`", query.project.as_deref().unwrap_or_default())));
            }
            filter.project = Some(own);
            filter.project_only = true;
        }
    }
    if let Some(task) = &query.task {
        filter.task = Some(state.tasks.load_visible(&caller, task).await?.id);
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).or(query.after);
    let hub = state.events.clone();
    // Subscribed before anything is read: nothing committed from here on is missed.
    let batches = hub.subscribe();
    // A project's cursors are sealed: its ids say nothing of other
    // projects' events, and only a cursor this cluster sealed resumes it.
    let sealed = filter.project_only;
    let latest = hub.store().latest_event().await?;
    let last = match resume {
        // From the oldest kept: says nothing of anyone.
        Some(text) if sealed && text == "0-0-0" => Some(EventCursor { major: 0, minor: 0, index: 0 }),
        Some(text) if sealed => Some(
            hub.seal()
                .open(&text)
                .ok_or_else(|| ApiError::field("last-event-id", "not an event id of this stream (or 0-0-0: from the oldest kept)"))?,
        ),
        // The admin resumes from either kind.
        Some(text) => Some(match text.parse::<EventCursor>() {
            Ok(cursor) => cursor,
            Err(e) => hub.seal().open(&text).ok_or_else(|| ApiError::field("last-event-id", e.to_string()))?,
        }),
        None => latest,
    };
    if last.is_some() && last > latest {
        return Err(ApiError::field("last-event-id", "is ahead of the stream: no event has that id yet"));
    }
    let (tx, rx) = mpsc::channel::<Event>(256);
    let subscribers = state.metrics.subscribers().clone();
    subscribers.inc();
    // The stream ends once its token is revoked.
    let revoked = token.map(|Extension(token)| crate::http::auth::revoked(state.clone(), token.0));
    tokio::spawn(async move {
        match revoked {
            Some(revoked) => tokio::select! {
                _ = follow(&hub, &filter, last, batches, &tx, sealed) => {}
                _ = revoked => tracing::info!("event stream ended: its token was revoked"),
            },
            None => follow(&hub, &filter, last, batches, &tx, sealed).await,
        }
        subscribers.dec();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Feeds one follower until it goes away or the server stops.
async fn follow(
    hub: &Arc<EventHub>,
    filter: &EventFilter,
    mut last: Option<EventCursor>,
    mut batches: broadcast::Receiver<Arc<Batch>>,
    tx: &mpsc::Sender<Event>,
    sealed: bool,
) {
    let seal = sealed.then(|| hub.seal());
    if catch_up(hub, filter, &mut last, None, tx, seal).await.is_err() {
        return;
    }
    loop {
        let batch = tokio::select! {
            batch = batches.recv() => batch,
            _ = tx.closed() => return,
        };
        let result = match batch {
            Ok(batch) => {
                // The poller read from further on than this follower has got:
                // the gap comes from the store first.
                let gap = if batch.after > last { catch_up(hub, filter, &mut last, batch.after, tx, seal).await } else { Ok(()) };
                match gap {
                    Ok(()) => send(filter, &mut last, &batch.events, tx, seal).await,
                    Err(()) => Err(()),
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => catch_up(hub, filter, &mut last, None, tx, seal).await,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if result.is_err() {
            return;
        }
    }
}

/// Reads the store after `last` up to `until` (everything there is when
/// `None`), sending what passes the filter. `Err` when the follower is
/// gone or the store failed (the stream ends; the client resumes).
async fn catch_up(
    hub: &EventHub,
    filter: &EventFilter,
    last: &mut Option<EventCursor>,
    until: Option<EventCursor>,
    tx: &mpsc::Sender<Event>,
    seal: Option<&crate::loops::events::CursorSeal>,
) -> Result<(), ()> {
    loop {
        let page = match hub.store().read_events(*last, PAGE_ROWS).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: could not read the store");
                return Err(());
            }
        };
        let Some(end) = page.last().map(|e| e.cursor) else { return Ok(()) };
        let page: Vec<StoredEvent> = match until {
            Some(until) => page.into_iter().filter(|e| e.cursor <= until).collect(),
            None => page,
        };
        send(filter, last, &page, tx, seal).await?;
        if until.is_some_and(|u| end >= u) {
            *last = (*last).max(until);
            return Ok(());
        }
    }
}

/// Sends the events after `last` that pass the filter; moves `last` on.
async fn send(
    filter: &EventFilter,
    last: &mut Option<EventCursor>,
    events: &[StoredEvent],
    tx: &mpsc::Sender<Event>,
    seal: Option<&crate::loops::events::CursorSeal>,
) -> Result<(), ()> {
    for stored in events {
        if Some(stored.cursor) <= *last {
            continue;
        }
        *last = Some(stored.cursor);
        if !filter.admits(&stored.event) {
            continue;
        }
        let data = serde_json::to_string(&stored.event).unwrap_or_default();
        let id = match seal {
            Some(seal) => seal.seal(stored.cursor),
            None => stored.cursor.to_string(),
        };
        let event = Event::default().id(id).event(stored.event.kind()).data(data);
        tx.send(event).await.map_err(|_| ())?;
    }
    Ok(())
}

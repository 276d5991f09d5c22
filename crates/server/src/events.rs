//! The event stream's live side: one poller per server reads new events
//! from the store (where every write recorded them, in its transaction) and
//! hands them to every follower on this server; the leader prunes what is
//! older than the retention window.
//!
//! A follower first reads the store from its own cursor (`Last-Event-ID`),
//! then takes the poller's batches. Each batch says where its read began,
//! so a follower that finds a gap between what it has and a batch (it
//! lagged, or the poller started after it) reads the gap from the store:
//! nothing is missed, and cursors (totally ordered) drop what it already has.

use shepherd_core::{EventCursor, StoredEvent};
use shepherd_store::{Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often the poller looks for new events while anyone follows.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Stored rows per read.
pub const PAGE_ROWS: usize = 256;

/// Events read by the poller in one go.
#[derive(Debug)]
pub struct Batch {
    /// The cursor the read began after (`None`: from the oldest kept).
    pub after: Option<EventCursor>,
    pub events: Vec<StoredEvent>,
}

/// The poller and its followers.
pub struct EventHub {
    store: Arc<dyn Store>,
    batches: broadcast::Sender<Arc<Batch>>,
    /// Where the poller has read up to (`None`: not polling: nobody follows).
    position: Mutex<Option<EventCursor>>,
}

impl EventHub {
    /// A hub over `store`; [`EventHub::run`] polls.
    pub fn new(store: Arc<dyn Store>) -> Arc<EventHub> {
        let (batches, _) = broadcast::channel(256);
        Arc::new(EventHub { store, batches, position: Mutex::new(None) })
    }

    /// The store the events are read from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Batches from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.batches.subscribe()
    }

    /// Polls while anyone follows, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.poll().await {
                tracing::debug!(error = %e, "could not read the event stream");
            }
        }
    }

    /// One look for new events.
    async fn poll(&self) -> Result<(), StoreError> {
        if self.batches.receiver_count() == 0 {
            // Nobody follows: read nothing (followers find their own way
            // back to the present), and start from the newest next time.
            self.set_position(None);
            return Ok(());
        }
        let position = self.position.lock().map(|p| *p).unwrap_or(None);
        let mut after = match position {
            Some(cursor) => Some(cursor),
            None => match self.store.latest_event().await? {
                Some(latest) => {
                    // Followers that have less read the gap from the store.
                    self.set_position(Some(latest));
                    let _ = self.batches.send(Arc::new(Batch { after: Some(latest), events: Vec::new() }));
                    return Ok(());
                }
                None => None,
            },
        };
        loop {
            let events = self.store.read_events(after, PAGE_ROWS).await?;
            let Some(last) = events.last().map(|e| e.cursor) else { return Ok(()) };
            let full = events.len() >= PAGE_ROWS;
            self.set_position(Some(last));
            let _ = self.batches.send(Arc::new(Batch { after, events }));
            if !full {
                return Ok(());
            }
            // More waiting: the next page at once.
            after = Some(last);
        }
    }

    fn set_position(&self, cursor: Option<EventCursor>) {
        if let Ok(mut p) = self.position.lock() {
            *p = cursor;
        }
    }
}

/// Prunes events older than `retention`, on the leader, every minute.
pub async fn prune(store: Arc<dyn Store>, leadership: crate::leader::Leadership, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        if !leadership.is_leader() {
            continue;
        }
        let before = shepherd_core::Timestamp(shepherd_core::Timestamp::now().millis() - retention.as_millis() as i64);
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "could not prune old events"),
        }
    }
}

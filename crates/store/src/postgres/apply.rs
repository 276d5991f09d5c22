//! Lifecycle events on PostgreSQL with what they do beyond their tasks,
//! and group commit.
//!
//! [`apply_batch`] applies a batch set at a time ([`super::lifecycle`]),
//! then what the changes do beyond their tasks (arrays' counts and next
//! children, dependents, transitively), in the same transaction
//! ([`super::workflow`]), and records all of it in the event stream.
//!
//! [`Combiner`] is group commit for [`Store::apply`](crate::Store::apply):
//! requests that arrive while a transaction is in flight wait, and the next
//! transaction takes all of them, so a thousand agents' reports cost a
//! handful of commits (and flushes), not a thousand. SQLite's single writer
//! does the same for every write.

use super::lifecycle::apply_set;
pub(super) use super::lifecycle::BatchEvent;
use super::sql::{append_events, error, pool_error};
use crate::{Applied, ApplyResult, StoreError};
use shepherd_core::{Event, TaskId, Timestamp};
use tokio::sync::{mpsc, oneshot};

/// One caller's events, waiting for a combined transaction.
struct Request {
    events: Vec<(TaskId, Event)>,
    now: Timestamp,
    reporter: Option<String>,
    reply: oneshot::Sender<Result<Vec<ApplyResult>, StoreError>>,
}

/// Most events one combined transaction takes.
const MAX_EVENTS: usize = 4096;

/// Transactions a combiner keeps in flight at once: one commits while the
/// next one's statements run.
const IN_FLIGHT: usize = 2;

/// Applies events in one transaction, in the order given, then what they
/// do to tasks they did not name (their arrays' next children, their
/// dependents), and records all of it in the event stream. Returns one
/// result per event, in order, and apart, those of the tasks they did
/// not name (`cascade`).
pub(super) async fn apply_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[BatchEvent<'_>],
) -> Result<(Vec<ApplyResult>, Vec<ApplyResult>), StoreError> {
    let Some(first) = events.first() else { return Ok((Vec::new(), Vec::new())) };
    let applied = apply_set(tx, events).await?;
    let now = events.iter().map(|(_, _, now, _)| *now).max().unwrap_or(first.2);
    let mut cascade = Vec::new();
    super::workflow::after_all(tx, &applied, now, &mut cascade).await?;
    let results: Vec<ApplyResult> = applied.into_iter().map(|(result, _)| result).collect();
    let changes: Vec<shepherd_core::ClusterEvent> =
        results.iter().chain(&cascade).filter_map(|r| r.as_ref().ok()).map(Applied::event).collect();
    append_events(tx, first.2, &changes).await?;
    Ok((results, cascade))
}

/// Group commit for `apply`: see the module's comment.
pub(super) struct Combiner {
    requests: mpsc::UnboundedSender<Request>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Combiner {
    fn drop(&mut self) {
        self.workers.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Combiner {
    /// Starts the workers that commit what callers hand in.
    pub(super) fn start(pool: deadpool_postgres::Pool, observer: crate::ObserverSlot) -> Combiner {
        let (requests, receiver) = mpsc::unbounded_channel();
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        let workers = (0..IN_FLIGHT).map(|_| tokio::spawn(work(pool.clone(), receiver.clone(), observer.clone()))).collect();
        Combiner { requests, workers }
    }

    /// Applies `events` (reported by `reporter`, if a node did) in the next
    /// combined transaction.
    pub(super) async fn apply(
        &self,
        events: Vec<(TaskId, Event)>,
        now: Timestamp,
        reporter: Option<String>,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        let (reply, result) = oneshot::channel();
        self.requests.send(Request { events, now, reporter, reply }).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

/// Takes whatever requests are waiting (one at least), commits them in one
/// transaction and answers each.
async fn work(
    pool: deadpool_postgres::Pool,
    receiver: std::sync::Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>>,
    observer: crate::ObserverSlot,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut events = first.events.len();
            group.push(first);
            while events < MAX_EVENTS {
                match receiver.try_recv() {
                    Ok(request) => {
                        events += request.events.len();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        match commit(&pool, &group).await {
            Ok(results) => {
                if let Some(observer) = observer.get() {
                    observer.committed(group.len(), started.elapsed());
                }
                answer(group, results)
            }
            // A failure that is not about the database's availability may
            // be one request's doing: each is tried alone, so that it
            // never fails the others.
            Err(e) if group.len() > 1 && !e.is_transient() => {
                tracing::debug!(error = %e, requests = group.len(), "a combined apply failed; trying each request alone");
                for request in group {
                    let result = commit(&pool, std::slice::from_ref(&request)).await;
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut group = group.into_iter();
                let first = group.next();
                for request in group {
                    let e = match &e {
                        StoreError::Conflict(_) => StoreError::Conflict(message.clone()),
                        _ => StoreError::Unavailable(message.clone()),
                    };
                    let _ = request.reply.send(Err(e));
                }
                if let Some(first) = first {
                    let _ = first.reply.send(Err(e));
                }
            }
        }
    }
}

/// Hands each request its share of a combined transaction's results.
fn answer(group: Vec<Request>, mut results: Vec<ApplyResult>) {
    for request in group.into_iter().rev() {
        let mine = results.split_off(results.len().saturating_sub(request.events.len()));
        let _ = request.reply.send(Ok(mine));
    }
}

async fn commit(pool: &deadpool_postgres::Pool, group: &[Request]) -> Result<Vec<ApplyResult>, StoreError> {
    let events: Vec<BatchEvent<'_>> =
        group.iter().flat_map(|r| r.events.iter().map(|(id, event)| (*id, event, r.now, r.reporter.as_deref()))).collect();
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(error)?;
    let (results, _) = apply_batch(&tx, &events).await?;
    tx.commit().await.map_err(error)?;
    Ok(results)
}

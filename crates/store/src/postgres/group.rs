//! Group commit on PostgreSQL, for any kind of write request: requests
//! that arrive while a transaction is in flight wait, and the next
//! transaction takes all of them (up to a weight: events, tasks), with two
//! transactions in flight so that one commits while the next one's
//! statements run. A thousand agents' reports, or a thousand single
//! creates, cost a handful of commits (and flushes), not a thousand.
//! SQLite's single writer does the same for every write.
//!
//! A combined transaction that fails for a reason other than the
//! database's availability may be one request's doing: each request is
//! then committed alone, so that it never fails the others.

use super::sql::{error, pool_error};
use crate::{ObserverSlot, StoreError};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// Transactions a combiner keeps in flight at once.
const IN_FLIGHT: usize = 2;

/// A write request a [`Combiner`] folds into shared transactions.
pub(super) trait Request: Send + Sync + Sized + 'static {
    /// What the request gets back.
    type Out: Send;
    /// Its share of a group's size.
    fn weight(&self) -> usize;
    /// Writes the group in `tx`; one answer per request, in order.
    fn write<'a>(tx: &'a deadpool_postgres::Transaction<'a>, group: &'a [Self]) -> BoxFuture<'a, Result<Vec<Self::Out>, StoreError>>;
    /// Once its transaction committed (counts for the observer).
    fn committed(&self, _observer: &ObserverSlot) {}
    /// Sends the answer to the caller.
    fn reply(self, result: Result<Self::Out, StoreError>);
}

/// Group commit for requests of one kind: see the module's comment.
pub(super) struct Combiner<R: Request> {
    requests: mpsc::UnboundedSender<R>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl<R: Request> Drop for Combiner<R> {
    fn drop(&mut self) {
        self.workers.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl<R: Request> Combiner<R> {
    /// Starts the workers; a group weighs at most `max_weight` (a request
    /// heavier than that goes alone).
    pub(super) fn start(pool: deadpool_postgres::Pool, observer: ObserverSlot, max_weight: usize) -> Combiner<R> {
        let (requests, receiver) = mpsc::unbounded_channel();
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        let workers = (0..IN_FLIGHT).map(|_| tokio::spawn(work(pool.clone(), receiver.clone(), observer.clone(), max_weight))).collect();
        Combiner { requests, workers }
    }

    /// Hands a request in; its `reply` answers it.
    pub(super) fn send(&self, request: R) -> Result<(), StoreError> {
        self.requests.send(request).map_err(|_| StoreError::Closed)
    }
}

/// Takes whatever requests are waiting (one at least), commits them in one
/// transaction and answers each.
async fn work<R: Request>(
    pool: deadpool_postgres::Pool,
    receiver: std::sync::Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<R>>>,
    observer: ObserverSlot,
    max_weight: usize,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut weight = first.weight();
            group.push(first);
            while weight < max_weight {
                match receiver.try_recv() {
                    Ok(request) => {
                        weight += request.weight();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        match commit(&pool, &group).await {
            Ok(answers) => {
                if let Some(o) = observer.get() {
                    o.committed(group.len(), started.elapsed());
                }
                for (request, answer) in group.into_iter().zip(answers) {
                    request.committed(&observer);
                    request.reply(Ok(answer));
                }
            }
            Err(e) if group.len() > 1 && !e.is_transient() => {
                tracing::debug!(error = %e, requests = group.len(), "a combined write failed; trying each request alone");
                for request in group {
                    match commit(&pool, std::slice::from_ref(&request)).await.map(|mut a| a.pop()) {
                        Ok(Some(answer)) => {
                            request.committed(&observer);
                            request.reply(Ok(answer));
                        }
                        Ok(None) => request.reply(Err(StoreError::Corrupt("a write without its answer".into()))),
                        Err(e) => request.reply(Err(e)),
                    }
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
                    request.reply(Err(e));
                }
                if let Some(first) = first {
                    first.reply(Err(e));
                }
            }
        }
    }
}

async fn commit<R: Request>(pool: &deadpool_postgres::Pool, group: &[R]) -> Result<Vec<R::Out>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(error)?;
    let answers = R::write(&tx, group).await?;
    tx.commit().await.map_err(error)?;
    if answers.len() != group.len() {
        return Err(StoreError::Corrupt("a combined write answered a different number of requests".into()));
    }
    Ok(answers)
}

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

use super::group::Combiner as Group;
use super::lifecycle::apply_set;
pub(super) use super::lifecycle::BatchEvent;
use super::sql::append_events;
use crate::{Applied, ApplyResult, StoreError};
use futures_util::future::BoxFuture;
use shepherd_core::{Event, TaskId, Timestamp};
use tokio::sync::oneshot;

/// One caller's events, waiting for a combined transaction.
pub(super) struct Request {
    events: Vec<(TaskId, Event)>,
    now: Timestamp,
    reporter: Option<String>,
    reply: oneshot::Sender<Result<Vec<ApplyResult>, StoreError>>,
}

/// Most events one combined transaction takes.
const MAX_EVENTS: usize = 4096;

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
pub(super) struct Combiner(Group<Request>);

impl Combiner {
    /// Starts the workers that commit what callers hand in.
    pub(super) fn start(pool: deadpool_postgres::Pool, observer: crate::ObserverSlot) -> Combiner {
        Combiner(Group::start(pool, observer, MAX_EVENTS))
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
        self.0.send(Request { events, now, reporter, reply })?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

impl super::group::Request for Request {
    type Out = Vec<ApplyResult>;

    fn weight(&self) -> usize {
        self.events.len()
    }

    fn write<'a>(tx: &'a deadpool_postgres::Transaction<'a>, group: &'a [Self]) -> BoxFuture<'a, Result<Vec<Self::Out>, StoreError>> {
        Box::pin(async move {
            let events: Vec<BatchEvent<'_>> =
                group.iter().flat_map(|r| r.events.iter().map(|(id, event)| (*id, event, r.now, r.reporter.as_deref()))).collect();
            let (mut results, _) = apply_batch(tx, &events).await?;
            // Each request's share, in order.
            let mut answers = Vec::with_capacity(group.len());
            for request in group.iter().rev() {
                answers.push(results.split_off(results.len().saturating_sub(request.events.len())));
            }
            answers.reverse();
            Ok(answers)
        })
    }

    fn reply(self, result: Result<Self::Out, StoreError>) {
        let _ = self.reply.send(result);
    }
}

//! What every file of the PostgreSQL store shares: its errors as the
//! store's, the decoding of stored values, and the append to the event
//! stream. It uses no other file of `postgres`, so each of them may use it.

use crate::StoreError;
use deadpool_postgres::GenericClient;
use shepherd_core::{TaskId, TaskState, Timestamp};
use tokio_postgres::error::SqlState;

/// PostgreSQL's errors as the store's.
pub(crate) fn error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            StoreError::Conflict(e.to_string())
        }
        Some(code) if code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW => {
            StoreError::Unavailable(e.to_string())
        }
        Some(_) => StoreError::Database(Box::new(e)),
        None if e.is_closed() => StoreError::Unavailable(e.to_string()),
        // No SQL state: the connection (an I/O error, a refused connect).
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// The pool's errors as the store's: a database error as [`error`] maps
/// it, any other (no connection to be had) as unavailable.
pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Stored data that does not decode, and why.
pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A stored task id.
pub(super) fn parse_id(text: &str) -> Result<TaskId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task id `{text}`")))
}

/// A stored task state.
pub(super) fn parse_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task state `{text}`")))
}

/// A stored count as a `u32`, clamped into its range.
pub(super) fn to_u32(n: i64) -> u32 {
    n.clamp(0, u32::MAX.into()) as u32
}

/// Records events in the stream, in the transaction of the write that
/// made them: one row per write, numbered by the writing transaction's id
/// and a sequence (see [`Store::read_events`](crate::Store::read_events) for why both).
pub(super) async fn append_events(
    tx: &impl GenericClient,
    at: Timestamp,
    events: &[shepherd_core::ClusterEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let body = serde_json::to_string(events).map_err(|e| corrupt("events", e))?;
    let insert =
        tx.prepare_cached("INSERT INTO events (xid, at, body) VALUES (pg_current_xact_id()::text::bigint, $1, $2)").await.map_err(error)?;
    tx.execute(&insert, &[&at.millis(), &body]).await.map_err(error)?;
    Ok(())
}

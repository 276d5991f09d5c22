//! The event stream (read in commit order across servers, pruned by age)
//! and the audit log, whose per-project numbers are reserved apart from
//! the write that uses them.

use super::connection::PgStore;
use super::sql::{error, pool_error};
use crate::{AuditEntry, StoreError};
use deadpool_postgres::{GenericClient, Pool};
use shepherd_core::{EventCursor, StoredEvent, Timestamp};
use std::collections::BTreeMap;

/// Takes the next audit numbers of each project the entries name, in one
/// statement committed on its own on a connection that waits for no disk
/// flush (the `counters` pool): the counter row is locked only while
/// PostgreSQL executes it, not for any round trip, so concurrent creates in
/// one project (through any number of servers) are not serialised on it. A
/// number taken by a create that then fails is skipped: a gap in the
/// project's own numbering, which tells nothing of other projects. (Its
/// record reaches the disk before any later commit that uses it: the log is
/// sequential.)
pub(super) async fn reserve_audit_numbers(counters: &Pool, entries: &[AuditEntry]) -> Result<Vec<Option<i64>>, StoreError> {
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for entry in entries {
        if let Some(project) = &entry.project {
            *wanted.entry(project.as_str()).or_default() += 1;
        }
    }
    if wanted.is_empty() {
        return Ok(vec![None; entries.len()]);
    }
    let client = counters.get().await.map_err(pool_error)?;
    // Projects in order, so that two reservations never wait on each other crosswise.
    let take = client
        .prepare_cached(
            "INSERT INTO audit_counters (project, last) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (project) DO UPDATE SET last = audit_counters.last + excluded.last RETURNING project, last",
        )
        .await
        .map_err(error)?;
    let projects: Vec<&str> = wanted.keys().copied().collect();
    let counts: Vec<i64> = wanted.values().copied().collect();
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for row in client.query(&take, &[&projects, &counts]).await.map_err(error)? {
        let (project, last): (String, i64) = (row.get(0), row.get(1));
        let count = wanted.get(project.as_str()).copied().unwrap_or(0);
        next.insert(project, last - count + 1);
    }
    Ok(entries
        .iter()
        .map(|entry| {
            entry.project.as_deref().and_then(|project| next.get_mut(project)).map(|n| {
                *n += 1;
                *n - 1
            })
        })
        .collect())
}

pub(super) use super::inserts::append_audit;

/// The [`Store`](crate::Store) methods on the event stream and the audit
/// log, as `pg_` methods its impl (in `mod.rs`) hands each call to; the
/// trait documents each.
impl PgStore {
    pub(super) async fn pg_read_events(&self, after: Option<EventCursor>, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // Rows are read in (transaction id, sequence) order, and only those of
        // transactions older than every one still running (the snapshot's
        // xmin): a transaction that commits later has an id at least that
        // xmin, so it can never land before a cursor already handed out.
        let client = self.client().await?;
        let (major, minor) = after.map_or((-1, -1), |c| (c.major, c.minor));
        let rows = client
            .query(
                "SELECT xid, id, body FROM events WHERE (xid, id) >= ($1, $2) \
                 AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY xid, id LIMIT $3",
                &[&major, &minor, &((limit.max(1) + usize::from(after.is_some())) as i64)],
            )
            .await
            .map_err(error)?;
        let mut out = Vec::new();
        for row in rows {
            let cursor = EventCursor { major: row.get(0), minor: row.get(1), index: 0 };
            crate::push_events(&mut out, cursor, row.get(2), after)?;
        }
        Ok(out)
    }

    pub(super) async fn pg_latest_event(&self) -> Result<Option<EventCursor>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT xid, id, body FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY xid DESC, id DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(error)?;
        let Some(row) = row else { return Ok(None) };
        let mut events = Vec::new();
        crate::push_events(&mut events, EventCursor { major: row.get(0), minor: row.get(1), index: 0 }, row.get(2), None)?;
        Ok(events.last().map(|e| e.cursor))
    }

    pub(super) async fn pg_prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM events WHERE at < $1", &[&before.millis()]).await.map_err(error)
    }

    pub(super) async fn pg_append_audit(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        let numbers = reserve_audit_numbers(&self.counters, &entries).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        append_audit(&tx, &entries, &numbers).await?;
        tx.commit().await.map_err(error)
    }

    pub(super) async fn pg_list_audit(
        &self,
        project: Option<String>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        let limit = limit.clamp(1, 10_000) as i64;
        let rows = match &project {
            Some(project) => {
                client
                    .query(
                        "SELECT project_seq, at, actor, project, action, target, detail FROM audit_log \
                     WHERE project = $1 AND ($2::bigint IS NULL OR project_seq < $2) ORDER BY project_seq DESC LIMIT $3",
                        &[project, &before, &limit],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        "SELECT seq, at, actor, project, action, target, detail FROM audit_log \
                     WHERE ($1::bigint IS NULL OR seq < $1) ORDER BY seq DESC LIMIT $2",
                        &[&before, &limit],
                    )
                    .await
            }
        }
        .map_err(error)?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                seq: row.get(0),
                at: Timestamp(row.get(1)),
                actor: row.get(2),
                project: row.get(3),
                action: row.get(4),
                target: row.get(5),
                detail: row.get(6),
            })
            .collect())
    }
}

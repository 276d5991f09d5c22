//! Leadership (the lease, and the fencing of a leader's writes by it) and
//! the table of servers.

use super::apply;
use super::connection::PgStore;
use super::sql::error;
use crate::{ApplyResult, Lease, ServerRecord, StoreError};
use shepherd_core::{Event, TaskId, Timestamp};

/// The database's clock in milliseconds: every server reads the same one.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Refuses (fenced) unless `lease` is still the current, unexpired lease.
/// FOR SHARE: a new leader cannot take the lease over until `tx` ends, so a
/// write checked here is never late.
pub(super) async fn check_lease(tx: &deadpool_postgres::Transaction<'_>, lease: &Lease) -> Result<(), StoreError> {
    let current = tx
        .query_opt(&format!("SELECT holder, epoch, expires_at >= {NOW_MS} FROM leadership WHERE id = 1 FOR SHARE"), &[])
        .await
        .map_err(error)?;
    match current {
        Some(row) if row.get::<_, &str>(0) == lease.holder && row.get::<_, i64>(1) == lease.epoch && row.get::<_, bool>(2) => Ok(()),
        _ => Err(StoreError::Fenced { epoch: lease.epoch }),
    }
}

/// The [`Store`](crate::Store) methods on leadership and the servers'
/// table, as `pg_` methods its impl (in `mod.rs`) hands each call to; the
/// trait documents each.
impl PgStore {
    pub(super) async fn pg_acquire_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError> {
        let client = self.client().await?;
        let ttl = ttl.as_millis() as i64;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO leadership (id, holder, epoch, expires_at) VALUES (1, $1, 1, {NOW_MS} + $2) \
                     ON CONFLICT (id) DO UPDATE SET \
                     epoch = CASE WHEN leadership.holder = excluded.holder THEN leadership.epoch ELSE leadership.epoch + 1 END, \
                     holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leadership.holder = excluded.holder OR leadership.expires_at < {NOW_MS} \
                     RETURNING holder, epoch, expires_at"
                ),
                &[&holder, &ttl],
            )
            .await
            .map_err(error)?;
        Ok(row.map(|row| Lease { holder: row.get(0), epoch: row.get(1), expires_at: Timestamp(row.get(2)) }))
    }

    pub(super) async fn pg_release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE leadership SET expires_at = 0 WHERE id = 1 AND holder = $1", &[&holder]).await.map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_apply_as_leader(
        &self,
        events: Vec<(TaskId, Event)>,
        now: Timestamp,
        lease: &Lease,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        check_lease(&tx, lease).await?;
        let batch: Vec<apply::BatchEvent<'_>> = events.iter().map(|(id, event)| (*id, event, now, None)).collect();
        let (results, _) = apply::apply_batch(&tx, &batch).await?;
        tx.commit().await.map_err(error)?;
        self.observer.applied(&results);
        Ok(results)
    }

    pub(super) async fn pg_touch_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO servers (id, url, role, started_at, last_seen_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, role = excluded.role, last_seen_at = excluded.last_seen_at",
                &[&server.id, &server.url, &server.role, &server.started_at.millis(), &server.last_seen_at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_list_servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT id, url, role, started_at, last_seen_at FROM servers ORDER BY id", &[])
            .await
            .map_err(error)?
            .iter()
            .map(|row| ServerRecord {
                id: row.get(0),
                url: row.get(1),
                role: row.get(2),
                started_at: Timestamp(row.get(3)),
                last_seen_at: Timestamp(row.get(4)),
            })
            .collect())
    }
}

//! Retention (PostgreSQL): each batch removed in one transaction, a
//! statement per table for the whole batch. The SQL is
//! [`crate::retention`]'s.

use super::connection::PgStore;
use super::sql::{error, parse_id};
use crate::retention::{self, StoreSize};
use crate::StoreError;
use shepherd_core::{TaskId, Timestamp};

const MANY: retention::Matching = "= ANY($1)";

/// The [`Store`](crate::Store) methods of retention, as `pg_` methods its
/// impl (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_expired_tasks(
        &self,
        project: &str,
        before: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let limit = limit.clamp(1, retention::MAX_BATCH) as i64;
        let rows = client
            .query(&retention::expired_sql(), &[&project, &after, &retention::id_bound(before), &before.millis(), &limit])
            .await
            .map_err(error)?;
        rows.iter().map(|row| parse_id(row.get(0))).collect()
    }

    pub(super) async fn pg_remove_tasks(&self, ids: Vec<TaskId>, before: Timestamp) -> Result<Vec<TaskId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(TaskId::to_string).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        // Locked: a task retried or reported on meanwhile waits, then is
        // checked again by the statement it waited on.
        let check = format!("{} FOR UPDATE OF t", retention::still_expired_sql(MANY));
        let rows = tx.query(&check, &[&ids, &before.millis()]).await.map_err(error)?;
        let still: Vec<String> = rows.iter().map(|row| row.get::<_, String>(0)).collect();
        let mut arrays: Vec<String> = rows.iter().filter_map(|row| row.get::<_, Option<String>>(1)).collect();
        arrays.sort();
        arrays.dedup();
        if !still.is_empty() {
            tx.execute(&retention::roll_up_sql(MANY), &[&still]).await.map_err(error)?;
            for statement in retention::remove_sql(MANY) {
                tx.execute(&statement, &[&still]).await.map_err(error)?;
            }
            if !arrays.is_empty() {
                tx.execute(&retention::remove_array_sql(MANY), &[&arrays, &before.millis()]).await.map_err(error)?;
            }
        }
        tx.commit().await.map_err(error)?;
        still.iter().map(|id| parse_id(id)).collect()
    }

    pub(super) async fn pg_store_size(&self) -> Result<StoreSize, StoreError> {
        let client = self.client().await?;
        let bytes: i64 = client.query_one("SELECT pg_database_size(current_database())", &[]).await.map_err(error)?.get(0);
        let oldest: Option<String> = client.query_one(retention::OLDEST_SQL, &[]).await.map_err(error)?.get(0);
        let oldest_task = oldest.map(|id| parse_id(&id)).transpose()?.map(|id| retention::created_at(&id));
        Ok(StoreSize { bytes: bytes.max(0) as u64, oldest_task })
    }
}

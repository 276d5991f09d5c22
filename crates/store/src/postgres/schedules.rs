//! Schedules, and their firing: under the leader's lease, the tasks of
//! the due slots created in the transaction that moves the schedule on.

use super::connection::PgStore;
use super::events::{append_audit, reserve_audit_numbers};
use super::leases::check_lease;
use super::sql::{append_events, corrupt, error, to_u32};
use super::tasks::insert_tasks;
use crate::{Lease, ScheduleFiring, StoreError};
use shepherd_core::{Schedule, ScheduleSpec, ScheduleState, Timestamp};
use tokio_postgres::Row;

const SCHEDULE_COLUMNS: &str = "id, spec, created_at, state, next_at, fired, skipped, last_task, last_fired_at, failed, reason";

/// A schedule from a row of [`SCHEDULE_COLUMNS`].
fn schedule_from(row: &Row) -> Result<Schedule, StoreError> {
    let spec: ScheduleSpec = serde_json::from_str(row.get::<_, &str>(1)).map_err(|e| corrupt("schedule spec", e))?;
    let state: &str = row.get(3);
    Ok(Schedule {
        id: row.get(0),
        created_at: Timestamp(row.get(2)),
        state: ScheduleState::parse(state).ok_or_else(|| corrupt("schedule state", state))?,
        next_at: row.get::<_, Option<i64>>(4).map(Timestamp),
        fired: to_u32(row.get(5)),
        skipped: to_u32(row.get(6)),
        last_task: row.get(7),
        last_fired_at: row.get::<_, Option<i64>>(8).map(Timestamp),
        failed: to_u32(row.get(9)),
        reason: row.get(10),
        spec,
    })
}

/// The [`Store`](crate::Store) methods on schedules, as `pg_` methods its
/// impl (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_create_schedule(&self, s: Schedule) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&s.spec).map_err(|e| corrupt("schedule spec", e))?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO schedules (id, project, spec, created_at, state, next_at, fired, skipped, last_task, last_fired_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &s.id,
                    &s.spec.project,
                    &spec,
                    &s.created_at.millis(),
                    &s.state.as_str(),
                    &s.next_at.map(Timestamp::millis),
                    &i64::from(s.fired),
                    &i64::from(s.skipped),
                    &s.last_task,
                    &s.last_fired_at.map(Timestamp::millis),
                ],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn schedules(&self, sql: &str, args: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Schedule>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, args).await.map_err(error)?;
        rows.iter().map(schedule_from).collect()
    }

    pub(super) async fn pg_get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.schedules(&format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"), &[&id]).await?.pop())
    }

    pub(super) async fn pg_list_schedules(&self, project: Option<String>) -> Result<Vec<Schedule>, StoreError> {
        self.schedules(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE $1::text IS NULL OR project = $1 ORDER BY created_at, id"),
            &[&project],
        )
        .await
    }

    pub(super) async fn pg_set_schedule_state(
        &self,
        id: &str,
        state: ScheduleState,
        next_at: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE schedules SET state = $2, next_at = $3 WHERE id = $1 AND state <> 'cancelled'",
                &[&id, &state.as_str(), &next_at.map(Timestamp::millis)],
            )
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, StoreError> {
        self.schedules(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE state = 'active' AND next_at <= $1 ORDER BY next_at LIMIT $2"),
            &[&now.millis(), &(limit as i64)],
        )
        .await
    }

    pub(super) async fn pg_next_schedule_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT MIN(next_at) FROM schedules WHERE state = 'active'", &[]).await.map_err(error)?;
        Ok(row.get::<_, Option<i64>>(0).map(Timestamp))
    }

    pub(super) async fn pg_fire_schedule(&self, f: ScheduleFiring, lease: &Lease) -> Result<bool, StoreError> {
        let numbers = reserve_audit_numbers(&self.counters, &f.audit).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        check_lease(&tx, lease).await?;
        let state = if f.next.is_some() { ScheduleState::Active } else { ScheduleState::Done };
        let last = f.tasks.last().map(|t| t.id.to_string());
        let changed = tx
            .execute(
                "UPDATE schedules SET next_at = $3, state = $4, fired = fired + $5, skipped = skipped + $6, \
                 last_task = COALESCE($7, last_task), last_fired_at = CASE WHEN $5 > 0 THEN $8 ELSE last_fired_at END, \
                 failed = failed + $9, reason = CASE WHEN $5 > 0 OR $10::text IS NOT NULL THEN $10 ELSE reason END \
                 WHERE id = $1 AND state = 'active' AND next_at = $2",
                &[
                    &f.id,
                    &f.expected_next.millis(),
                    &f.next.map(Timestamp::millis),
                    &state.as_str(),
                    &(f.tasks.len() as i64),
                    &i64::from(f.skipped),
                    &last,
                    &f.at.millis(),
                    &i64::from(f.failed),
                    &f.reason,
                ],
            )
            .await
            .map_err(error)?;
        if changed == 0 {
            return Ok(false);
        }
        insert_tasks(&tx, &f.tasks, &self.shape_key).await?;
        if let Some(first) = f.tasks.first() {
            append_events(&tx, first.created_at, &crate::created_events(&f.tasks)).await?;
        }
        append_audit(&tx, &f.audit, &numbers).await?;
        tx.commit().await.map_err(error)?;
        self.observer.created(&f.tasks);
        Ok(true)
    }
}

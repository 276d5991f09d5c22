//! Codes and schedules in PostgreSQL.

use super::{corrupt, error, PgStore};
use crate::{CodeLimit, Lease, ScheduleFiring, StoreError, WebhookAttempt, WebhookDelivery, WebhookNext};
use shepherd_core::{Code, CodeSpec, Schedule, ScheduleSpec, ScheduleState, Timestamp};
use tokio_postgres::Row;

fn to_u32(n: i64) -> u32 {
    n.clamp(0, u32::MAX.into()) as u32
}

/// `revision, created_at, rolled_back_from, spec` as a code.
fn code_from(row: &Row) -> Result<Code, StoreError> {
    let spec: CodeSpec = serde_json::from_str(row.get::<_, &str>(3)).map_err(|e| corrupt("code spec", e))?;
    Ok(Code {
        revision: to_u32(row.get(0)),
        created_at: Timestamp(row.get(1)),
        rolled_back_from: row.get::<_, Option<i64>>(2).map(to_u32),
        spec,
    })
}

const CODE_COLUMNS: &str = "r.revision, r.created_at, r.rolled_back_from, r.spec";
const SCHEDULE_COLUMNS: &str = "id, spec, created_at, state, next_at, fired, skipped, last_task, last_fired_at, failed, reason";

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

impl PgStore {
    pub(super) async fn pg_push_code(
        &self,
        project: &str,
        mut spec: CodeSpec,
        at: Timestamp,
        from: Option<u32>,
    ) -> Result<Code, StoreError> {
        spec.project = project.to_string();
        let text = serde_json::to_string(&spec).map_err(|e| corrupt("code spec", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let revision: i64 = tx
            .query_one(
                "INSERT INTO codes (project, name, latest, live, max_concurrency) VALUES ($1, $2, 1, TRUE, $3) \
                 ON CONFLICT (project, name) DO UPDATE SET latest = codes.latest + 1, live = TRUE, max_concurrency = excluded.max_concurrency \
                 RETURNING latest",
                &[&project, &spec.name, &spec.max_concurrency.map(i64::from)],
            )
            .await
            .map_err(error)?
            .get(0);
        tx.execute(
            "INSERT INTO code_revisions (project, name, revision, created_at, rolled_back_from, spec) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&project, &spec.name, &revision, &at.millis(), &from.map(i64::from), &text],
        )
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)?;
        Ok(Code { revision: to_u32(revision), created_at: at, rolled_back_from: from, spec })
    }

    pub(super) async fn pg_get_code(&self, project: &str, name: &str, revision: Option<u32>) -> Result<Option<Code>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     AND r.revision = COALESCE($3, c.latest) WHERE c.project = $1 AND c.name = $2 AND c.live"
                ),
                &[&project, &name, &revision.map(i64::from)],
            )
            .await
            .map_err(error)?;
        row.as_ref().map(code_from).transpose()
    }

    pub(super) async fn pg_list_codes(&self, project: Option<String>) -> Result<Vec<Code>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     AND r.revision = c.latest WHERE c.live AND ($1::text IS NULL OR c.project = $1) ORDER BY c.project, c.name"
                ),
                &[&project],
            )
            .await
            .map_err(error)?;
        rows.iter().map(code_from).collect()
    }

    pub(super) async fn pg_code_revisions(&self, project: &str, name: &str) -> Result<Vec<Code>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     WHERE c.project = $1 AND c.name = $2 AND c.live ORDER BY r.revision DESC"
                ),
                &[&project, &name],
            )
            .await
            .map_err(error)?;
        rows.iter().map(code_from).collect()
    }

    pub(super) async fn pg_delete_code(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("UPDATE codes SET live = FALSE WHERE project = $1 AND name = $2 AND live", &[&project, &name])
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_code_limits(&self) -> Result<Vec<CodeLimit>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT project, name, max_concurrency FROM codes WHERE live AND max_concurrency IS NOT NULL", &[])
            .await
            .map_err(error)?;
        Ok(rows.iter().map(|row| CodeLimit { project: row.get(0), name: row.get(1), max: to_u32(row.get(2)) }).collect())
    }

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
        let numbers = super::reserve_audit_numbers(&self.counters, &f.audit).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        super::check_lease(&tx, lease).await?;
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
        super::insert_tasks(&tx, &f.tasks, &self.shape_key).await?;
        if let Some(first) = f.tasks.first() {
            super::append_events(&tx, first.created_at, &crate::created_events(&f.tasks)).await?;
        }
        super::append_audit(&tx, &f.audit, &numbers).await?;
        tx.commit().await.map_err(error)?;
        self.observer.created(&f.tasks);
        Ok(true)
    }

    pub(super) async fn pg_put_package(&self, project: &str, digest: &str, data: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO packages (project, digest, size, data, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, digest) DO NOTHING",
                &[&project, &digest, &(data.len() as i64), &data, &at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_get_package(&self, project: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT data FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn pg_package_size(&self, project: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT size FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    pub(super) async fn pg_set_progress(&self, id: shepherd_core::TaskId, progress: shepherd_core::Progress) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tasks SET progress_percent = $2, progress_message = $3 WHERE id = $1",
                &[&id.to_string(), &i64::from(progress.percent), &progress.message],
            )
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_set_attempt_progress(
        &self,
        id: shepherd_core::TaskId,
        attempt: u32,
        node_id: Option<String>,
        progress: shepherd_core::Progress,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tasks SET progress_percent = $2, progress_message = $3 \
                 WHERE id = $1 AND attempt = $4 AND state = 'scheduled' AND ($5::text IS NULL OR node_id = $5)",
                &[&id.to_string(), &i64::from(progress.percent), &progress.message, &i64::from(attempt), &node_id],
            )
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_ensure_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO secrets (project, name, value, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (project, name) DO NOTHING",
                &[&project, &name, &value, &at.millis()],
            )
            .await
            .map_err(error)?;
        let row =
            client.query_one("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)?;
        Ok(row.get(0))
    }

    pub(super) async fn pg_due_webhooks(
        &self,
        now: Timestamp,
        limit: usize,
        per_project: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT task_id, project, url, state, attempts, next_at, delivered_at FROM \
                 (SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.project ORDER BY d.next_at) AS rank FROM webhook_deliveries d \
                 JOIN tasks t ON t.id = d.task_id WHERE d.state = 'pending' AND d.next_at <= $1 \
                 AND t.state IN ('succeeded', 'failed', 'timed_out', 'cancelled')) d WHERE rank <= $3 ORDER BY next_at LIMIT $2",
                &[&now.millis(), &(limit as i64), &(per_project.max(1) as i64)],
            )
            .await
            .map_err(error)?;
        rows.iter().map(webhook_from).collect()
    }

    pub(super) async fn pg_record_webhook(
        &self,
        task: shepherd_core::TaskId,
        attempt: WebhookAttempt,
        next: WebhookNext,
    ) -> Result<(), StoreError> {
        let id = task.to_string();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        tx.execute(
            "INSERT INTO webhook_attempts (task_id, number, at, status, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (task_id, number) DO NOTHING",
            &[
                &id,
                &i64::from(attempt.number),
                &attempt.at.millis(),
                &attempt.status.map(i64::from),
                &(attempt.latency_ms as i64),
                &attempt.error,
            ],
        )
        .await
        .map_err(error)?;
        let (state, next_at, delivered_at) = match next {
            WebhookNext::Delivered => ("delivered", None, Some(attempt.at.millis())),
            WebhookNext::RetryAt(at) => ("pending", Some(at.millis()), None),
            WebhookNext::GiveUp => ("failed", None, None),
        };
        tx.execute(
            "UPDATE webhook_deliveries SET state = $2, next_at = $3, delivered_at = $4, attempts = GREATEST(attempts, $5) WHERE task_id = $1 AND state = 'pending'",
            &[&id, &state, &next_at, &delivered_at, &i64::from(attempt.number)],
        )
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)
    }

    pub(super) async fn pg_webhook_of(&self, task: shepherd_core::TaskId) -> Result<Option<WebhookDelivery>, StoreError> {
        let id = task.to_string();
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT d.task_id, d.project, d.url, d.state, d.attempts, d.next_at, d.delivered_at FROM webhook_deliveries d WHERE d.task_id = $1",
                &[&id],
            )
            .await
            .map_err(error)?
        else {
            return Ok(None);
        };
        let mut delivery = webhook_from(&row)?;
        let rows = client
            .query("SELECT number, at, status, latency_ms, error FROM webhook_attempts WHERE task_id = $1 ORDER BY number", &[&id])
            .await
            .map_err(error)?;
        delivery.history = rows
            .iter()
            .map(|row| WebhookAttempt {
                number: to_u32(row.get(0)),
                at: Timestamp(row.get(1)),
                status: row.get::<_, Option<i64>>(2).and_then(|s| u16::try_from(s).ok()),
                latency_ms: row.get::<_, i64>(3).max(0) as u64,
                error: row.get(4),
            })
            .collect();
        Ok(Some(delivery))
    }
}

fn webhook_from(row: &Row) -> Result<WebhookDelivery, StoreError> {
    Ok(WebhookDelivery {
        task_id: super::parse_id(row.get::<_, &str>(0))?,
        project: row.get(1),
        url: row.get(2),
        state: row.get(3),
        attempts: to_u32(row.get(4)),
        next_at: row.get::<_, Option<i64>>(5).map(Timestamp),
        delivered_at: row.get::<_, Option<i64>>(6).map(Timestamp),
        history: Vec::new(),
    })
}

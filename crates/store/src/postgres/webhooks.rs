//! Webhook deliveries: the ones due (a fair share per project), each
//! attempt recorded, and a task's delivery with its history.

use super::connection::PgStore;
use super::sql::{error, parse_id, to_u32};
use crate::{StoreError, WebhookAttempt, WebhookDelivery, WebhookNext};
use shepherd_core::Timestamp;
use tokio_postgres::Row;

/// The [`Store`](crate::Store) methods on webhook deliveries, as `pg_`
/// methods its impl (in `mod.rs`) hands each call to; the trait documents
/// each.
impl PgStore {
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

/// A delivery (without its history) from a row of `task_id, project,
/// url, state, attempts, next_at, delivered_at`.
fn webhook_from(row: &Row) -> Result<WebhookDelivery, StoreError> {
    Ok(WebhookDelivery {
        task_id: parse_id(row.get::<_, &str>(0))?,
        project: row.get(1),
        url: row.get(2),
        state: row.get(3),
        attempts: to_u32(row.get(4)),
        next_at: row.get::<_, Option<i64>>(5).map(Timestamp),
        delivered_at: row.get::<_, Option<i64>>(6).map(Timestamp),
        history: Vec::new(),
    })
}

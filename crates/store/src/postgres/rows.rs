//! Tasks and their attempts as rows: the columns read and their decoding.

use super::sql::{corrupt, error, parse_id, parse_state};
use crate::{ActiveTask, StoreError};
use deadpool_postgres::GenericClient;
use shepherd_core::{Resources, Task, Timestamp};
use tokio_postgres::Row;

/// The columns [`task_from_row`] reads, in its order (a child of an array
/// reads its array's spec: [`crate::workflow::SPEC_SQL`]).
pub(super) const TASK_COLUMNS: &str =
    "id, state, CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END, \
     payload_bytes, created_at, scheduled_at, started_at, finished_at, node_id, exit_code, \
     reason, cancel_requested, not_before, progress_percent, progress_message, array_id, array_index, waiting_on";

/// A task (without its attempts) from a row of [`TASK_COLUMNS`].
pub(super) fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    let id: String = row.get(0);
    let state: String = row.get(1);
    let (array_id, index): (Option<String>, Option<i64>) = (row.get(15), row.get(16));
    let spec = crate::workflow::child_spec(row.get::<_, &str>(2), index).map_err(|e| corrupt(&format!("task {id}"), e))?;
    let array = crate::workflow::member(&spec, array_id, index);
    let waiting = (state == "waiting").then(|| crate::workflow::waiting_reason(&spec, array.is_some(), row.get(17)));
    let created_at = Timestamp(row.get(4));
    let task = Task::from_spec(parse_id(&id)?, spec, row.get::<_, i64>(3) as u64, created_at);
    let not_before = Timestamp(row.get(12));
    let reason: Option<String> = row.get(10);
    Ok(Task {
        array,
        reason: waiting.or(reason),
        state: parse_state(&state)?,
        scheduled_at: row.get::<_, Option<i64>>(5).map(Timestamp),
        started_at: row.get::<_, Option<i64>>(6).map(Timestamp),
        finished_at: row.get::<_, Option<i64>>(7).map(Timestamp),
        node_id: row.get(8),
        exit_code: row.get(9),
        cancel_requested: row.get(11),
        retry_at: Some(not_before).filter(|at| state == "queued" && *at > created_at),
        progress: row.get::<_, Option<i64>>(13).map(|percent| shepherd_core::Progress {
            percent: percent.clamp(0, 100) as u8,
            message: row.get::<_, Option<String>>(14).unwrap_or_default(),
        }),
        ..task
    })
}

/// Reads a task's attempts into it, in order.
pub(super) async fn load_attempts(client: &impl GenericClient, task: &mut Task) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT number, node_id, scheduled_at, started_at, finished_at, outcome, exit_code, reason, container, warm, \
             cpu_ms, peak_memory_bytes, image_digest, octet_length(result)::bigint FROM attempts WHERE task_id = $1 ORDER BY number",
        )
        .await
        .map_err(error)?;
    for row in client.query(&stmt, &[&task.id.to_string()]).await.map_err(error)? {
        let outcome: Option<String> = row.get(5);
        task.attempts.push(shepherd_core::Attempt {
            number: row.get::<_, i64>(0) as u32,
            node_id: row.get(1),
            scheduled_at: Timestamp(row.get(2)),
            started_at: row.get::<_, Option<i64>>(3).map(Timestamp),
            finished_at: row.get::<_, Option<i64>>(4).map(Timestamp),
            outcome: outcome.as_deref().and_then(shepherd_core::AttemptOutcome::parse),
            exit_code: row.get(6),
            reason: row.get(7),
            runtime: row.get::<_, Option<String>>(8).map(|container| shepherd_core::AttemptRuntime {
                container,
                warm: row.get(9),
                image_digest: row.get(12),
            }),
            usage: match (row.get::<_, Option<i64>>(10), row.get::<_, Option<i64>>(11)) {
                (Some(cpu), Some(memory)) => {
                    Some(shepherd_core::Usage { cpu_ms: cpu.max(0) as u64, peak_memory_bytes: memory.max(0) as u64 })
                }
                _ => None,
            },
            result_bytes: row.get::<_, Option<i64>>(13).map(|n| n.max(0) as u64),
        });
    }
    Ok(())
}

/// The query [`active_from_row`] decodes the rows of, less its `WHERE`.
pub(super) const ACTIVE_COLUMNS: &str = "SELECT id, state, node_id, attempt, cpu_millicores, memory_mib, cancel_requested, \
     CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END FROM tasks";

/// An active task from a row of [`ACTIVE_COLUMNS`].
pub(super) fn active_from_row(row: &tokio_postgres::Row) -> Result<ActiveTask, StoreError> {
    let spec: shepherd_core::TaskSpec = serde_json::from_str(row.get::<_, &str>(7)).map_err(|e| corrupt("spec", e))?;
    Ok(ActiveTask {
        id: parse_id(row.get::<_, &str>(0))?,
        project: spec.project,
        labels: spec.labels,
        code: spec.code,
        state: parse_state(row.get::<_, &str>(1))?,
        node_id: row.get::<_, Option<String>>(2).unwrap_or_default(),
        attempt: row.get::<_, i64>(3) as u32,
        resources: Resources { cpu_millicores: row.get::<_, i64>(4) as u32, memory_mib: row.get::<_, i64>(5) as u32 },
        cancel_requested: row.get(6),
        gpus: spec.gpus,
    })
}

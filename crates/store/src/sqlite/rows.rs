//! Mapping between rows and records.

use crate::{NodeRecord, NodeState, StoreError};
use rusqlite::{Connection, OptionalExtension, Row};
use shepherd_core::{Attempt, AttemptOutcome, Resources, Task, TaskId, TaskSpec, TaskState, Timestamp};

/// Columns read by [`task_from_row`], in order (a child of an array reads
/// its array's spec: [`crate::workflow::SPEC_SQL`]).
pub const TASK_COLUMNS: &str =
    "id, state, CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END, \
     payload_bytes, created_at, scheduled_at, started_at, \
     finished_at, node_id, exit_code, reason, cancel_requested, not_before, progress_percent, progress_message, \
     array_id, array_index, waiting_on";

/// A `task_logs` row read as `seq, attempt, stream, data`.
pub fn log_chunk(row: &rusqlite::Row<'_>) -> rusqlite::Result<crate::StoredLogChunk> {
    Ok(crate::StoredLogChunk {
        seq: row.get(0)?,
        attempt: row.get(1)?,
        stream: shepherd_core::LogStream::from_code(row.get(2)?),
        data: row.get(3)?,
    })
}

pub fn parse_id(text: &str) -> Result<TaskId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task id `{text}`")))
}

pub fn parse_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task state `{text}`")))
}

fn ts(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp)
}

/// A task without its attempts; [`load_attempts`] fills them in.
pub fn task_from_row(row: &Row<'_>) -> Result<Task, StoreError> {
    let id: String = row.get(0)?;
    let state: String = row.get(1)?;
    let spec_json: String = row.get(2)?;
    let (array_id, index): (Option<String>, Option<i64>) = (row.get(15)?, row.get(16)?);
    let spec: TaskSpec = crate::workflow::child_spec(&spec_json, index).map_err(|e| StoreError::Corrupt(format!("task {id}: {e}")))?;
    let array = crate::workflow::member(&spec, array_id, index);
    let waiting = (state == "waiting").then(|| crate::workflow::waiting_reason(&spec, array.is_some(), row.get(17).unwrap_or(0)));
    let task = Task::from_spec(parse_id(&id)?, spec, row.get::<_, i64>(3)? as u64, Timestamp(row.get(4)?));
    let reason: Option<String> = row.get(10)?;
    Ok(Task {
        array,
        reason: waiting.or(reason),
        state: parse_state(&state)?,
        scheduled_at: ts(row.get(5)?),
        started_at: ts(row.get(6)?),
        finished_at: ts(row.get(7)?),
        node_id: row.get(8)?,
        exit_code: row.get(9)?,
        cancel_requested: row.get::<_, i64>(11)? != 0,
        // Set past its creation only when a failed attempt is to be retried later.
        retry_at: Some(Timestamp(row.get(12)?)).filter(|at| state == "queued" && *at > task.created_at),
        progress: row.get::<_, Option<i64>>(13)?.map(|percent| shepherd_core::Progress {
            percent: percent.clamp(0, 100) as u8,
            message: row.get::<_, Option<String>>(14).ok().flatten().unwrap_or_default(),
        }),
        ..task
    })
}

pub fn load_attempts(conn: &Connection, task: &mut Task) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT number, node_id, scheduled_at, started_at, finished_at, outcome, exit_code, reason, container, warm, \
         cpu_ms, peak_memory_bytes, image_digest, length(result) FROM attempts WHERE task_id = ?1 ORDER BY number",
    )?;
    let mut rows = stmt.query([task.id.to_string()])?;
    while let Some(row) = rows.next()? {
        let outcome: Option<String> = row.get(5)?;
        task.attempts.push(Attempt {
            number: row.get(0)?,
            node_id: row.get(1)?,
            scheduled_at: Timestamp(row.get(2)?),
            started_at: ts(row.get(3)?),
            finished_at: ts(row.get(4)?),
            outcome: outcome.as_deref().and_then(AttemptOutcome::parse),
            exit_code: row.get(6)?,
            reason: row.get(7)?,
            runtime: row.get::<_, Option<String>>(8)?.map(|container| shepherd_core::AttemptRuntime {
                container,
                warm: row.get(9).unwrap_or(false),
                image_digest: row.get(12).unwrap_or(None),
            }),
            usage: match (row.get::<_, Option<i64>>(10)?, row.get::<_, Option<i64>>(11)?) {
                (Some(cpu), Some(memory)) => {
                    Some(shepherd_core::Usage { cpu_ms: cpu.max(0) as u64, peak_memory_bytes: memory.max(0) as u64 })
                }
                _ => None,
            },
            result_bytes: row.get::<_, Option<i64>>(13)?.map(|n| n.max(0) as u64),
        });
    }
    Ok(())
}

pub fn get_task(conn: &Connection, id: TaskId) -> Result<Option<Task>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let task = stmt.query_row([id.to_string()], |row| Ok(task_from_row(row))).optional()?.transpose()?;
    match task {
        Some(mut task) => {
            load_attempts(conn, &mut task)?;
            Ok(Some(task))
        }
        None => Ok(None),
    }
}

pub fn node_from_row(row: &Row<'_>) -> Result<NodeRecord, StoreError> {
    let state: String = row.get(2)?;
    let labels: String = row.get(7)?;
    let images: String = row.get(10)?;
    Ok(NodeRecord {
        id: row.get(0)?,
        hostname: row.get(1)?,
        state: NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))?,
        driver: row.get(3)?,
        capacity: Resources { cpu_millicores: row.get(4)?, memory_mib: row.get(5)? },
        max_tasks: row.get(6)?,
        labels: serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt(format!("node labels: {e}")))?,
        images: serde_json::from_str(&images).map_err(|e| StoreError::Corrupt(format!("node images: {e}")))?,
        registered_at: Timestamp(row.get(8)?),
        last_heartbeat_at: Timestamp(row.get(9)?),
    })
}

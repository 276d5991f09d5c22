//! A cluster's history as the store reads it for `GET /v1/history`: tasks
//! in order of creation (ids sort by it), each with the times and nodes of
//! its attempts, as [`shepherd_core::history::TaskRecord`]s: shapes and
//! times only (see there). Both backends run the same SQL.

use shepherd_core::history::{AttemptRecord, TaskRecord};
use shepherd_core::{TaskId, Timestamp};

/// The tasks of a page (`$1` after, `$2` until, `$3` limit); the spec is
/// read for the few fields a history keeps, never handed on.
pub(crate) fn tasks_sql() -> String {
    format!(
        "SELECT id, project, created_at, CAST(cpu_millicores AS BIGINT), CAST(memory_mib AS BIGINT), CAST(priority AS BIGINT), constraints, {} FROM tasks \
         WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
        crate::workflow::SPEC_SQL
    )
}

/// A page's attempts (`$1` the first id, `$2` the last), in order.
pub(crate) const ATTEMPTS_SQL: &str = "SELECT task_id, node_id, scheduled_at, finished_at, outcome FROM attempts \
     WHERE task_id >= $1 AND task_id <= $2 ORDER BY task_id, number";

/// The fields of a spec a history keeps (the rest is never parsed).
#[derive(serde::Deserialize)]
struct Kept {
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    start_at: Option<Timestamp>,
    #[serde(default)]
    delay_seconds: Option<u32>,
}

/// A task row as a record (without its attempts).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    project: String,
    created_at: i64,
    cpu: i64,
    memory: i64,
    priority: i64,
    constraints: Option<&str>,
    spec: &str,
) -> Result<TaskRecord, crate::StoreError> {
    let kept: Kept = serde_json::from_str(spec).map_err(|e| crate::StoreError::Corrupt(format!("spec: {e}")))?;
    let constraints: Vec<String> = match constraints {
        Some(text) => serde_json::from_str(text).map_err(|e| crate::StoreError::Corrupt(format!("constraints: {e}")))?,
        None => Vec::new(),
    };
    let created = Timestamp(created_at);
    let delayed = kept.delay_seconds.map(|d| created.plus(std::time::Duration::from_secs(u64::from(d))));
    let at = kept.start_at.or(delayed).map_or(created, |at| at.max(created));
    Ok(TaskRecord {
        project,
        at: at.millis(),
        cpu: cpu.clamp(0, i64::from(u32::MAX)) as u32,
        memory: memory.clamp(0, i64::from(u32::MAX)) as u32,
        gpus: kept.gpus,
        priority: priority.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        constraints,
        pool: kept.pool,
        profile: kept.profile,
        attempts: Vec::new(),
    })
}

/// An attempt row as a record.
pub(crate) fn attempt(node: Option<String>, scheduled_at: i64, finished_at: Option<i64>, outcome: Option<String>) -> AttemptRecord {
    AttemptRecord { node: node.unwrap_or_default(), placed: scheduled_at, ended: finished_at, outcome }
}

/// The id window of tasks created in `[from, to)`: `(after, until)`, both
/// exclusive.
pub fn window(from: Timestamp, to: Timestamp) -> (TaskId, TaskId) {
    let id_at = |t: Timestamp| ulid::Ulid::from_parts(t.millis().max(0) as u64, 0);
    let after = id_at(from).0.saturating_sub(1);
    (TaskId(ulid::Ulid(after)), TaskId(id_at(to)))
}

/// Records a node's state in `node_history` with its capacity and labels
/// as the nodes table has them now (`$1` id, `$2` state, `$3` at): in the
/// transaction that changed it, so a replay knows the inventory over time
/// even of nodes since removed. A node found down went away with its last
/// heartbeat, not when the server noticed: a replay must not run tasks on
/// it in between.
pub(crate) const NODE_HISTORY_INSERT: &str =
    "INSERT INTO node_history (node_id, state, at, cpu_millicores, memory_mib, max_tasks, labels) \
     SELECT id, $2, CASE WHEN $2 = 'down' AND last_heartbeat_at < $3 THEN last_heartbeat_at ELSE $3 END, \
     cpu_millicores, memory_mib, max_tasks, labels FROM nodes WHERE id = $1";

/// Every node state recorded before `$1`, in order.
pub(crate) const NODE_HISTORY_SQL: &str = "SELECT node_id, state, at, CAST(cpu_millicores AS BIGINT), CAST(memory_mib AS BIGINT), \
     CAST(max_tasks AS BIGINT), labels FROM node_history WHERE at < $1 ORDER BY at, seq";

/// A `node_history` row as a record.
pub(crate) fn node_record(
    node: String,
    state: &str,
    at: i64,
    cpu: i64,
    memory: i64,
    max_tasks: i64,
    labels: &str,
) -> Result<shepherd_core::history::NodeRecord, crate::StoreError> {
    let clamp = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
    Ok(shepherd_core::history::NodeRecord {
        node,
        at,
        state: shepherd_core::history::NodeHistoryState::of(state),
        cpu: clamp(cpu),
        memory: clamp(memory),
        gpus: 0,
        max_tasks: clamp(max_tasks),
        labels: serde_json::from_str(labels).map_err(|e| crate::StoreError::Corrupt(format!("node labels: {e}")))?,
    })
}

/// Records a machine asked for (`$1` id, `$2` pool, `$3` asked): once.
pub(crate) const MACHINE_ASKED: &str =
    "INSERT INTO machine_history (machine_id, pool, asked) VALUES ($1, $2, $3) ON CONFLICT (machine_id) DO NOTHING";

/// Records when a machine's node joined (`$1` id, `$2` at): the first time.
pub(crate) const MACHINE_JOINED: &str = "UPDATE machine_history SET joined = $2 WHERE machine_id = $1 AND joined IS NULL";

/// Records a machine destroyed (`$1` id, `$2` at).
pub(crate) const MACHINE_GONE: &str = "UPDATE machine_history SET gone = $2 WHERE machine_id = $1 AND gone IS NULL";

/// Every machine asked for before `$1`, in order.
pub(crate) const MACHINE_HISTORY_SQL: &str =
    "SELECT machine_id, pool, asked, joined, gone FROM machine_history WHERE asked < $1 ORDER BY asked, machine_id";

//! Retention: finished tasks removed once they are older than their
//! project's retention, in small batches, their attempts' usage kept as
//! hourly sums (`usage_hours`), so that usage reports outlive the tasks.
//! The SQL here is shared by both stores (`$`-numbered parameters; SQLite
//! reads `$n` as `?n`).

use shepherd_core::{TaskId, Timestamp};

/// The most tasks one [`crate::Store::expired_tasks`] call returns and one
/// [`crate::Store::remove_tasks`] call removes: one short write each.
pub const MAX_BATCH: usize = 1_000;

/// The length of one `usage_hours` row, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// The store's size and its oldest task, for the retention metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSize {
    /// Bytes the store's data takes (SQLite: pages in use, WAL aside;
    /// PostgreSQL: `pg_database_size`).
    pub bytes: u64,
    /// When the oldest task still kept was created; `None` with no tasks.
    pub oldest_task: Option<Timestamp>,
}

/// The smallest task id made at or after `at`: a task created then or
/// later cannot have finished before it, so expired tasks sort below it.
pub fn id_bound(at: Timestamp) -> String {
    let millis = u64::try_from(at.millis().max(0)).unwrap_or(0);
    ulid::Ulid::from_parts(millis, 0).to_string()
}

/// When the task with this id was created (ids are ULIDs, their time first).
pub fn created_at(id: &TaskId) -> Timestamp {
    Timestamp(i64::try_from(id.0.timestamp_ms()).unwrap_or(i64::MAX))
}

/// A task that retention may remove: finished before `$4`, and (a child
/// of an array) its array finished before `$4` too, and no webhook still to
/// deliver. Used with the task's row as `t`.
const EXPIRED: &str = "t.state IN ('succeeded', 'failed', 'timed_out', 'cancelled') \
     AND COALESCE(t.finished_at, t.updated_at) < $4 \
     AND (t.array_id IS NULL OR EXISTS (SELECT 1 FROM arrays r WHERE r.id = t.array_id AND r.finished_at IS NOT NULL AND r.finished_at < $4)) \
     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.task_id = t.id AND w.state = 'pending')";

/// Expired tasks of project `$1` with ids after `$2` and below `$3`
/// ([`id_bound`] of `$4`), in id order, at most `$5`.
pub fn expired_sql() -> String {
    format!("SELECT t.id FROM tasks t WHERE t.project = $1 AND t.id > $2 AND t.id < $3 AND {EXPIRED} ORDER BY t.id LIMIT $5")
}

/// How a statement below picks its tasks by `$1`: one id (`"= $1"`,
/// SQLite, a statement per task) or many (`"= ANY($1)"`, PostgreSQL, a
/// statement per batch).
pub type Matching = &'static str;

/// Which of the tasks `$1` are still expired at `$2` (checked again in the
/// removing transaction: a task retried since it was listed stays), with
/// their arrays.
pub fn still_expired_sql(matching: Matching) -> String {
    format!("SELECT t.id, t.array_id FROM tasks t WHERE t.id {matching} AND {}", EXPIRED.replace("$4", "$2"))
}

/// Adds the attempts of tasks `$1` to the hourly usage sums (before they go).
pub fn roll_up_sql(matching: Matching) -> String {
    format!(
        "INSERT INTO usage_hours (project, hour, tasks, attempts, cpu_ms, memory_byte_ms, wall_ms) \
     SELECT t.project, (a.finished_at / {HOUR_MS}) * {HOUR_MS}, COUNT(DISTINCT a.task_id), COUNT(*), \
     CAST(COALESCE(SUM(a.cpu_ms), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CAST(a.peak_memory_bytes AS DOUBLE PRECISION) * (CASE WHEN a.finished_at > a.started_at THEN a.finished_at - a.started_at ELSE 0 END)), 0) AS DOUBLE PRECISION), \
     CAST(COALESCE(SUM(CASE WHEN a.finished_at > a.started_at THEN a.finished_at - a.started_at ELSE 0 END), 0) AS BIGINT) \
     FROM attempts a JOIN tasks t ON t.id = a.task_id \
     WHERE a.task_id {matching} AND a.finished_at IS NOT NULL AND a.started_at IS NOT NULL \
     GROUP BY t.project, (a.finished_at / {HOUR_MS}) * {HOUR_MS} \
     ON CONFLICT (project, hour) DO UPDATE SET tasks = usage_hours.tasks + excluded.tasks, \
     attempts = usage_hours.attempts + excluded.attempts, cpu_ms = usage_hours.cpu_ms + excluded.cpu_ms, \
     memory_byte_ms = usage_hours.memory_byte_ms + excluded.memory_byte_ms, wall_ms = usage_hours.wall_ms + excluded.wall_ms"
    )
}

/// What removes tasks `$1`, in order (their own rows last).
pub fn remove_sql(matching: Matching) -> Vec<String> {
    [
        "DELETE FROM task_logs WHERE task_id",
        "DELETE FROM attempts WHERE task_id",
        "DELETE FROM task_labels WHERE task_id",
        "DELETE FROM task_deps WHERE task_id",
        "DELETE FROM task_deps WHERE dep_id",
        "DELETE FROM webhook_attempts WHERE task_id",
        "DELETE FROM webhook_deliveries WHERE task_id",
        "DELETE FROM tasks WHERE id",
    ]
    .iter()
    .map(|head| format!("{head} {matching}"))
    .collect()
}

/// Removes arrays `$1` that finished before `$2` and have no child left.
pub fn remove_array_sql(matching: Matching) -> String {
    format!(
        "DELETE FROM arrays WHERE id {matching} AND finished_at IS NOT NULL AND finished_at < $2 \
     AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.array_id = arrays.id)"
    )
}

/// The oldest task kept (its id: ids sort by creation).
pub const OLDEST_SQL: &str = "SELECT MIN(id) FROM tasks";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_bound_sorts_between_ids_made_before_and_after() {
        let at = Timestamp(1_700_000_000_000);
        let before = TaskId(ulid::Ulid::from_parts(1_699_999_999_999, u128::MAX >> 48));
        let after = TaskId(ulid::Ulid::from_parts(1_700_000_000_000, 0));
        assert!(before.to_string() < id_bound(at));
        assert!(after.to_string() >= id_bound(at));
        assert_eq!(created_at(&after), at);
        assert_eq!(id_bound(Timestamp(-5)), ulid::Ulid::from_parts(0, 0).to_string());
    }
}

//! Retention (SQLite): expired tasks found on a reader, removed on the
//! writer in one short request per batch. The SQL is
//! [`crate::retention`]'s.

use crate::retention::{self, StoreSize};
use crate::StoreError;
use rusqlite::{Connection, OptionalExtension};
use shepherd_core::{TaskId, Timestamp};

fn sql(text: &str) -> String {
    text.replace('$', "?")
}

/// See [`crate::Store::expired_tasks`].
pub fn expired(
    conn: &Connection,
    project: &str,
    before: Timestamp,
    after: Option<TaskId>,
    limit: usize,
) -> Result<Vec<TaskId>, StoreError> {
    let after = after.map(|id| id.to_string()).unwrap_or_default();
    let limit = limit.clamp(1, retention::MAX_BATCH) as i64;
    let mut stmt = conn.prepare_cached(&sql(&retention::expired_sql()))?;
    let ids = stmt
        .query_map(rusqlite::params![project, after, retention::id_bound(before), before.millis(), limit], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    ids.iter().map(|id| super::rows::parse_id(id)).collect()
}

/// See [`crate::Store::remove_tasks`]; runs inside the writer's request,
/// a statement per task.
pub fn remove(conn: &Connection, ids: &[TaskId], before: Timestamp) -> Result<Vec<TaskId>, StoreError> {
    const ONE: retention::Matching = "= $1";
    let mut check = conn.prepare_cached(&sql(&retention::still_expired_sql(ONE)))?;
    let mut roll_up = conn.prepare_cached(&sql(&retention::roll_up_sql(ONE)))?;
    let removes = retention::remove_sql(ONE).iter().map(|s| sql(s)).collect::<Vec<_>>();
    let mut removed = Vec::with_capacity(ids.len());
    let mut arrays = std::collections::BTreeSet::new();
    for id in ids {
        let text = id.to_string();
        let Some(array) = check.query_row(rusqlite::params![text, before.millis()], |row| row.get::<_, Option<String>>(1)).optional()?
        else {
            continue;
        };
        roll_up.execute([&text])?;
        for statement in &removes {
            conn.prepare_cached(statement)?.execute([&text])?;
        }
        arrays.extend(array);
        removed.push(*id);
    }
    let mut remove_array = conn.prepare_cached(&sql(&retention::remove_array_sql(ONE)))?;
    for array in arrays {
        remove_array.execute(rusqlite::params![array, before.millis()])?;
    }
    Ok(removed)
}

/// See [`crate::Store::store_size`]: pages in use (free pages aside).
pub fn size(conn: &Connection) -> Result<StoreSize, StoreError> {
    let pragma = |name: &str| -> Result<i64, StoreError> { Ok(conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?) };
    let used = (pragma("page_count")? - pragma("freelist_count")?).max(0) * pragma("page_size")?;
    let oldest: Option<String> = conn.query_row(retention::OLDEST_SQL, [], |row| row.get(0))?;
    let oldest_task = oldest.map(|id| super::rows::parse_id(&id)).transpose()?.map(|id| retention::created_at(&id));
    Ok(StoreSize { bytes: used as u64, oldest_task })
}

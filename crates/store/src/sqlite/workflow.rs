//! Workflows on SQLite: submissions with arrays and dependencies, and
//! what a task's end does to its array and its dependents, in the
//! transaction that ends it (see [`crate::workflow`]).

use super::children::{make, skip_unmade, FollowUps, Maker};
use super::lifecycle::{array_state, finish_if_done, run_follow_ups, stop_array, unended_children};
use crate::workflow::{Entry, NewArray, Submission, Submitted, ARRAY_WINDOW, IDEMPOTENCY_TTL_MS};
use crate::{ApplyResult, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use shepherd_core::shape::ShapeKey;
use shepherd_core::workflow::dependency_failed;
use shepherd_core::{ClusterEvent, DependOn, Event, NewTask, TaskState, Timestamp};

/// What a dependency is, as found in the transaction.
enum Found {
    Task { state: TaskState },
    Array { state: String, size: i64 },
}

fn find(tx: &Connection, id: &str, project: &str) -> Result<Option<Found>, StoreError> {
    let task = tx
        .prepare_cached("SELECT project, state FROM tasks WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    if let Some((owner, state)) = task {
        return Ok((owner == project).then(|| super::rows::parse_state(&state)).transpose()?.map(|state| Found::Task { state }));
    }
    let array = tx
        .prepare_cached("SELECT project, state, size FROM arrays WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
        .optional()?;
    Ok(array.filter(|(owner, ..)| owner == project).map(|(_, state, size)| Found::Array { state, size }))
}

/// Stores a submission; runs in the writer's transaction. Dependents of
/// dependencies that already failed end at once (`cascade`).
pub(crate) fn submit(
    tx: &Connection,
    sub: &Submission,
    key: &ShapeKey,
    now: Timestamp,
    events: &mut Vec<ClusterEvent>,
    cascade: &mut Vec<ApplyResult>,
) -> Result<Submitted, StoreError> {
    if let Some(idem) = &sub.idempotency {
        let found = tx
            .prepare_cached("SELECT request, status, response, created_at FROM idempotency_keys WHERE project = ?1 AND key = ?2")?
            .query_row(params![idem.project, idem.key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u16>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })
            .optional()?;
        if let Some((request, status, response, at)) = found {
            if at > now.millis() - IDEMPOTENCY_TTL_MS {
                if request != idem.request {
                    return Err(StoreError::IdempotencyConflict(idem.key.clone()));
                }
                return Ok(Submitted::Replayed { status, response });
            }
            tx.prepare_cached("DELETE FROM idempotency_keys WHERE project = ?1 AND key = ?2")?.execute(params![idem.project, idem.key])?;
        }
    }
    let mut follow = FollowUps::new();
    for (index, entry) in sub.entries.iter().enumerate() {
        let spec = entry.spec();
        let mut waiting_on = 0i64;
        let mut failed: Option<String> = None;
        let mut each: Vec<String> = Vec::new();
        for (j, dep) in spec.depends_on.iter().enumerate() {
            let shepherd_core::DependencyTarget::Id(dep_id) = &dep.task else {
                return Err(StoreError::Invalid {
                    field: sub.field(index, &format!("depends_on[{j}].task")),
                    message: "unresolved position".into(),
                });
            };
            let field = sub.field(index, &format!("depends_on[{j}].task"));
            if *dep_id == entry.id().to_string() {
                return Err(StoreError::Invalid { field, message: "a task cannot depend on itself".into() });
            }
            let Some(found) = find(tx, dep_id, &spec.project)? else {
                return Err(StoreError::Invalid { field, message: format!("project `{}` has no task or array `{dep_id}`", spec.project) });
            };
            let end = match (&found, dep.on) {
                (Found::Array { size, .. }, DependOn::Each) => {
                    let own = spec.array.map_or(0, |a| i64::from(a.size));
                    if *size != own {
                        return Err(StoreError::Invalid {
                            field: sub.field(index, &format!("depends_on[{j}].on")),
                            message: format!("`each` pairs arrays of the same size: `{dep_id}` has {size} children, this one {own}"),
                        });
                    }
                    each.push(dep_id.clone());
                    continue;
                }
                (Found::Task { .. }, DependOn::Each) => {
                    return Err(StoreError::Invalid {
                        field: sub.field(index, &format!("depends_on[{j}].on")),
                        message: format!("`each` pairs the children of two arrays; `{dep_id}` is a task"),
                    });
                }
                (Found::Task { state }, _) => state.is_terminal().then_some(*state),
                (Found::Array { state, .. }, _) => array_state(state),
            };
            match end {
                None => waiting_on += 1,
                Some(end) if dep.on.satisfied_by(end) => {}
                Some(_) => {
                    failed.get_or_insert_with(|| dep_id.clone());
                }
            }
        }
        let id = entry.id().to_string();
        match entry {
            Entry::Task(task) => {
                let state = if waiting_on > 0 || failed.is_some() { TaskState::Waiting } else { TaskState::Queued };
                insert_task(tx, task, key, state, waiting_on)?;
                events.push(crate::workflow::created_event(task.id, &task.spec.project, state, task.created_at));
                if let Some(dep) = failed {
                    follow.push_back((task.id, Event::DependencyFailed { reason: dependency_failed(&dep) }));
                }
            }
            Entry::Array(array) => {
                // (No event per child: an array of 100,000 would be one
                // row of 100,000 events. Children show up as they change.)
                insert_array(tx, array, key, waiting_on, &each, failed.is_some(), &mut follow)?;
                if let Some(dep) = failed {
                    stop_array(tx, &id, &dependency_failed(&dep), now, &mut follow, cascade)?;
                }
            }
        }
        let mut insert = tx.prepare_cached("INSERT INTO task_deps (task_id, dep_id, cond) VALUES (?1, ?2, ?3)")?;
        for (dep_id, on) in crate::workflow::dep_rows(spec) {
            insert.execute(params![id, dep_id, on.as_str()])?;
        }
    }
    super::tenants::append_audit(tx, &sub.audit)?;
    if let Some(idem) = &sub.idempotency {
        tx.prepare_cached(
            "INSERT INTO idempotency_keys (project, key, request, status, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![idem.project, idem.key, idem.request, idem.status, idem.response, idem.at.millis()])?;
    }
    run_follow_ups(tx, follow, now, cascade)?;
    Ok(Submitted::Created)
}

fn insert_task(tx: &Connection, task: &NewTask, key: &ShapeKey, state: TaskState, waiting_on: i64) -> Result<(), StoreError> {
    super::writer::insert_tasks_as(tx, std::slice::from_ref(task), key, state, waiting_on)
}

/// Stores an array's row and makes its first children (none if it is
/// `doomed`: a dependency already failed, and it stops at once).
fn insert_array(
    tx: &Connection,
    array: &NewArray,
    key: &ShapeKey,
    waiting_on: i64,
    each: &[String],
    doomed: bool,
    follow: &mut FollowUps,
) -> Result<(), StoreError> {
    let spec = &array.spec;
    let settings = array.array();
    let id = array.id.to_string();
    let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let payload_bytes = array.payload.as_ref().map_or(0, |p| p.len() as i64);
    let running = waiting_on == 0 && !doomed;
    let shape = spec.placement_shape(key);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO arrays (id, project, spec, payload, payload_bytes, size, children, parallelism, fail_fast, state, \
             waiting_on, admitted, remaining, retry_of, created_at, made, first_child, indices, shape) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?7, ?12, ?13, 0, ?14, ?15, ?16)",
        )?
        .execute(params![
            id,
            spec.project,
            spec_json,
            array.payload,
            payload_bytes,
            settings.size,
            array.children.count,
            settings.parallelism,
            settings.failure_policy == shepherd_core::FailurePolicy::FailFast,
            if running { "running" } else { "waiting" },
            waiting_on,
            array.retry_of,
            array.created_at.millis(),
            array.children.first.to_string(),
            array.children.indices_text(),
            shape,
        ]);
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(StoreError::Duplicate(array.id))
        }
        other => other?,
    };
    // Its labels, once, under its id: a list by label finds its children.
    let mut label = tx.prepare_cached("INSERT INTO task_labels (task_id, key, value) VALUES (?1, ?2, ?3)")?;
    for (key, value) in &spec.labels {
        label.execute(params![id, key, value])?;
    }
    if doomed {
        return Ok(());
    }
    let maker = Maker {
        id: &id,
        spec,
        children: &array.children,
        made: 0,
        running,
        admitted: 0,
        each,
        shape,
        created_at: array.created_at,
        payload_bytes,
    };
    make(tx, &maker, ARRAY_WINDOW, follow)
}

/// Cancels every child of an array that has not ended (and so the array),
/// in one transaction; `None` if the project has no such array.
pub(crate) fn cancel_array(
    tx: &Connection,
    project: Option<&str>,
    array: &str,
    now: Timestamp,
    cascade: &mut Vec<ApplyResult>,
) -> Result<Option<()>, StoreError> {
    let owner: Option<String> =
        tx.prepare_cached("SELECT project FROM arrays WHERE id = ?1")?.query_row([array], |r| r.get(0)).optional()?;
    match owner {
        Some(owner) if project.is_none_or(|p| p == owner) => {}
        _ => return Ok(None),
    }
    let stopped = tx
        .prepare_cached("UPDATE arrays SET stopping = 1, reason = COALESCE(reason, 'cancelled by user') WHERE id = ?1 AND stopping = 0")?
        .execute([array])?;
    let mut follow = FollowUps::new();
    if stopped > 0 {
        skip_unmade(tx, array, &mut follow)?;
    }
    follow.extend(unended_children(tx, array)?.into_iter().map(|id| (id, Event::Cancel)));
    let mut all = Vec::new();
    run_follow_ups(tx, follow, now, &mut all)?;
    // An array with no child left to cancel (none made, or all ended) ends here.
    let mut follow = FollowUps::new();
    finish_if_done(tx, array, now, &mut follow, &mut all)?;
    run_follow_ups(tx, follow, now, &mut all)?;
    cascade.extend(all);
    Ok(Some(()))
}

const ARRAY_COLUMNS: &str =
    "id, project, spec, state, size, children, parallelism, fail_fast, reason, retry_of, created_at, finished_at, made, stopping";

/// An array's row as its status, counts filled in from its children.
fn array_status(conn: &Connection, row: &rusqlite::Row<'_>) -> Result<shepherd_core::ArrayStatus, StoreError> {
    let id: String = row.get(0)?;
    let spec: shepherd_core::TaskSpec =
        serde_json::from_str(&row.get::<_, String>(2)?).map_err(|e| StoreError::Corrupt(format!("array {id}: spec: {e}")))?;
    let mut counts: std::collections::BTreeMap<String, u64> = TaskState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM tasks WHERE array_id = ?1 GROUP BY state")?;
    let mut rows = stmt.query([&id])?;
    while let Some(r) = rows.next()? {
        counts.insert(r.get(0)?, r.get::<_, i64>(1)? as u64);
    }
    // Children not made yet: cancelled if the array stopped, else waiting
    // or (nothing holding them back but the queue's reach) queued.
    let unmade = row.get::<_, i64>(5)? - row.get::<_, i64>(12)?;
    if unmade > 0 {
        let state: String = row.get(3)?;
        let held = spec.array.is_some_and(|a| a.parallelism.is_some()) || spec.depends_on.iter().any(|d| d.on == DependOn::Each);
        let as_state = if row.get::<_, i64>(13)? != 0 {
            "cancelled"
        } else if state == "running" && !held {
            "queued"
        } else {
            "waiting"
        };
        *counts.entry(as_state.to_string()).or_default() += unmade as u64;
    }
    let failed_indices: Vec<u32> = conn
        .prepare_cached(
            "SELECT array_index FROM tasks WHERE array_id = ?1 AND state IN ('failed', 'timed_out') ORDER BY array_index LIMIT 1000",
        )?
        .query_map([&id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let state: String = row.get(3)?;
    let reason: Option<String> = row.get(8)?;
    let reason = if state == "waiting" {
        let left: i64 = conn.prepare_cached("SELECT waiting_on FROM arrays WHERE id = ?1")?.query_row([&id], |r| r.get(0))?;
        Some(format!("waiting for {left} of {} dependencies", spec.depends_on.iter().filter(|d| d.on != DependOn::Each).count()))
    } else {
        reason
    };
    Ok(shepherd_core::ArrayStatus {
        project: row.get(1)?,
        state,
        size: row.get(4)?,
        children: row.get(5)?,
        parallelism: row.get(6)?,
        failure_policy: if row.get::<_, i64>(7)? != 0 {
            shepherd_core::FailurePolicy::FailFast
        } else {
            shepherd_core::FailurePolicy::FinishAll
        },
        counts,
        failed_indices,
        reason,
        depends_on: spec.depends_on.clone(),
        retry_of: row.get(9)?,
        image: spec.image.clone(),
        command: spec.command.clone(),
        created_at: Timestamp(row.get(10)?),
        finished_at: row.get::<_, Option<i64>>(11)?.map(Timestamp),
        id,
    })
}

pub(crate) fn get_array(conn: &Connection, id: &str) -> Result<Option<shepherd_core::ArrayStatus>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {ARRAY_COLUMNS} FROM arrays WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(array_status(conn, row)?)),
        None => Ok(None),
    }
}

pub(crate) fn list_arrays(
    conn: &Connection,
    project: Option<&str>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<shepherd_core::ArrayStatus>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ARRAY_COLUMNS} FROM arrays WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
    ))?;
    let mut rows = stmt.query(params![project, before, limit.clamp(1, 1000) as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(array_status(conn, row)?);
    }
    Ok(out)
}

pub(crate) fn array_source(conn: &Connection, id: &str) -> Result<Option<crate::ArraySource>, StoreError> {
    let row: Option<(String, String, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT project, spec, payload FROM arrays WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((project, spec, payload)) = row else { return Ok(None) };
    let spec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("array {id}: spec: {e}")))?;
    let failed = conn
        .prepare_cached("SELECT array_index FROM tasks WHERE array_id = ?1 AND state IN ('failed', 'timed_out') ORDER BY array_index")?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(crate::ArraySource { project, spec, payload, failed }))
}

pub(crate) fn dependency_edges(conn: &Connection, id: &str, limit: usize) -> Result<Vec<(String, String, DependOn)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT task_id, dep_id, cond FROM task_deps WHERE task_id = ?1 UNION ALL \
         SELECT task_id, dep_id, cond FROM task_deps WHERE dep_id = ?1 LIMIT ?2",
    )?;
    let rows =
        stmt.query_map(params![id, limit as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (a, b, cond) = row?;
        out.push((a, b, DependOn::parse(&cond).ok_or_else(|| StoreError::Corrupt(format!("dependency condition `{cond}`")))?));
    }
    Ok(out)
}

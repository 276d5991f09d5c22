//! Lifecycle events on SQLite: each event through the one state machine
//! (`lifecycle::change_with`), then, in the same transaction, what the
//! change does beyond its task (see [`crate::workflow`]): a child's end
//! updates its array's counters, releases the next children under the
//! parallelism, stops a fail-fast array, ends the array with its last
//! child; an end (of a task or an array) queues the dependents whose last
//! dependency it was, or ends those that never can run, transitively.

use super::rows;
use crate::workflow::ArrayCounts;
use crate::{Applied, ApplyError, ApplyResult, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use shepherd_core::workflow::{array_end, dependency_failed};
use shepherd_core::{Change, DependOn, Event, LifecycleContext, TaskId, TaskState, Timestamp};

/// Applies events in order; with a `reporter`, only those about tasks whose
/// current attempt is on that node.
/// What the events did to tasks they did not name (their arrays' next
/// children, their dependents) comes back apart, as `cascade`.
pub(crate) fn apply_events(
    tx: &Connection,
    events: &[(TaskId, Event)],
    now: Timestamp,
    reporter: Option<&str>,
) -> Result<(Vec<ApplyResult>, Vec<ApplyResult>), StoreError> {
    let mut results = Vec::with_capacity(events.len());
    let mut follow = FollowUps::new();
    let mut cascade = Vec::new();
    for (id, event) in events {
        let (result, member) = apply_one(tx, *id, event, now, reporter)?;
        if let Ok(applied) = &result {
            after(tx, applied, member, now, &mut follow, &mut cascade)?;
        }
        results.push(result);
    }
    run_follow_ups(tx, follow, now, &mut cascade)?;
    Ok((results, cascade))
}

/// Applies one event to one task (nothing beyond it); with the task's
/// array and index if it is a child of one.
pub(crate) fn apply_one(
    tx: &Connection,
    id: TaskId,
    event: &Event,
    now: Timestamp,
    reporter: Option<&str>,
) -> Result<(ApplyResult, Option<(String, i64)>), StoreError> {
    let key = id.to_string();
    let mut select = tx.prepare_cached(
        "SELECT state, attempt, charged_attempts, max_attempts, backoff_seconds, cancel_requested, node_id, \
         project, created_at, started_at, array_id, array_index, retry_rules FROM tasks WHERE id = ?1",
    )?;
    let row = select
        .query_row([&key], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, u32>(4)?,
                row.get::<_, i64>(5)? != 0,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, Option<i64>>(9)?,
                row.get::<_, Option<String>>(10)?.zip(row.get::<_, Option<i64>>(11)?),
                row.get::<_, Option<String>>(12)?,
            ))
        })
        .optional()?;
    let Some((
        state,
        attempt,
        charged,
        max_attempts,
        backoff_seconds,
        cancel_requested,
        node_id,
        project,
        created_at,
        started_at,
        member,
        rules,
    )) = row
    else {
        return Ok((Err(ApplyError::NotFound(id)), None));
    };
    // A node reports only about its own attempts: never a placement or a
    // cancel request (events without an attempt), never another node's task.
    if reporter.is_some() && (event.attempt().is_none() || node_id.as_deref() != reporter) {
        return Ok((Err(ApplyError::NotOnNode(id)), None));
    }
    let ctx = LifecycleContext {
        state: rows::parse_state(&state)?,
        attempt,
        charged_attempts: charged,
        max_attempts,
        backoff_seconds,
        cancel_requested,
    };
    let rules = crate::workflow::parse_rules(rules.as_deref())?;
    let change = match shepherd_core::change_with(&ctx, &rules, node_id.as_deref(), event, now) {
        Ok(change) => change,
        Err(illegal) => return Ok((Err(ApplyError::Illegal(illegal)), None)),
    };
    // From here on, only what the lifecycle worked out is written.
    if let Some((number, node, at)) = &change.open_attempt {
        tx.prepare_cached("INSERT INTO attempts (task_id, number, node_id, scheduled_at) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
            key,
            number,
            node,
            at.millis()
        ])?;
    }
    if let Some((number, at, runtime)) = &change.start_attempt {
        tx.prepare_cached(
            "UPDATE attempts SET started_at = ?3, container = ?4, warm = ?5, image_digest = ?6 WHERE task_id = ?1 AND number = ?2",
        )?
        .execute(params![
            key,
            number,
            at.millis(),
            runtime.as_ref().map(|r| r.container.as_str()),
            runtime.as_ref().is_some_and(|r| r.warm),
            runtime.as_ref().and_then(|r| r.image_digest.as_deref())
        ])?;
    }
    if let Some(closed) = &change.close_attempt {
        tx.prepare_cached(
            "UPDATE attempts SET finished_at = ?3, outcome = ?4, exit_code = ?5, reason = ?6, cpu_ms = ?7, peak_memory_bytes = ?8, \
             result = ?9 WHERE task_id = ?1 AND number = ?2",
        )?
        .execute(params![
            key,
            closed.number,
            closed.finished_at.millis(),
            closed.outcome.as_str(),
            closed.exit_code,
            closed.reason,
            closed.usage.map(|u| u.cpu_ms.min(crate::MAX_USAGE) as i64),
            closed.usage.map(|u| u.peak_memory_bytes.min(crate::MAX_USAGE) as i64),
            closed.result,
        ])?;
    }
    tx.prepare_cached(
        "UPDATE tasks SET state = ?2, attempt = ?3, charged_attempts = ?4, cancel_requested = ?5, not_before = ?6, node_id = ?7, \
         exit_code = COALESCE(?8, exit_code), reason = COALESCE(?9, reason), scheduled_at = COALESCE(?10, scheduled_at), \
         started_at = COALESCE(?11, started_at), finished_at = COALESCE(?12, finished_at), updated_at = ?13, \
         progress_percent = CASE WHEN ?2 <> 'scheduled' AND progress_message LIKE 'pulling image:%' THEN NULL ELSE progress_percent END, \
         progress_message = CASE WHEN ?2 <> 'scheduled' AND progress_message LIKE 'pulling image:%' THEN NULL ELSE progress_message END \
         WHERE id = ?1",
    )?
    .execute(params![
        key,
        change.state.as_str(),
        change.attempt,
        change.charged_attempts,
        i64::from(change.cancel_requested),
        change.not_before.millis(),
        change.node_id,
        change.exit_code,
        change.reason,
        change.scheduled_at.map(Timestamp::millis),
        change.started_at.map(Timestamp::millis),
        change.finished_at.map(Timestamp::millis),
        change.updated_at.millis(),
    ])?;
    if change.state == TaskState::Queued && ctx.state != TaskState::Queued {
        tracing::debug!(task = %id, attempt = change.attempt, "attempt ended; task queued again");
    }
    let started_at = change.started_at.or(started_at.map(Timestamp));
    let Change { decision, attempt, node_id, updated_at, .. } = change;
    let applied = Applied {
        task_id: id,
        from: ctx.state,
        decision,
        attempt,
        node_id,
        project,
        created_at: Timestamp(created_at),
        started_at,
        at: updated_at,
    };
    Ok((Ok(applied), member))
}

pub(crate) use super::children::FollowUps;

/// An array's end as a task state (`None` while it has not ended).
pub(crate) fn array_state(state: &str) -> Option<TaskState> {
    match state {
        "succeeded" => Some(TaskState::Succeeded),
        "failed" => Some(TaskState::Failed),
        "cancelled" => Some(TaskState::Cancelled),
        _ => None,
    }
}

fn counts(tx: &Connection, array: &str) -> Result<Option<ArrayCounts>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT children, succeeded, failed, remaining, admitted, waiting_on, parallelism, fail_fast, stopping, state \
             FROM arrays WHERE id = ?1",
        )?
        .query_row([array], |r| {
            Ok((
                ArrayCounts {
                    children: r.get(0)?,
                    succeeded: r.get(1)?,
                    failed: r.get(2)?,
                    remaining: r.get(3)?,
                    admitted: r.get(4)?,
                    parallelism: r.get(6)?,
                    fail_fast: r.get::<_, i64>(7)? != 0,
                    stopping: r.get::<_, i64>(8)? != 0,
                },
                r.get::<_, String>(9)?,
            ))
        })
        .optional()?
        .map(|(c, _)| c))
}

/// Moves waiting children of a running array whose own dependencies are
/// met to the queue, lowest index first, up to its parallelism.
fn release_array(tx: &Connection, array: &str, now: Timestamp, cascade: &mut Vec<ApplyResult>) -> Result<(), StoreError> {
    let state: Option<String> = tx.prepare_cached("SELECT state FROM arrays WHERE id = ?1")?.query_row([array], |r| r.get(0)).optional()?;
    let Some(c) = counts(tx, array)? else { return Ok(()) };
    if state.as_deref() != Some("running") || c.stopping {
        return Ok(());
    }
    let room = c.parallelism.map_or(i64::MAX, |p| p - c.admitted);
    if room <= 0 {
        return Ok(());
    }
    let ids: Vec<String> = tx
        .prepare_cached("SELECT id FROM tasks WHERE array_id = ?1 AND state = 'waiting' AND waiting_on = 0 ORDER BY array_index LIMIT ?2")?
        .query_map(params![array, room.min(1 << 40)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(());
    }
    tx.prepare_cached("UPDATE arrays SET admitted = admitted + ?2 WHERE id = ?1")?.execute(params![array, ids.len() as i64])?;
    for id in ids {
        let (result, _) = apply_one(tx, rows::parse_id(&id)?, &Event::Release, now, None)?;
        cascade.push(result);
    }
    Ok(())
}

/// Stops an array: no more children are released or made; those not yet
/// on a node end (`reason`), those on one are stopped, those never made
/// count as cancelled. The array ends cancelled if no child failed, failed
/// otherwise (now, if no child it made is left to end).
pub(crate) fn stop_array(
    tx: &Connection,
    array: &str,
    reason: &str,
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let changed = tx
        .prepare_cached("UPDATE arrays SET stopping = 1, reason = COALESCE(reason, ?2) WHERE id = ?1 AND stopping = 0")?
        .execute(params![array, reason])?;
    if changed == 0 {
        return Ok(());
    }
    super::children::skip_unmade(tx, array, follow)?;
    for id in unended_children(tx, array)? {
        follow.push_back((id, Event::DependencyFailed { reason: reason.to_string() }));
    }
    finish_if_done(tx, array, now, follow, cascade)
}

/// The children of an array that have not ended, by index.
pub(crate) fn unended_children(tx: &Connection, array: &str) -> Result<Vec<TaskId>, StoreError> {
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM tasks WHERE array_id = ?1 AND state IN ('waiting', 'queued', 'scheduled', 'running') ORDER BY array_index",
        )?
        .query_map([array], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter().map(|id| rows::parse_id(id)).collect()
}

/// Ends an array whose children have all ended (and tells its
/// dependents), unless it has ended already.
pub(crate) fn finish_if_done(
    tx: &Connection,
    array: &str,
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let Some(c) = counts(tx, array)? else { return Ok(()) };
    if c.remaining > 0 {
        return Ok(());
    }
    let state: Option<String> = tx.prepare_cached("SELECT state FROM arrays WHERE id = ?1")?.query_row([array], |r| r.get(0)).optional()?;
    if array_state(state.as_deref().unwrap_or("")).is_some() {
        return Ok(());
    }
    let end = array_end(c.children as u64, c.succeeded as u64, c.failed as u64, c.stopping);
    tx.prepare_cached("UPDATE arrays SET state = ?2, finished_at = ?3 WHERE id = ?1")?.execute(params![
        array,
        end.as_str(),
        now.millis()
    ])?;
    ended(tx, array, end, now, follow, cascade)
}

/// Waiting or queued: not yet on a node, not ended.
fn pending(state: TaskState) -> bool {
    matches!(state, TaskState::Waiting | TaskState::Queued)
}

/// What a change does beyond its task: its array's counts and the next
/// children, its dependents. Runs in the transaction of the change.
pub(crate) fn after(
    tx: &Connection,
    applied: &crate::Applied,
    member: Option<(String, i64)>,
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let to = applied.decision.to;
    // A child that left the queue may make room for the next ones.
    let left_queue = pending(applied.from) && !pending(to);
    if !to.is_terminal() {
        if let (Some((array, _)), true) = (&member, left_queue) {
            super::children::top_up(tx, array, applied.task_id, follow)?;
        }
        return Ok(());
    }
    let id = applied.task_id.to_string();
    if let Some((array, index)) = member {
        let was_admitted = applied.from != TaskState::Waiting;
        tx.prepare_cached(
            "UPDATE arrays SET remaining = remaining - 1, admitted = admitted - ?2, succeeded = succeeded + ?3, \
             failed = failed + ?4, cancelled = cancelled + ?5 WHERE id = ?1",
        )?
        .execute(params![
            array,
            i64::from(was_admitted),
            i64::from(to == TaskState::Succeeded),
            i64::from(matches!(to, TaskState::Failed | TaskState::TimedOut)),
            i64::from(to == TaskState::Cancelled),
        ])?;
        // `each`: the same index of the arrays that pair with this one.
        let pairs: Vec<String> = tx
            .prepare_cached("SELECT task_id FROM task_deps WHERE dep_id = ?1 AND cond = 'each'")?
            .query_map([&array], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for other in pairs {
            let child: Option<String> = tx
                .prepare_cached("SELECT id FROM tasks WHERE array_id = ?1 AND array_index = ?2 AND state = 'waiting'")?
                .query_row(params![other, index], |r| r.get(0))
                .optional()?;
            // (One not made yet looks for this one when it is made.)
            let Some(child) = child else { continue };
            if DependOn::Each.satisfied_by(to) {
                tx.prepare_cached("UPDATE tasks SET waiting_on = waiting_on - 1 WHERE id = ?1")?.execute([&child])?;
                release_array(tx, &other, now, cascade)?;
            } else {
                follow.push_back((rows::parse_id(&child)?, Event::DependencyFailed { reason: dependency_failed(&id) }));
            }
        }
        if let Some(c) = counts(tx, &array)? {
            if matches!(to, TaskState::Failed | TaskState::TimedOut) && c.fail_fast {
                stop_array(tx, &array, &format!("array_failed: index {index} ({id}) {to}"), now, follow, cascade)?;
            }
        }
        finish_if_done(tx, &array, now, follow, cascade)?;
        release_array(tx, &array, now, cascade)?;
        if left_queue {
            super::children::top_up(tx, &array, applied.task_id, follow)?;
        }
    }
    ended(tx, &id, to, now, follow, cascade)
}

/// Tells the dependents of `id` (a task or an array) that it ended `end`.
fn ended(
    tx: &Connection,
    id: &str,
    end: TaskState,
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let dependents: Vec<(String, String)> = tx
        .prepare_cached("SELECT task_id, cond FROM task_deps WHERE dep_id = ?1 AND cond <> 'each'")?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (dependent, cond) in dependents {
        let on = DependOn::parse(&cond).ok_or_else(|| StoreError::Corrupt(format!("dependency condition `{cond}`")))?;
        let ok = on.satisfied_by(end);
        let array: Option<(String, i64)> = tx
            .prepare_cached("SELECT state, waiting_on FROM arrays WHERE id = ?1")?
            .query_row([&dependent], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match (array, ok) {
            (Some((state, _)), true) => {
                if state == "waiting" {
                    tx.prepare_cached(
                        "UPDATE arrays SET waiting_on = waiting_on - 1, state = CASE WHEN waiting_on <= 1 THEN 'running' ELSE state END WHERE id = ?1",
                    )?
                    .execute([&dependent])?;
                    release_array(tx, &dependent, now, cascade)?;
                }
            }
            (Some(_), false) => stop_array(tx, &dependent, &dependency_failed(id), now, follow, cascade)?,
            (None, true) => {
                let left: Option<i64> = tx
                    .prepare_cached(
                        "UPDATE tasks SET waiting_on = waiting_on - 1 WHERE id = ?1 AND state = 'waiting' RETURNING waiting_on",
                    )?
                    .query_row([&dependent], |r| r.get(0))
                    .optional()?;
                if left == Some(0) {
                    let (result, _) = apply_one(tx, rows::parse_id(&dependent)?, &Event::Release, now, None)?;
                    cascade.push(result);
                }
            }
            (None, false) => {
                follow.push_back((rows::parse_id(&dependent)?, Event::DependencyFailed { reason: dependency_failed(id) }));
            }
        }
    }
    Ok(())
}

/// Applies queued follow-ups (and theirs) in the same transaction.
pub(crate) fn run_follow_ups(
    tx: &Connection,
    mut follow: FollowUps,
    now: Timestamp,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    while let Some((id, event)) = follow.pop_front() {
        let (result, member) = apply_one(tx, id, &event, now, None)?;
        if let Ok(applied) = &result {
            after(tx, applied, member, now, &mut follow, cascade)?;
        }
        // A dependent that ended meanwhile (a cancel that raced) is no news.
        if result.is_ok() {
            cascade.push(result);
        }
    }
    Ok(())
}

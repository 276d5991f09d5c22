//! What a task's end does beyond it on PostgreSQL, in the transaction
//! that ends it (see [`crate::workflow`]; SQLite's `sqlite/workflow.rs`
//! is the same bookkeeping one event at a time): its array's counts, the
//! array's next children under its parallelism, a fail-fast array's stop,
//! its dependents released or ended (`dependency_failed`), transitively.
//!
//! [`after_all`] runs after a batch's own writes. The hooks take the
//! batch's ends together: each array's children at once, the dependents
//! of every task that ended in one read. The events they make (releases,
//! dependency failures) are applied with
//! [`apply_set`](super::lifecycle::apply_set) a wave at a time, and each
//! wave's own ends run through the hooks again until none is left: a
//! cascade through a thousand dependents, or the cancel of an array of
//! 100,000 children, costs a few statements per level of the graph and
//! per array, not per task.
//!
//! Locks: a batch locks its tasks first (in id order), then the arrays of
//! those that ended (in id order), then what it releases or ends. A
//! submission takes a share lock on every dependency it reads, so a
//! dependency cannot end unnoticed between that read and the commit. Two
//! transactions may still wait on each other crosswise (an array's
//! children ended in one, the same array cancelled in another): PostgreSQL
//! breaks the deadlock and the loser fails with
//! [`StoreError::Conflict`], to be tried again.

use super::lifecycle::{apply_set, BatchEvent, Member};
use super::sql::{error, parse_id};
use crate::{Applied, ApplyResult, StoreError};
use deadpool_postgres::Transaction;
use shepherd_core::workflow::{array_end, dependency_failed};
use shepherd_core::{DependOn, Event, TaskId, TaskState, Timestamp};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Events the hooks queue for the same transaction: a dependent to end.
pub(super) type FollowUps = VecDeque<(TaskId, Event)>;

/// An array's end as a task state (`None` while it has not ended).
pub(super) fn array_state(state: &str) -> Option<TaskState> {
    match state {
        "succeeded" => Some(TaskState::Succeeded),
        "failed" => Some(TaskState::Failed),
        "cancelled" => Some(TaskState::Cancelled),
        _ => None,
    }
}

/// Runs the hooks for what a batch changed, then every event they make,
/// in the batch's transaction; what those events changed goes to `cascade`.
pub(super) async fn after_all(
    tx: &Transaction<'_>,
    applied: &[(ApplyResult, Option<Member>)],
    now: Timestamp,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let mut follow = FollowUps::new();
    hooks(tx, applied, now, &mut follow, cascade).await?;
    run_follow_ups(tx, follow, now, cascade).await
}

/// Applies queued follow-ups (and theirs) in the same transaction, a wave
/// at a time; those that changed their task go to `cascade`.
pub(super) async fn run_follow_ups(
    tx: &Transaction<'_>,
    mut follow: FollowUps,
    now: Timestamp,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    while !follow.is_empty() {
        let wave: Vec<(TaskId, Event)> = follow.drain(..).collect();
        let batch: Vec<BatchEvent<'_>> = wave.iter().map(|(id, event)| (*id, event, now, None)).collect();
        let applied = apply_set(tx, &batch).await?;
        hooks(tx, &applied, now, &mut follow, cascade).await?;
        // A dependent that ended meanwhile (a cancel that raced, or two
        // failed dependencies in one wave) is no news.
        cascade.extend(applied.into_iter().map(|(result, _)| result).filter(Result::is_ok));
    }
    Ok(())
}

/// The hooks of the changes that ended their tasks: first each array's
/// children together (its counts once, its `each` pairs, its stop or its
/// end, its next children), then every dependent of the tasks and arrays
/// that ended. Each costs a few statements per array and per batch, not
/// per task; the end is the one that taking the changes one at a time
/// (as SQLite does) would reach.
async fn hooks(
    tx: &Transaction<'_>,
    applied: &[(ApplyResult, Option<Member>)],
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    let mut ends: Vec<(String, TaskState)> = Vec::new();
    let mut arrays: BTreeMap<&str, Vec<(&Applied, i64)>> = BTreeMap::new();
    for (result, member) in applied {
        let Ok(applied) = result else { continue };
        if !applied.decision.to.is_terminal() {
            continue;
        }
        ends.push((applied.task_id.to_string(), applied.decision.to));
        if let Some((array, index)) = member {
            arrays.entry(array.as_str()).or_default().push((applied, *index));
        }
    }
    if !arrays.is_empty() {
        // Locked in id order: two batches ending children of the same
        // arrays never wait on each other crosswise.
        let ids: Vec<&str> = arrays.keys().copied().collect();
        let lock = tx.prepare_cached("SELECT 1 FROM arrays WHERE id = ANY($1) ORDER BY id FOR UPDATE").await.map_err(error)?;
        tx.query(&lock, &[&ids]).await.map_err(error)?;
    }
    for (array, children) in arrays {
        if let Some(end) = children_ended(tx, array, &children, now, follow, cascade).await? {
            ends.push((array.to_string(), end));
        }
    }
    ended(tx, &ends, now, follow, cascade).await
}

/// What children of one array that ended do to it: its counts, the same
/// index of the arrays paired with it (`each`), its stop (fail fast), and
/// its end once no child is left (returned), or else its next children.
async fn children_ended(
    tx: &Transaction<'_>,
    array: &str,
    children: &[(&Applied, i64)],
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<Option<TaskState>, StoreError> {
    let is_failed = |to: TaskState| matches!(to, TaskState::Failed | TaskState::TimedOut);
    let count = |f: &dyn Fn(&Applied) -> bool| children.iter().filter(|(a, _)| f(a)).count() as i64;
    let update = tx
        .prepare_cached(
            "UPDATE arrays SET remaining = remaining - $2, admitted = admitted - $3, succeeded = succeeded + $4, \
             failed = failed + $5, cancelled = cancelled + $6 WHERE id = $1 \
             RETURNING children, succeeded, failed, remaining, fail_fast, stopping, state",
        )
        .await
        .map_err(error)?;
    let counts = tx
        .query_opt(
            &update,
            &[
                &array,
                &(children.len() as i64),
                &count(&|a| a.from != TaskState::Waiting),
                &count(&|a| a.decision.to == TaskState::Succeeded),
                &count(&|a| is_failed(a.decision.to)),
                &count(&|a| a.decision.to == TaskState::Cancelled),
            ],
        )
        .await
        .map_err(error)?;
    // `each`: the same index of the arrays that pair with this one.
    let pairs = tx.prepare_cached("SELECT task_id FROM task_deps WHERE dep_id = $1 AND cond = 'each'").await.map_err(error)?;
    let pairs: Vec<String> = tx.query(&pairs, &[&array]).await.map_err(error)?.iter().map(|r| r.get(0)).collect();
    if !pairs.is_empty() {
        let by_index: HashMap<i64, &Applied> = children.iter().map(|(a, index)| (*index, *a)).collect();
        let indexes: Vec<i64> = by_index.keys().copied().collect();
        let waiting = tx
            .prepare_cached("SELECT id, array_index FROM tasks WHERE array_id = $1 AND array_index = ANY($2) AND state = 'waiting'")
            .await
            .map_err(error)?;
        for other in pairs {
            let mut met = Vec::new();
            for row in tx.query(&waiting, &[&other, &indexes]).await.map_err(error)? {
                let (child, index): (String, i64) = (row.get(0), row.get(1));
                let Some(ended) = by_index.get(&index) else { continue };
                if DependOn::Each.satisfied_by(ended.decision.to) {
                    met.push(child);
                } else {
                    follow
                        .push_back((parse_id(&child)?, Event::DependencyFailed { reason: dependency_failed(&ended.task_id.to_string()) }));
                }
            }
            if !met.is_empty() {
                tx.execute("UPDATE tasks SET waiting_on = waiting_on - 1 WHERE id = ANY($1)", &[&met]).await.map_err(error)?;
                release_array(tx, &other, now, cascade).await?;
            }
        }
    }
    let Some(c) = counts else { return Ok(None) };
    let (total, succeeded, failed, remaining): (i64, i64, i64, i64) = (c.get(0), c.get(1), c.get(2), c.get(3));
    let (fail_fast, stopping, state): (bool, bool, String) = (c.get(4), c.get(5), c.get(6));
    if fail_fast {
        if let Some((first, index)) = children.iter().find(|(a, _)| is_failed(a.decision.to)) {
            let reason = format!("array_failed: index {index} ({}) {}", first.task_id, first.decision.to);
            stop_array(tx, array, &reason, follow).await?;
        }
    }
    if remaining > 0 {
        release_array(tx, array, now, cascade).await?;
        return Ok(None);
    }
    if array_state(&state).is_some() {
        return Ok(None);
    }
    let end = array_end(total.max(0) as u64, succeeded.max(0) as u64, failed.max(0) as u64, stopping);
    tx.execute("UPDATE arrays SET state = $2, finished_at = $3 WHERE id = $1", &[&array, &end.as_str(), &now.millis()])
        .await
        .map_err(error)?;
    Ok(Some(end))
}

/// Tells the dependents of tasks and arrays that ended (`ends`: id, how)
/// what that means for them: one more dependency met, or one that never
/// can be.
async fn ended(
    tx: &Transaction<'_>,
    ends: &[(String, TaskState)],
    now: Timestamp,
    follow: &mut FollowUps,
    cascade: &mut Vec<ApplyResult>,
) -> Result<(), StoreError> {
    if ends.is_empty() {
        return Ok(());
    }
    let how: HashMap<&str, TaskState> = ends.iter().map(|(id, end)| (id.as_str(), *end)).collect();
    let ids: Vec<&str> = how.keys().copied().collect();
    let stmt = tx
        .prepare_cached(
            "SELECT d.dep_id, d.task_id, d.cond, a.state FROM task_deps d LEFT JOIN arrays a ON a.id = d.task_id \
             WHERE d.dep_id = ANY($1) AND d.cond <> 'each' ORDER BY d.task_id, d.dep_id",
        )
        .await
        .map_err(error)?;
    // Dependents and how many of their dependencies were met, tasks and
    // waiting arrays apart.
    let (mut tasks, mut arrays): (BTreeMap<String, i64>, BTreeMap<String, i64>) = (BTreeMap::new(), BTreeMap::new());
    for row in tx.query(&stmt, &[&ids]).await.map_err(error)? {
        let (id, dependent, cond, array): (String, String, String, Option<String>) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let on = DependOn::parse(&cond).ok_or_else(|| StoreError::Corrupt(format!("dependency condition `{cond}`")))?;
        let Some(end) = how.get(id.as_str()) else { continue };
        match (array, on.satisfied_by(*end)) {
            (Some(state), true) => {
                if state == "waiting" {
                    *arrays.entry(dependent).or_default() += 1;
                }
            }
            (Some(_), false) => stop_array(tx, &dependent, &dependency_failed(&id), follow).await?,
            (None, true) => *tasks.entry(dependent).or_default() += 1,
            (None, false) => follow.push_back((parse_id(&dependent)?, Event::DependencyFailed { reason: dependency_failed(&id) })),
        }
    }
    for (array, met) in arrays {
        let changed = tx
            .execute(
                "UPDATE arrays SET waiting_on = waiting_on - $2, \
                 state = CASE WHEN waiting_on <= $2 THEN 'running' ELSE state END WHERE id = $1 AND state = 'waiting'",
                &[&array, &met],
            )
            .await
            .map_err(error)?;
        if changed > 0 {
            release_array(tx, &array, now, cascade).await?;
        }
    }
    if tasks.is_empty() {
        return Ok(());
    }
    // The tasks among them with nothing left to wait for join the queue.
    let stmt = tx
        .prepare_cached(
            "UPDATE tasks t SET waiting_on = t.waiting_on - u.met FROM UNNEST($1::text[], $2::bigint[]) AS u(id, met) \
             WHERE t.id = u.id AND t.state = 'waiting' RETURNING t.id, t.waiting_on",
        )
        .await
        .map_err(error)?;
    let (ids, met): (Vec<String>, Vec<i64>) = tasks.into_iter().unzip();
    let mut ready = Vec::new();
    for row in tx.query(&stmt, &[&ids, &met]).await.map_err(error)? {
        if row.get::<_, i64>(1) <= 0 {
            ready.push(parse_id(row.get::<_, &str>(0))?);
        }
    }
    ready.sort_unstable();
    release(tx, &ready, now, cascade).await?;
    Ok(())
}

/// Moves waiting tasks to the queue; those that moved go to `cascade`.
/// How many moved.
async fn release(tx: &Transaction<'_>, ids: &[TaskId], now: Timestamp, cascade: &mut Vec<ApplyResult>) -> Result<i64, StoreError> {
    let batch: Vec<BatchEvent<'_>> = ids.iter().map(|id| (*id, &Event::Release, now, None)).collect();
    let before = cascade.len();
    // A release is not an end: no hook follows it.
    cascade.extend(apply_set(tx, &batch).await?.into_iter().map(|(result, _)| result).filter(Result::is_ok));
    Ok((cascade.len() - before) as i64)
}

/// Moves waiting children of a running array whose own dependencies are
/// met to the queue, lowest index first, up to its parallelism.
async fn release_array(tx: &Transaction<'_>, array: &str, now: Timestamp, cascade: &mut Vec<ApplyResult>) -> Result<(), StoreError> {
    let stmt =
        tx.prepare_cached("SELECT state, stopping, parallelism, admitted FROM arrays WHERE id = $1 FOR UPDATE").await.map_err(error)?;
    let Some(row) = tx.query_opt(&stmt, &[&array]).await.map_err(error)? else { return Ok(()) };
    let (state, stopping, parallelism, admitted): (String, bool, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    if state != "running" || stopping {
        return Ok(());
    }
    let room = parallelism.map_or(i64::MAX, |p| p - admitted);
    if room <= 0 {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached("SELECT id FROM tasks WHERE array_id = $1 AND state = 'waiting' AND waiting_on = 0 ORDER BY array_index LIMIT $2")
        .await
        .map_err(error)?;
    let ids: Vec<TaskId> = tx
        .query(&stmt, &[&array, &room.min(1 << 40)])
        .await
        .map_err(error)?
        .iter()
        .map(|r| parse_id(r.get(0)))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(());
    }
    // Only those that moved take a place (one cancelled meanwhile does not).
    let moved = release(tx, &ids, now, cascade).await?;
    tx.execute("UPDATE arrays SET admitted = admitted + $2 WHERE id = $1", &[&array, &moved]).await.map_err(error)?;
    Ok(())
}

/// Stops an array: no more children are released; those not yet on a
/// node end (`reason`), those on one are stopped.
pub(super) async fn stop_array(tx: &Transaction<'_>, array: &str, reason: &str, follow: &mut FollowUps) -> Result<(), StoreError> {
    let changed = tx
        .execute("UPDATE arrays SET stopping = true, reason = COALESCE(reason, $2) WHERE id = $1 AND NOT stopping", &[&array, &reason])
        .await
        .map_err(error)?;
    if changed == 0 {
        return Ok(());
    }
    for id in unended_children(tx, array).await? {
        follow.push_back((id, Event::DependencyFailed { reason: reason.to_string() }));
    }
    Ok(())
}

/// The children of an array that have not ended, by index.
async fn unended_children(tx: &Transaction<'_>, array: &str) -> Result<Vec<TaskId>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT id FROM tasks WHERE array_id = $1 AND state IN ('waiting', 'queued', 'scheduled', 'running') ORDER BY array_index",
        )
        .await
        .map_err(error)?;
    tx.query(&stmt, &[&array]).await.map_err(error)?.iter().map(|r| parse_id(r.get(0))).collect()
}

/// Cancels every child of an array that has not ended (and so the array),
/// in one transaction; `None` if the project has no such array. What
/// changed goes to `cascade`: the children first, then what their ends did.
pub(super) async fn cancel_array(
    tx: &Transaction<'_>,
    project: Option<&str>,
    array: &str,
    now: Timestamp,
    cascade: &mut Vec<ApplyResult>,
) -> Result<Option<()>, StoreError> {
    let owner = tx.query_opt("SELECT project FROM arrays WHERE id = $1", &[&array]).await.map_err(error)?;
    match owner.map(|r| r.get::<_, String>(0)) {
        Some(owner) if project.is_none_or(|p| p == owner) => {}
        _ => return Ok(None),
    }
    // The children are locked before the array, as in a batch that ends
    // some of them.
    let ids = unended_children(tx, array).await?;
    let batch: Vec<BatchEvent<'_>> = ids.iter().map(|id| (*id, &Event::Cancel, now, None)).collect();
    let applied = apply_set(tx, &batch).await?;
    tx.execute("UPDATE arrays SET stopping = true, reason = COALESCE(reason, 'cancelled by user') WHERE id = $1", &[&array])
        .await
        .map_err(error)?;
    // A child that ended meanwhile is no news.
    cascade.extend(applied.iter().map(|(result, _)| result.clone()).filter(Result::is_ok));
    after_all(tx, &applied, now, cascade).await?;
    Ok(Some(()))
}

//! Lifecycle events on PostgreSQL, set at a time: the tasks the events
//! name and nothing beyond them.
//!
//! [`apply_set`] locks every task a batch names with one query (in id
//! order, so two batches never deadlock), runs each event through
//! `shepherd_core::change_with` in memory, in the order given, and writes
//! what they changed with three or four statements whatever the batch's
//! size: new attempts, changed attempts and changed tasks, each one `UNNEST`
//! of arrays. Event by event it was three round trips per event.
//! `super::apply` adds the workflow bookkeeping and group commit on top.

use super::sql::{error, parse_state};
use crate::{Applied, ApplyError, ApplyResult, StoreError};
use shepherd_core::{ClosedAttempt, Event, LifecycleContext, TaskId, Timestamp};
use std::collections::HashMap;

/// A task as the batch has changed it so far.
struct Current {
    ctx: LifecycleContext,
    node_id: Option<String>,
    project: String,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    /// Its array and index, a child of one.
    member: Option<Member>,
    /// Its retry rules by outcome.
    rules: Vec<shepherd_core::RetryRule>,
}

/// A child's array and index.
pub(super) type Member = (String, i64);

/// An attempt row a batch writes.
#[derive(Default)]
struct AttemptWrite {
    /// Opened in this batch: inserted whole.
    opened: Option<(String, Timestamp)>,
    started_at: Option<Timestamp>,
    runtime: Option<shepherd_core::AttemptRuntime>,
    closed: Option<ClosedAttempt>,
}

/// One event of a batch: the task, the event, its `now`, and the node
/// that reported it (if one did: the task's current attempt must be there).
pub(super) type BatchEvent<'a> = (TaskId, &'a Event, Timestamp, Option<&'a str>);

/// Applies events to the tasks they name, and nothing beyond them, in the
/// order given: one result per event, in order, each with the task's array
/// and index if it is a child of one. Records nothing in the event stream.
pub(super) async fn apply_set(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[BatchEvent<'_>],
) -> Result<Vec<(ApplyResult, Option<Member>)>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<String> = events.iter().map(|(id, ..)| id.to_string()).collect();
    keys.sort_unstable();
    keys.dedup();
    let select = tx
        .prepare_cached(
            "SELECT id, state, attempt, charged_attempts, max_attempts, backoff_seconds, cancel_requested, node_id, \
             project, created_at, started_at, array_id, array_index, retry_rules FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .await
        .map_err(error)?;
    let mut current: HashMap<String, Current> = HashMap::with_capacity(keys.len());
    for row in tx.query(&select, &[&keys]).await.map_err(error)? {
        let ctx = LifecycleContext {
            state: parse_state(row.get::<_, &str>(1))?,
            attempt: row.get::<_, i64>(2) as u32,
            charged_attempts: row.get::<_, i64>(3) as u32,
            max_attempts: row.get::<_, i64>(4) as u32,
            backoff_seconds: row.get::<_, i64>(5) as u32,
            cancel_requested: row.get(6),
        };
        current.insert(
            row.get(0),
            Current {
                ctx,
                node_id: row.get(7),
                project: row.get(8),
                created_at: Timestamp(row.get(9)),
                started_at: row.get::<_, Option<i64>>(10).map(Timestamp),
                member: row.get::<_, Option<String>>(11).zip(row.get::<_, Option<i64>>(12)),
                rules: crate::workflow::parse_rules(row.get::<_, Option<&str>>(13))?,
            },
        );
    }

    // Each event against the task as the events before it left it.
    let mut results = Vec::with_capacity(events.len());
    // The task row a batch writes: the last change's fields, and for the
    // fields a change leaves alone when `None`, the last one it set.
    let mut tasks: HashMap<String, shepherd_core::Change> = HashMap::new();
    let mut task_order: Vec<String> = Vec::new();
    let mut attempts: HashMap<(String, u32), AttemptWrite> = HashMap::new();
    let mut attempt_order: Vec<(String, u32)> = Vec::new();
    for (id, event, now, reporter) in events {
        let key = id.to_string();
        let Some(task) = current.get_mut(&key) else {
            results.push((Err(ApplyError::NotFound(*id)), None));
            continue;
        };
        // A node reports only about its own attempts: never a placement or
        // a cancel request (events without an attempt), never another node's task.
        if reporter.is_some() && (event.attempt().is_none() || task.node_id.as_deref() != *reporter) {
            results.push((Err(ApplyError::NotOnNode(*id)), None));
            continue;
        }
        let change = match shepherd_core::change_with(&task.ctx, &task.rules, task.node_id.as_deref(), event, *now) {
            Ok(change) => change,
            Err(illegal) => {
                results.push((Err(ApplyError::Illegal(illegal)), None));
                continue;
            }
        };
        let from = task.ctx.state;
        task.ctx = LifecycleContext {
            state: change.state,
            attempt: change.attempt,
            charged_attempts: change.charged_attempts,
            cancel_requested: change.cancel_requested,
            ..task.ctx
        };
        task.node_id = change.node_id.clone();
        task.started_at = change.started_at.or(task.started_at);
        if let Some((number, node, at)) = &change.open_attempt {
            attempt_row(&mut attempts, &mut attempt_order, &key, *number).opened = Some((node.clone(), *at));
        }
        if let Some((number, at, runtime)) = &change.start_attempt {
            let row = attempt_row(&mut attempts, &mut attempt_order, &key, *number);
            row.started_at = Some(*at);
            row.runtime = runtime.clone();
        }
        if let Some(closed) = &change.close_attempt {
            attempt_row(&mut attempts, &mut attempt_order, &key, closed.number).closed = Some(closed.clone());
        }
        let applied = Applied {
            task_id: *id,
            from,
            decision: change.decision.clone(),
            attempt: change.attempt,
            node_id: change.node_id.clone(),
            project: task.project.clone(),
            created_at: task.created_at,
            started_at: task.started_at,
            at: change.updated_at,
        };
        results.push((Ok(applied), task.member.clone()));
        match tasks.get_mut(&key) {
            Some(c) => {
                // Fields a change leaves alone when `None` keep the last one set.
                let before = std::mem::replace(c, change);
                c.exit_code = c.exit_code.or(before.exit_code);
                c.reason = c.reason.take().or(before.reason);
                c.scheduled_at = c.scheduled_at.or(before.scheduled_at);
                c.started_at = c.started_at.or(before.started_at);
                c.finished_at = c.finished_at.or(before.finished_at);
            }
            None => {
                task_order.push(key.clone());
                tasks.insert(key, change);
            }
        }
    }

    write_attempts(tx, &attempts, &attempt_order).await?;
    write_tasks(tx, &tasks, &task_order).await?;
    Ok(results)
}

/// The attempt row a batch writes for `(key, number)`, added in order.
fn attempt_row<'a>(
    attempts: &'a mut HashMap<(String, u32), AttemptWrite>,
    order: &mut Vec<(String, u32)>,
    key: &str,
    number: u32,
) -> &'a mut AttemptWrite {
    let slot = (key.to_string(), number);
    if !attempts.contains_key(&slot) {
        order.push(slot.clone());
    }
    attempts.entry(slot).or_default()
}

/// Inserts the attempts the batch opened and updates the ones it changed.
async fn write_attempts(
    tx: &deadpool_postgres::Transaction<'_>,
    attempts: &HashMap<(String, u32), AttemptWrite>,
    order: &[(String, u32)],
) -> Result<(), StoreError> {
    #[derive(Default)]
    struct Columns {
        task_id: Vec<String>,
        number: Vec<i64>,
        node_id: Vec<String>,
        scheduled_at: Vec<i64>,
        started_at: Vec<Option<i64>>,
        container: Vec<Option<String>>,
        warm: Vec<bool>,
        image_digest: Vec<Option<String>>,
        closed: Vec<bool>,
        finished_at: Vec<Option<i64>>,
        outcome: Vec<Option<&'static str>>,
        exit_code: Vec<Option<i32>>,
        reason: Vec<Option<String>>,
        cpu_ms: Vec<Option<i64>>,
        peak_memory: Vec<Option<i64>>,
        result: Vec<Option<Vec<u8>>>,
    }
    let (mut new, mut changed) = (Columns::default(), Columns::default());
    for slot in order {
        let Some(write) = attempts.get(slot) else { continue };
        let columns = if write.opened.is_some() { &mut new } else { &mut changed };
        columns.task_id.push(slot.0.clone());
        columns.number.push(i64::from(slot.1));
        if let Some((node, at)) = &write.opened {
            columns.node_id.push(node.clone());
            columns.scheduled_at.push(at.millis());
        }
        columns.started_at.push(write.started_at.map(Timestamp::millis));
        columns.container.push(write.runtime.as_ref().map(|r| r.container.clone()));
        columns.warm.push(write.runtime.as_ref().is_some_and(|r| r.warm));
        columns.image_digest.push(write.runtime.as_ref().and_then(|r| r.image_digest.clone()));
        columns.closed.push(write.closed.is_some());
        columns.finished_at.push(write.closed.as_ref().map(|c| c.finished_at.millis()));
        columns.outcome.push(write.closed.as_ref().map(|c| c.outcome.as_str()));
        columns.exit_code.push(write.closed.as_ref().and_then(|c| c.exit_code));
        columns.reason.push(write.closed.as_ref().and_then(|c| c.reason.clone()));
        let usage = write.closed.as_ref().and_then(|c| c.usage);
        columns.cpu_ms.push(usage.map(|u| u.cpu_ms.min(crate::MAX_USAGE) as i64));
        columns.peak_memory.push(usage.map(|u| u.peak_memory_bytes.min(crate::MAX_USAGE) as i64));
        columns.result.push(write.closed.as_ref().and_then(|c| c.result.clone()));
    }
    if !new.task_id.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO attempts (task_id, number, node_id, scheduled_at, started_at, finished_at, outcome, exit_code, reason, \
                 container, warm, cpu_ms, peak_memory_bytes, image_digest, result) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], \
                 $8::integer[], $9::text[], $10::text[], $11::bool[], $12::bigint[], $13::bigint[], $14::text[], $15::bytea[])",
            )
            .await
            .map_err(error)?;
        tx.execute(
            &insert,
            &[
                &new.task_id,
                &new.number,
                &new.node_id,
                &new.scheduled_at,
                &new.started_at,
                &new.finished_at,
                &new.outcome,
                &new.exit_code,
                &new.reason,
                &new.container,
                &new.warm,
                &new.cpu_ms,
                &new.peak_memory,
                &new.image_digest,
                &new.result,
            ],
        )
        .await
        .map_err(error)?;
    }
    if !changed.task_id.is_empty() {
        // A start sets `started_at`; an end sets every closing field, NULLs
        // included (an attempt lost with its node has no exit code).
        let update = tx
            .prepare_cached(
                "UPDATE attempts a SET started_at = COALESCE(u.started_at, a.started_at), \
                 container = COALESCE(u.container, a.container), warm = CASE WHEN u.started_at IS NULL THEN a.warm ELSE u.warm END, \
                 image_digest = CASE WHEN u.started_at IS NULL THEN a.image_digest ELSE u.image_digest END, \
                 finished_at = CASE WHEN u.closed THEN u.finished_at ELSE a.finished_at END, \
                 outcome = CASE WHEN u.closed THEN u.outcome ELSE a.outcome END, \
                 exit_code = CASE WHEN u.closed THEN u.exit_code ELSE a.exit_code END, \
                 reason = CASE WHEN u.closed THEN u.reason ELSE a.reason END, \
                 cpu_ms = CASE WHEN u.closed THEN u.cpu_ms ELSE a.cpu_ms END, \
                 peak_memory_bytes = CASE WHEN u.closed THEN u.peak_memory ELSE a.peak_memory_bytes END, \
                 result = CASE WHEN u.closed THEN u.result ELSE a.result END \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::bigint[], $6::text[], $7::integer[], $8::text[], \
                 $9::text[], $10::bool[], $11::bigint[], $12::bigint[], $13::text[], $14::bytea[]) \
                 AS u(task_id, number, started_at, closed, finished_at, outcome, exit_code, reason, container, warm, cpu_ms, peak_memory, \
                 image_digest, result) \
                 WHERE a.task_id = u.task_id AND a.number = u.number",
            )
            .await
            .map_err(error)?;
        tx.execute(
            &update,
            &[
                &changed.task_id,
                &changed.number,
                &changed.started_at,
                &changed.closed,
                &changed.finished_at,
                &changed.outcome,
                &changed.exit_code,
                &changed.reason,
                &changed.container,
                &changed.warm,
                &changed.cpu_ms,
                &changed.peak_memory,
                &changed.image_digest,
                &changed.result,
            ],
        )
        .await
        .map_err(error)?;
    }
    Ok(())
}

/// Writes each changed task's row once, as its last change left it.
async fn write_tasks(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &HashMap<String, shepherd_core::Change>,
    order: &[String],
) -> Result<(), StoreError> {
    if order.is_empty() {
        return Ok(());
    }
    let n = order.len();
    let (mut ids, mut states, mut attempts, mut charged) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut cancel, mut not_before, mut nodes) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut exit_codes, mut reasons, mut scheduled, mut started) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut finished, mut updated) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for key in order {
        let Some(c) = tasks.get(key) else { continue };
        ids.push(key.as_str());
        states.push(c.state.as_str());
        attempts.push(i64::from(c.attempt));
        charged.push(i64::from(c.charged_attempts));
        cancel.push(c.cancel_requested);
        not_before.push(c.not_before.millis());
        nodes.push(c.node_id.as_deref());
        exit_codes.push(c.exit_code);
        reasons.push(c.reason.as_deref());
        scheduled.push(c.scheduled_at.map(Timestamp::millis));
        started.push(c.started_at.map(Timestamp::millis));
        finished.push(c.finished_at.map(Timestamp::millis));
        updated.push(c.updated_at.millis());
    }
    let update = tx
        .prepare_cached(
            "UPDATE tasks t SET state = u.state, attempt = u.attempt, charged_attempts = u.charged, cancel_requested = u.cancel, \
             not_before = u.not_before, node_id = u.node_id, exit_code = COALESCE(u.exit_code, t.exit_code), \
             reason = COALESCE(u.reason, t.reason), scheduled_at = COALESCE(u.scheduled_at, t.scheduled_at), \
             started_at = COALESCE(u.started_at, t.started_at), finished_at = COALESCE(u.finished_at, t.finished_at), \
             updated_at = u.updated_at, \
             progress_percent = CASE WHEN u.state <> 'scheduled' AND t.progress_message LIKE 'pulling image:%' \
             THEN NULL ELSE t.progress_percent END, \
             progress_message = CASE WHEN u.state <> 'scheduled' AND t.progress_message LIKE 'pulling image:%' \
             THEN NULL ELSE t.progress_message END \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[], $6::bigint[], $7::text[], $8::integer[], \
             $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[]) \
             AS u(id, state, attempt, charged, cancel, not_before, node_id, exit_code, reason, scheduled_at, started_at, finished_at, updated_at) \
             WHERE t.id = u.id",
        )
        .await
        .map_err(error)?;
    tx.execute(
        &update,
        &[
            &ids,
            &states,
            &attempts,
            &charged,
            &cancel,
            &not_before,
            &nodes,
            &exit_codes,
            &reasons,
            &scheduled,
            &started,
            &finished,
            &updated,
        ],
    )
    .await
    .map_err(error)?;
    Ok(())
}

//! The single writer: one thread owns the write connection and commits
//! whatever requests have queued up in one transaction (group commit), so
//! a thousand concurrent single-task creates cost a handful of fsyncs, not a
//! thousand. Each request runs in its own savepoint: one refused request
//! never undoes another's work.

use crate::{ApplyResult, LogChunk, NodeRecord, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shepherd_core::shape::ShapeKey;
use shepherd_core::{ClusterEvent, Event, NewTask, TaskId, Timestamp};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most requests folded into one transaction. Thousands of agents
/// reporting at once fold into a few commits.
const MAX_GROUP: usize = 2048;

/// A write request with the channel its result goes back on.
pub enum WriteOp {
    Create(Vec<NewTask>, oneshot::Sender<Result<(), StoreError>>),
    /// Events, their time, and the node that reported them (if one did:
    /// events about tasks not on it are refused).
    Apply(Vec<(TaskId, Event)>, Timestamp, Option<String>, oneshot::Sender<Result<Vec<ApplyResult>, StoreError>>),
    AppendLogs(Vec<LogChunk>, oneshot::Sender<Result<(), StoreError>>),
    UpsertNode(NodeRecord, oneshot::Sender<Result<(), StoreError>>),
    TouchNode(String, Timestamp, Vec<String>, oneshot::Sender<Result<Option<crate::NodeState>, StoreError>>),
    SetNodeState(String, crate::NodeState, oneshot::Sender<Result<bool, StoreError>>),
    /// Any other write: a closure run in its own savepoint.
    Run(Work, oneshot::Sender<Result<AnyResult, StoreError>>),
}

/// The value a [`WriteOp::Run`] closure produces.
pub type AnyResult = Box<dyn std::any::Any + Send>;

/// The closure of a [`WriteOp::Run`].
pub type Work = Box<dyn FnOnce(&Connection) -> Result<AnyResult, StoreError> + Send>;

/// The result of one op, held until the group commits.
enum Outcome {
    Unit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    State(oneshot::Sender<Result<Option<crate::NodeState>, StoreError>>, Result<Option<crate::NodeState>, StoreError>),
    Flag(oneshot::Sender<Result<bool, StoreError>>, Result<bool, StoreError>),
    Applied(oneshot::Sender<Result<Vec<ApplyResult>, StoreError>>, Result<Vec<ApplyResult>, StoreError>),
    Any(oneshot::Sender<Result<AnyResult, StoreError>>, Result<AnyResult, StoreError>),
}

impl Outcome {
    fn send(self) {
        // A caller that stopped waiting has nothing to tell: ignore closed channels.
        match self {
            Outcome::Unit(tx, result) => drop(tx.send(result)),
            Outcome::Applied(tx, result) => drop(tx.send(result)),
            Outcome::State(tx, result) => drop(tx.send(result)),
            Outcome::Flag(tx, result) => drop(tx.send(result)),
            Outcome::Any(tx, result) => drop(tx.send(result)),
        }
    }

    /// The same answer, as the error `message`.
    fn with_error(self, message: &str) -> Outcome {
        let e = || StoreError::Corrupt(message.to_string());
        match self {
            Outcome::Unit(tx, _) => Outcome::Unit(tx, Err(e())),
            Outcome::Applied(tx, _) => Outcome::Applied(tx, Err(e())),
            Outcome::State(tx, _) => Outcome::State(tx, Err(e())),
            Outcome::Flag(tx, _) => Outcome::Flag(tx, Err(e())),
            Outcome::Any(tx, _) => Outcome::Any(tx, Err(e())),
        }
    }

    fn fail(self, message: &str) {
        match self {
            Outcome::Unit(tx, _) => drop(tx.send(Err(StoreError::Corrupt(message.to_string())))),
            Outcome::Applied(tx, _) => drop(tx.send(Err(StoreError::Corrupt(message.to_string())))),
            Outcome::State(tx, _) => drop(tx.send(Err(StoreError::Corrupt(message.to_string())))),
            Outcome::Flag(tx, _) => drop(tx.send(Err(StoreError::Corrupt(message.to_string())))),
            Outcome::Any(tx, _) => drop(tx.send(Err(StoreError::Corrupt(message.to_string())))),
        }
    }
}

/// Runs until every sender is dropped.
pub fn run(mut conn: Connection, requests: mpsc::Receiver<WriteOp>, observer: crate::ObserverSlot, key: ShapeKey) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let (started, requests) = (std::time::Instant::now(), group.len());
        let created = commit_group(&mut conn, group, &key);
        if let Some(observer) = observer.get() {
            observer.committed(requests, started.elapsed());
            for (project, count) in created {
                observer.created(&project, count);
            }
        }
    }
    tracing::debug!("store writer stopped");
}

/// Commits a group; returns how many tasks each project got from its
/// `Create` requests (none if the commit failed).
pub(super) fn commit_group(conn: &mut Connection, group: Vec<WriteOp>, key: &ShapeKey) -> Vec<(String, u64)> {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let message = format!("could not begin transaction: {e}");
            for op in group {
                outcome_placeholder(op).fail(&message);
            }
            return Vec::new();
        }
    };
    let mut tx = tx;
    let mut created = Vec::new();
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    let mut recorded: Result<(), StoreError> = Ok(());
    let mut run = Vec::new();
    for op in group {
        if replayable(&op) {
            run.push(op);
            continue;
        }
        outcomes.extend(execute_run(&mut tx, std::mem::take(&mut run), &mut created, &mut events, key));
        // A `Run` op records its own events as it goes: the events gathered
        // before it go first, so the stream keeps the order things happened.
        if matches!(op, WriteOp::Run(..)) && !events.is_empty() && recorded.is_ok() {
            recorded = append_events(&tx, Timestamp::now(), &std::mem::take(&mut events));
        }
        outcomes.push(execute(&mut tx, op, &mut created, &mut events, key));
    }
    outcomes.extend(execute_run(&mut tx, run, &mut created, &mut events, key));
    // The group's events in one row: a thousand single creates cost one
    // insert, not a thousand.
    if let Err(e) = recorded.and_then(|()| append_events(&tx, Timestamp::now(), &events)) {
        let message = format!("could not record the events: {e}");
        tracing::error!(%message, "store commit failed");
        drop(tx);
        outcomes.into_iter().for_each(|o| o.fail(&message));
        return Vec::new();
    }
    match tx.commit() {
        Ok(()) => {
            outcomes.into_iter().for_each(Outcome::send);
            created
        }
        Err(e) => {
            let message = format!("commit failed: {e}");
            tracing::error!(%message, "store commit failed");
            outcomes.into_iter().for_each(|o| o.fail(&message));
            Vec::new()
        }
    }
}

fn outcome_placeholder(op: WriteOp) -> Outcome {
    match op {
        WriteOp::Create(_, tx) | WriteOp::AppendLogs(_, tx) | WriteOp::UpsertNode(_, tx) => Outcome::Unit(tx, Ok(())),
        WriteOp::Apply(_, _, _, tx) => Outcome::Applied(tx, Ok(Vec::new())),
        WriteOp::TouchNode(_, _, _, tx) => Outcome::State(tx, Ok(None)),
        WriteOp::SetNodeState(_, _, tx) => Outcome::Flag(tx, Ok(false)),
        WriteOp::Run(_, tx) => Outcome::Any(tx, Ok(Box::new(()))),
    }
}

/// Runs one op in a savepoint, released on success and rolled back on error.
fn in_savepoint<T>(tx: &mut Transaction<'_>, work: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let sp = tx.savepoint()?;
    let result = work(&sp);
    if result.is_ok() {
        sp.commit()?;
    }
    result
}

/// Whether an op's work can be done again from its request (its data is
/// kept until its answer is sent): creates, reports, output, heartbeats.
fn replayable(op: &WriteOp) -> bool {
    matches!(op, WriteOp::Create(..) | WriteOp::Apply(..) | WriteOp::AppendLogs(..) | WriteOp::TouchNode(..))
}

/// What a replayable op produced, before it is sent.
enum Done {
    Unit,
    Applied(Vec<ApplyResult>),
    State(Option<crate::NodeState>),
}

/// Does a replayable op's work on `t`; its events and creations are
/// added only once it succeeded.
fn perform(
    t: &Connection,
    op: &WriteOp,
    created: &mut Vec<(String, u64)>,
    events: &mut Vec<ClusterEvent>,
    key: &ShapeKey,
) -> Result<Done, StoreError> {
    match op {
        WriteOp::Create(tasks, _) => {
            insert_tasks(t, tasks, key)?;
            events.extend(crate::created_events(tasks));
            for (project, count) in crate::count_by_project(tasks) {
                match created.iter_mut().find(|(p, _)| p == project) {
                    Some((_, n)) => *n += count,
                    None => created.push((project.to_string(), count)),
                }
            }
            Ok(Done::Unit)
        }
        WriteOp::Apply(applied, now, reporter, _) => {
            let (results, cascade) = super::lifecycle::apply_events(t, applied, *now, reporter.as_deref())?;
            events.extend(results.iter().chain(&cascade).filter_map(|r| r.as_ref().ok()).map(crate::Applied::event));
            Ok(Done::Applied(results))
        }
        WriteOp::AppendLogs(chunks, _) => append_logs(t, chunks).map(|()| Done::Unit),
        WriteOp::TouchNode(id, at, images, _) => touch_node(t, id, *at, Some(images)).map(Done::State),
        _ => Err(StoreError::Corrupt("not a replayable write".into())),
    }
}

/// The answer of a replayable op.
fn answer(op: WriteOp, done: Result<Done, StoreError>) -> Outcome {
    let wrong = || StoreError::Corrupt("a write's answer of the wrong kind".into());
    match op {
        WriteOp::Create(_, reply) | WriteOp::AppendLogs(_, reply) => Outcome::Unit(reply, done.map(|_| ())),
        WriteOp::Apply(_, _, _, reply) => Outcome::Applied(
            reply,
            done.and_then(|d| match d {
                Done::Applied(results) => Ok(results),
                _ => Err(wrong()),
            }),
        ),
        WriteOp::TouchNode(_, _, _, reply) => Outcome::State(
            reply,
            done.and_then(|d| match d {
                Done::State(state) => Ok(state),
                _ => Err(wrong()),
            }),
        ),
        other => outcome_placeholder(other).with_error("not a replayable write"),
    }
}

/// Runs consecutive replayable ops under one savepoint, not one each: a
/// savepoint copies every page it changes into its journal first, and at
/// thousands of agents' reports a group that copy was a third of the
/// writer's time. If any op fails, the savepoint is rolled back and each
/// op runs again in its own, so that the one that failed undoes only its
/// own work, as before.
fn execute_run(
    tx: &mut Transaction<'_>,
    run: Vec<WriteOp>,
    created: &mut Vec<(String, u64)>,
    events: &mut Vec<ClusterEvent>,
    key: &ShapeKey,
) -> Vec<Outcome> {
    if run.len() > 1 {
        let (created_before, events_before) = (created.clone(), events.len());
        if let Ok(sp) = tx.savepoint() {
            let mut done = Vec::with_capacity(run.len());
            for op in &run {
                match perform(&sp, op, created, events, key) {
                    Ok(d) => done.push(d),
                    Err(_) => break,
                }
            }
            if done.len() == run.len() && sp.commit().is_ok() {
                return run.into_iter().zip(done).map(|(op, d)| answer(op, Ok(d))).collect();
            }
            // (Dropping an unreleased savepoint rolls it back.)
        }
        *created = created_before;
        events.truncate(events_before);
    }
    run.into_iter()
        .map(|op| {
            let done = in_savepoint(tx, |t| perform(t, &op, created, events, key));
            answer(op, done)
        })
        .collect()
}

fn execute(
    tx: &mut Transaction<'_>,
    op: WriteOp,
    created: &mut Vec<(String, u64)>,
    events: &mut Vec<ClusterEvent>,
    key: &ShapeKey,
) -> Outcome {
    match op {
        op @ (WriteOp::Create(..) | WriteOp::Apply(..) | WriteOp::AppendLogs(..) | WriteOp::TouchNode(..)) => {
            let done = in_savepoint(tx, |t| perform(t, &op, created, events, key));
            answer(op, done)
        }
        WriteOp::UpsertNode(node, reply) => {
            let result = in_savepoint(tx, |t| {
                upsert_node(t, &node)?;
                node_history(t, &node.id, node.state, node.last_heartbeat_at)
            });
            if result.is_ok() {
                events.push(node_event(&node.id, node.state, node.last_heartbeat_at));
            }
            Outcome::Unit(reply, result)
        }
        WriteOp::SetNodeState(id, state, reply) => {
            Outcome::Flag(reply, in_savepoint(tx, |t| set_node_state(t, &id, state, Timestamp::now(), events)))
        }
        WriteOp::Run(work, reply) => Outcome::Any(reply, in_savepoint(tx, work)),
    }
}

/// Inserts tasks with prepared statements; also used by the ingest benchmark's
/// raw baseline so that both sides write exactly the same rows.
pub fn insert_tasks(tx: &Connection, tasks: &[NewTask], key: &ShapeKey) -> Result<(), StoreError> {
    insert_tasks_as(tx, tasks, key, shepherd_core::TaskState::Queued, 0)
}

/// What a task's row holds beyond its spec's plain fields: worked out by
/// the caller before the write reaches the single writer (the spec's JSON,
/// its keyed placement shape), so that the writer's thread only writes.
pub struct TaskRow {
    id: String,
    spec_json: String,
    constraints: Option<String>,
    rules: Option<String>,
    shape: i64,
}

impl TaskRow {
    /// The row of `task` under the cluster's shape `key`.
    pub fn of(task: &NewTask, key: &ShapeKey) -> Result<TaskRow, StoreError> {
        let spec = &task.spec;
        Ok(TaskRow {
            id: task.id.to_string(),
            spec_json: serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            constraints: crate::workflow::constraints_text(spec)?,
            rules: crate::workflow::rules_text(spec)?,
            shape: spec.placement_shape(key),
        })
    }

    /// The rows of `tasks`.
    pub fn all(tasks: &[NewTask], key: &ShapeKey) -> Result<Vec<TaskRow>, StoreError> {
        tasks.iter().map(|t| TaskRow::of(t, key)).collect()
    }
}

/// [`insert_tasks`], each in `state` with `waiting_on` unmet dependencies.
pub(crate) fn insert_tasks_as(
    tx: &Connection,
    tasks: &[NewTask],
    key: &ShapeKey,
    state: shepherd_core::TaskState,
    waiting_on: i64,
) -> Result<(), StoreError> {
    insert_rows(tx, tasks, &TaskRow::all(tasks, key)?, state, waiting_on)
}

/// Inserts `tasks` with their `rows` (one each, in the same order).
pub(crate) fn insert_rows(
    tx: &Connection,
    tasks: &[NewTask],
    rows: &[TaskRow],
    state: shepherd_core::TaskState,
    waiting_on: i64,
) -> Result<(), StoreError> {
    if rows.len() != tasks.len() {
        return Err(StoreError::Corrupt("a row for every task".into()));
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO tasks (id, project, state, priority, image, cpu_millicores, memory_mib, constraints, \
         spec, payload, payload_bytes, created_at, attempt, charged_attempts, max_attempts, backoff_seconds, \
         cancel_requested, not_before, updated_at, shape, retry_rules, waiting_on) \
         VALUES (?1, ?2, ?17, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, 0, ?12, ?13, 0, ?15, ?11, ?14, ?16, ?18)",
    )?;
    let mut label = tx.prepare_cached("INSERT INTO task_labels (task_id, key, value) VALUES (?1, ?2, ?3)")?;
    let mut webhook = tx.prepare_cached(
        "INSERT INTO webhook_deliveries (task_id, project, url, state, attempts, next_at, created_at) VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)",
    )?;
    for (task, row) in tasks.iter().zip(rows) {
        let spec = &task.spec;
        let id = &row.id;
        let inserted = insert.execute(params![
            id,
            spec.project,
            spec.priority,
            spec.image,
            spec.resources.cpu_millicores,
            spec.resources.memory_mib,
            row.constraints,
            row.spec_json,
            task.payload,
            task.payload.as_ref().map_or(0, |p| p.len() as i64),
            task.created_at.millis(),
            spec.retry.max_attempts,
            spec.retry.backoff_seconds,
            row.shape,
            task.not_before().millis(),
            row.rules,
            state.as_str(),
            waiting_on,
        ]);
        match inserted {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(StoreError::Duplicate(task.id))
            }
            other => other?,
        };
        for (key, value) in &spec.labels {
            label.execute(params![id, key, value])?;
        }
        if let Some(url) = &spec.webhook {
            webhook.execute(params![id, spec.project, url, task.created_at.millis()])?;
        }
    }
    Ok(())
}

/// Records events in the stream, in the transaction of the write that
/// made them: one row per write.
pub(crate) fn append_events(tx: &Connection, at: Timestamp, events: &[ClusterEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let body = serde_json::to_string(events).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached("INSERT INTO events (at, body) VALUES (?1, ?2)")?.execute(params![at.millis(), body])?;
    Ok(())
}

/// Records the creation of `tasks` in the event stream.
pub(crate) fn append_created(tx: &Connection, tasks: &[NewTask]) -> Result<(), StoreError> {
    let Some(first) = tasks.first() else { return Ok(()) };
    append_events(tx, first.created_at, &crate::created_events(tasks))
}

/// Records the changes that applied in the event stream.
pub(crate) fn append_applied(tx: &Connection, now: Timestamp, results: &[ApplyResult]) -> Result<(), StoreError> {
    let events: Vec<ClusterEvent> = results.iter().filter_map(|r| r.as_ref().ok()).map(crate::Applied::event).collect();
    append_events(tx, now, &events)
}

/// A node's new state, as the event stream says it.
/// Records a node's new state in `node_history` (see `crate::history`).
/// Sets a node's state, with its history line and event (in `events`);
/// whether there was such a node.
pub(crate) fn set_node_state(
    t: &Connection,
    id: &str,
    state: crate::NodeState,
    now: Timestamp,
    events: &mut Vec<ClusterEvent>,
) -> Result<bool, StoreError> {
    let changed = t.prepare_cached("UPDATE nodes SET state = ?2 WHERE id = ?1")?.execute(params![id, state.as_str()])? > 0;
    if changed {
        node_history(t, id, state, now)?;
        events.push(node_event(id, state, now));
    }
    Ok(changed)
}

fn node_history(tx: &Connection, id: &str, state: crate::NodeState, at: Timestamp) -> Result<(), StoreError> {
    tx.prepare_cached(&crate::history::NODE_HISTORY_INSERT.replace('$', "?"))?.execute(params![id, state.as_str(), at.millis()])?;
    Ok(())
}

fn node_event(id: &str, state: crate::NodeState, at: Timestamp) -> ClusterEvent {
    ClusterEvent::Node(shepherd_core::events::NodeChange { node: id.to_string(), state: state.as_str().to_string(), at })
}

fn append_logs(tx: &Connection, chunks: &[LogChunk]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached("INSERT INTO task_logs (task_id, attempt, stream, data) VALUES (?1, ?2, ?3, ?4)")?;
    for chunk in chunks {
        insert.execute(params![chunk.task_id.to_string(), chunk.attempt, chunk.stream as i64, chunk.data])?;
    }
    Ok(())
}

fn upsert_node(tx: &Connection, node: &NodeRecord) -> Result<(), StoreError> {
    let labels = serde_json::to_string(&node.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let images = serde_json::to_string(&node.images).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO nodes (id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, \
         registered_at, last_heartbeat_at, images) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, state = excluded.state, \
         driver = excluded.driver, cpu_millicores = excluded.cpu_millicores, memory_mib = excluded.memory_mib, \
         max_tasks = excluded.max_tasks, labels = excluded.labels, last_heartbeat_at = excluded.last_heartbeat_at, \
         images = excluded.images",
    )?
    .execute(params![
        node.id,
        node.hostname,
        node.state.as_str(),
        node.driver,
        node.capacity.cpu_millicores,
        node.capacity.memory_mib,
        node.max_tasks,
        labels,
        node.registered_at.millis(),
        node.last_heartbeat_at.millis(),
        images,
    ])?;
    Ok(())
}

/// Records a heartbeat (and the images, if given); the node's state.
pub(crate) fn touch_node(
    tx: &Connection,
    id: &str,
    at: Timestamp,
    images: Option<&[String]>,
) -> Result<Option<crate::NodeState>, StoreError> {
    match images {
        Some(images) => {
            let images = serde_json::to_string(images).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.prepare_cached("UPDATE nodes SET last_heartbeat_at = MAX(last_heartbeat_at, ?2), images = ?3 WHERE id = ?1")?
                .execute(params![id, at.millis(), images])?;
        }
        None => {
            tx.prepare_cached("UPDATE nodes SET last_heartbeat_at = MAX(last_heartbeat_at, ?2) WHERE id = ?1")?
                .execute(params![id, at.millis()])?;
        }
    }
    let state: Option<String> = tx.prepare_cached("SELECT state FROM nodes WHERE id = ?1")?.query_row([id], |row| row.get(0)).optional()?;
    Ok(state.as_deref().and_then(crate::NodeState::parse))
}

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
fn commit_group(conn: &mut Connection, group: Vec<WriteOp>, key: &ShapeKey) -> Vec<(String, u64)> {
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
    for op in group {
        // A `Run` op records its own events as it goes: the events gathered
        // before it go first, so the stream keeps the order things happened.
        if matches!(op, WriteOp::Run(..)) && !events.is_empty() && recorded.is_ok() {
            recorded = append_events(&tx, Timestamp::now(), &std::mem::take(&mut events));
        }
        outcomes.push(execute(&mut tx, op, &mut created, &mut events, key));
    }
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

fn execute(
    tx: &mut Transaction<'_>,
    op: WriteOp,
    created: &mut Vec<(String, u64)>,
    events: &mut Vec<ClusterEvent>,
    key: &ShapeKey,
) -> Outcome {
    match op {
        WriteOp::Create(tasks, reply) => {
            let result = in_savepoint(tx, |t| insert_tasks(t, &tasks, key));
            if result.is_ok() {
                events.extend(crate::created_events(&tasks));
                for (project, count) in crate::count_by_project(&tasks) {
                    match created.iter_mut().find(|(p, _)| p == project) {
                        Some((_, n)) => *n += count,
                        None => created.push((project.to_string(), count)),
                    }
                }
            }
            Outcome::Unit(reply, result)
        }
        WriteOp::Apply(applied, now, reporter, reply) => {
            let result = in_savepoint(tx, |t| super::lifecycle::apply_events(t, &applied, now, reporter.as_deref()));
            let result = result.map(|(results, cascade)| {
                events.extend(results.iter().chain(&cascade).filter_map(|r| r.as_ref().ok()).map(crate::Applied::event));
                results
            });
            Outcome::Applied(reply, result)
        }
        WriteOp::AppendLogs(chunks, reply) => Outcome::Unit(reply, in_savepoint(tx, |t| append_logs(t, &chunks))),
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
        WriteOp::TouchNode(id, at, images, reply) => Outcome::State(reply, in_savepoint(tx, |t| touch_node(t, &id, at, Some(&images)))),
        WriteOp::SetNodeState(id, state, reply) => Outcome::Flag(
            reply,
            in_savepoint(tx, |t| {
                let changed = t.prepare_cached("UPDATE nodes SET state = ?2 WHERE id = ?1")?.execute(params![id, state.as_str()])? > 0;
                if changed {
                    let now = Timestamp::now();
                    node_history(t, &id, state, now)?;
                    events.push(node_event(&id, state, now));
                }
                Ok(changed)
            }),
        ),
        WriteOp::Run(work, reply) => Outcome::Any(reply, in_savepoint(tx, work)),
    }
}

/// Inserts tasks with prepared statements; also used by the ingest benchmark's
/// raw baseline so that both sides write exactly the same rows.
pub fn insert_tasks(tx: &Connection, tasks: &[NewTask], key: &ShapeKey) -> Result<(), StoreError> {
    insert_tasks_as(tx, tasks, key, shepherd_core::TaskState::Queued, 0)
}

/// [`insert_tasks`], each in `state` with `waiting_on` unmet dependencies.
pub(crate) fn insert_tasks_as(
    tx: &Connection,
    tasks: &[NewTask],
    key: &ShapeKey,
    state: shepherd_core::TaskState,
    waiting_on: i64,
) -> Result<(), StoreError> {
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
    for task in tasks {
        let spec = &task.spec;
        let id = task.id.to_string();
        let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let constraints = crate::workflow::constraints_text(spec)?;
        let inserted = insert.execute(params![
            id,
            spec.project,
            spec.priority,
            spec.image,
            spec.resources.cpu_millicores,
            spec.resources.memory_mib,
            constraints,
            spec_json,
            task.payload,
            task.payload.as_ref().map_or(0, |p| p.len() as i64),
            task.created_at.millis(),
            spec.retry.max_attempts,
            spec.retry.backoff_seconds,
            spec.placement_shape(key),
            task.not_before().millis(),
            crate::workflow::rules_text(spec)?,
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

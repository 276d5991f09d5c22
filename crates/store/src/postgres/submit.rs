//! Workflows on PostgreSQL, outside the apply path: a submission of tasks
//! and arrays with their dependencies and idempotency key (one
//! transaction, a few statements whatever its size), and the reads of
//! arrays and dependency edges. SQLite's `sqlite/workflow.rs` is the same,
//! entry by entry; what a task's end does is in [`super::workflow`].

use super::connection::PgStore;
use super::events::{append_audit, reserve_audit_numbers};
use super::sql::{append_events, corrupt, error, parse_state, to_u32};
use super::tasks::{duplicate, insert_tasks_as};
use super::workflow::{self, array_state, FollowUps};
use crate::workflow::{Entry, IdempotencyKey, NewArray, Submission, Submitted, IDEMPOTENCY_TTL_MS};
use crate::{Applied, ApplyResult, ArraySource, StoreError};
use deadpool_postgres::{GenericClient, Transaction};
use shepherd_core::shape::ShapeKey;
use shepherd_core::workflow::dependency_failed;
use shepherd_core::{ClusterEvent, DependOn, DependencyTarget, Event, NewTask, TaskId, TaskState, Timestamp};
use std::collections::HashMap;

/// What a dependency is, as the submission finds it.
enum Found<'a> {
    Task {
        state: TaskState,
    },
    /// `end`: how it ended, if it has.
    Array {
        end: Option<TaskState>,
        size: i64,
        at: ArrayAt<'a>,
    },
}

/// Where an array a dependency names is.
enum ArrayAt<'a> {
    Stored(&'a str),
    /// An earlier entry of the same submission.
    Submitted(&'a NewArray),
}

/// The dependencies the submission names that are stored already, read
/// with a share lock each: none can end before this transaction commits
/// without its hooks seeing the new dependents.
struct Stored {
    tasks: HashMap<String, (String, TaskState)>,
    arrays: HashMap<String, (String, String, i64)>,
}

impl Stored {
    async fn read(tx: &Transaction<'_>, sub: &Submission) -> Result<Stored, StoreError> {
        let own: std::collections::HashSet<String> = sub.entries.iter().map(|e| e.id().to_string()).collect();
        let mut ids: Vec<&str> = sub
            .entries
            .iter()
            .flat_map(|e| e.spec().depends_on.iter())
            .filter_map(|d| match &d.task {
                DependencyTarget::Id(id) if !own.contains(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut stored = Stored { tasks: HashMap::new(), arrays: HashMap::new() };
        if ids.is_empty() {
            return Ok(stored);
        }
        let stmt =
            tx.prepare_cached("SELECT id, project, state FROM tasks WHERE id = ANY($1) ORDER BY id FOR SHARE").await.map_err(error)?;
        for row in tx.query(&stmt, &[&ids]).await.map_err(error)? {
            stored.tasks.insert(row.get(0), (row.get(1), parse_state(row.get(2))?));
        }
        let stmt = tx
            .prepare_cached("SELECT id, project, state, size FROM arrays WHERE id = ANY($1) ORDER BY id FOR SHARE")
            .await
            .map_err(error)?;
        for row in tx.query(&stmt, &[&ids]).await.map_err(error)? {
            stored.arrays.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
        }
        Ok(stored)
    }
}

/// Finds dependency `id` of entry `pos` among the stored tasks and arrays
/// and the submission's earlier entries, if it is `project`'s.
fn find<'a>(sub: &'a Submission, stored: &'a Stored, pos: usize, id: &'a str, project: &str) -> Option<Found<'a>> {
    if let Some((owner, state)) = stored.tasks.get(id) {
        return (owner == project).then_some(Found::Task { state: *state });
    }
    if let Some((owner, state, size)) = stored.arrays.get(id) {
        return (owner == project).then(|| Found::Array { end: array_state(state), size: *size, at: ArrayAt::Stored(id) });
    }
    // An earlier entry, or a child of one, has not ended: nothing has run.
    let task_id: TaskId = id.parse().ok()?;
    sub.entries[..pos].iter().find_map(|entry| match entry {
        Entry::Task(t) if t.id == task_id => Some((t.spec.project == project).then_some(Found::Task { state: TaskState::Queued })),
        Entry::Array(a) if a.id == task_id => Some((a.spec.project == project).then(|| Found::Array {
            end: None,
            size: i64::from(a.array().size),
            at: ArrayAt::Submitted(a),
        })),
        Entry::Array(a) if task_id.position_after(a.children.first, a.children.count).is_some() => {
            Some((a.spec.project == project).then_some(Found::Task { state: TaskState::Waiting }))
        }
        _ => None,
    })?
}

/// The children's index → state of an array (for `each`).
async fn child_states(tx: &Transaction<'_>, at: &ArrayAt<'_>) -> Result<HashMap<i64, TaskState>, StoreError> {
    match at {
        ArrayAt::Submitted(a) => Ok(a.children.iter().map(|(_, i)| (i64::from(i), TaskState::Waiting)).collect()),
        ArrayAt::Stored(id) => {
            let stmt = tx.prepare_cached("SELECT array_index, state FROM tasks WHERE array_id = $1").await.map_err(error)?;
            let mut out = HashMap::new();
            for row in tx.query(&stmt, &[id]).await.map_err(error)? {
                out.insert(row.get::<_, i64>(0), parse_state(row.get(1))?);
            }
            Ok(out)
        }
    }
}

/// What to do once everything is inserted, in entry order.
enum Then {
    Follow(TaskId, Event),
    /// Stop an array whose own dependency failed.
    Stop(String, String),
}

/// An array's children as they are inserted.
#[derive(Default)]
struct Children {
    ids: Vec<String>,
    states: Vec<&'static str>,
    waiting_on: Vec<i64>,
    indexes: Vec<i64>,
    admitted: i64,
}

/// Claims an idempotency key for this submission; the answer to give
/// instead if it was used within its lifetime. A concurrent submission
/// with the same key waits here until this one ends.
async fn claim_key(tx: &Transaction<'_>, idem: &IdempotencyKey, now: Timestamp) -> Result<Option<Submitted>, StoreError> {
    let claimed = tx
        .query_opt(
            "INSERT INTO idempotency_keys (project, key, request, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (project, key) DO UPDATE SET request = excluded.request, status = excluded.status, \
             response = excluded.response, created_at = excluded.created_at WHERE idempotency_keys.created_at <= $7 RETURNING 1",
            &[
                &idem.project,
                &idem.key,
                &idem.request,
                &i32::from(idem.status),
                &idem.response,
                &idem.at.millis(),
                &(now.millis() - IDEMPOTENCY_TTL_MS),
            ],
        )
        .await
        .map_err(error)?;
    if claimed.is_some() {
        return Ok(None);
    }
    let row = tx
        .query_one("SELECT request, status, response FROM idempotency_keys WHERE project = $1 AND key = $2", &[&idem.project, &idem.key])
        .await
        .map_err(error)?;
    if row.get::<_, &str>(0) != idem.request {
        return Err(StoreError::IdempotencyConflict(idem.key.clone()));
    }
    Ok(Some(Submitted::Replayed { status: row.get::<_, i32>(1).clamp(0, i32::from(u16::MAX)) as u16, response: row.get(2) }))
}

/// Stores a submission in `tx`. Dependents of dependencies that already
/// failed end at once (`cascade`); `events` gets the created ones.
async fn submit(
    tx: &Transaction<'_>,
    sub: &Submission,
    key: &ShapeKey,
    now: Timestamp,
    events: &mut Vec<ClusterEvent>,
    cascade: &mut Vec<ApplyResult>,
) -> Result<Submitted, StoreError> {
    if let Some(idem) = &sub.idempotency {
        if let Some(answer) = claim_key(tx, idem, now).await? {
            return Ok(answer);
        }
    }
    let stored = Stored::read(tx, sub).await?;
    let (mut tasks, mut states): (Vec<&NewTask>, Vec<(TaskState, i64)>) = (Vec::new(), Vec::new());
    let mut arrays: Vec<(&NewArray, bool, i64, Children)> = Vec::new();
    let (mut dep_tasks, mut dep_ids, mut dep_conds) = (Vec::new(), Vec::new(), Vec::new());
    let mut then = Vec::new();
    for (index, entry) in sub.entries.iter().enumerate() {
        let spec = entry.spec();
        let id = entry.id().to_string();
        let mut waiting_on = 0i64;
        let mut failed: Option<String> = None;
        let mut each: Vec<(&str, HashMap<i64, TaskState>)> = Vec::new();
        for (j, dep) in spec.depends_on.iter().enumerate() {
            let field = sub.field(index, &format!("depends_on[{j}].task"));
            let DependencyTarget::Id(dep_id) = &dep.task else {
                return Err(StoreError::Invalid { field, message: "unresolved position".into() });
            };
            if *dep_id == id {
                return Err(StoreError::Invalid { field, message: "a task cannot depend on itself".into() });
            }
            let Some(found) = find(sub, &stored, index, dep_id, &spec.project) else {
                return Err(StoreError::Invalid { field, message: format!("project `{}` has no task or array `{dep_id}`", spec.project) });
            };
            let end = match (found, dep.on) {
                (Found::Array { size, at, .. }, DependOn::Each) => {
                    let own = spec.array.map_or(0, |a| i64::from(a.size));
                    if size != own {
                        return Err(StoreError::Invalid {
                            field: sub.field(index, &format!("depends_on[{j}].on")),
                            message: format!("`each` pairs arrays of the same size: `{dep_id}` has {size} children, this one {own}"),
                        });
                    }
                    each.push((dep_id, child_states(tx, &at).await?));
                    continue;
                }
                (Found::Task { .. }, DependOn::Each) => {
                    return Err(StoreError::Invalid {
                        field: sub.field(index, &format!("depends_on[{j}].on")),
                        message: format!("`each` pairs the children of two arrays; `{dep_id}` is a task"),
                    });
                }
                (Found::Task { state }, _) => state.is_terminal().then_some(state),
                (Found::Array { end, .. }, _) => end,
            };
            match end {
                None => waiting_on += 1,
                Some(end) if dep.on.satisfied_by(end) => {}
                Some(_) => {
                    failed.get_or_insert_with(|| dep_id.clone());
                }
            }
        }
        match entry {
            Entry::Task(task) => {
                let state = if waiting_on > 0 || failed.is_some() { TaskState::Waiting } else { TaskState::Queued };
                tasks.push(task);
                states.push((state, waiting_on));
                events.push(crate::workflow::created_event(task.id, &task.spec.project, state, task.created_at));
                if let Some(dep) = failed {
                    then.push(Then::Follow(task.id, Event::DependencyFailed { reason: dependency_failed(&dep) }));
                }
            }
            Entry::Array(array) => {
                let running = waiting_on == 0 && failed.is_none();
                // No event per child (an array of 100,000 would be one row
                // of 100,000 events): children show up as they change.
                arrays.push((array, running, waiting_on, children(array, running, &each, &mut then)));
                if let Some(dep) = failed {
                    then.push(Then::Stop(id.clone(), dependency_failed(&dep)));
                }
            }
        }
        for (dep_id, on) in crate::workflow::dep_rows(spec) {
            dep_tasks.push(id.clone());
            dep_ids.push(dep_id);
            dep_conds.push(on.as_str());
        }
    }
    insert_tasks_as(tx, &tasks, key, &states).await?;
    for (array, running, waiting_on, children) in &arrays {
        insert_array(tx, array, key, *running, *waiting_on, children).await?;
    }
    if !dep_tasks.is_empty() {
        let insert = tx
            .prepare_cached("INSERT INTO task_deps (task_id, dep_id, cond) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])")
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&dep_tasks, &dep_ids, &dep_conds]).await.map_err(error)?;
    }
    let mut follow = FollowUps::new();
    for step in then {
        match step {
            Then::Follow(id, event) => follow.push_back((id, event)),
            Then::Stop(array, reason) => workflow::stop_array(tx, &array, &reason, &mut follow).await?,
        }
    }
    workflow::run_follow_ups(tx, follow, now, cascade).await?;
    Ok(Submitted::Created)
}

/// An array's children: queued if the array may run, their `each` pairs
/// have succeeded and its parallelism has room, else waiting; one whose
/// pair can never succeed ends at once (`then`).
fn children(array: &NewArray, running: bool, each: &[(&str, HashMap<i64, TaskState>)], then: &mut Vec<Then>) -> Children {
    let cap = array.array().parallelism.map_or(i64::MAX, i64::from);
    let mut out = Children::default();
    for (child, index) in array.children.iter() {
        let index = i64::from(index);
        let (child_waiting, failed) = crate::workflow::pair_wait(index, each.iter().map(|(dep, states)| (*dep, states)));
        let queued = running && child_waiting == 0 && failed.is_none() && out.admitted < cap;
        out.admitted += i64::from(queued);
        out.ids.push(child.to_string());
        out.states.push(if queued { TaskState::Queued } else { TaskState::Waiting }.as_str());
        out.waiting_on.push(child_waiting);
        out.indexes.push(index);
        if let Some(dep) = failed {
            then.push(Then::Follow(child, Event::DependencyFailed { reason: dependency_failed(&dep) }));
        }
    }
    out
}

/// Inserts an array's row and its children (an empty spec and no payload
/// each: they read the array's), the children in one statement.
async fn insert_array(
    tx: &Transaction<'_>,
    array: &NewArray,
    key: &ShapeKey,
    running: bool,
    waiting_on: i64,
    children: &Children,
) -> Result<(), StoreError> {
    let spec = &array.spec;
    let settings = array.array();
    let id = array.id.to_string();
    let spec_json = serde_json::to_string(spec).map_err(|e| corrupt("spec", e))?;
    let payload_bytes = array.payload.as_ref().map_or(0, |p| p.len() as i64);
    let constraints = if spec.constraints.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&spec.constraints).map_err(|e| corrupt("constraints", e))?)
    };
    if !children.ids.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO tasks (id, project, state, priority, image, cpu_millicores, memory_mib, constraints, spec, payload, \
                 payload_bytes, created_at, attempt, charged_attempts, max_attempts, backoff_seconds, cancel_requested, not_before, \
                 updated_at, shape, waiting_on, array_id, array_index, retry_rules) \
                 SELECT c.id, $5::text, c.state, $6::int, $7::text, $8::bigint, $9::bigint, $10::text, '', NULL, $11::bigint, \
                 $12::bigint, 0, 0, $13::bigint, $14::bigint, false, $15::bigint, $12::bigint, $16::bigint, c.waiting_on, $17::text, c.idx, \
                 $18::text \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS c(id, state, waiting_on, idx)",
            )
            .await
            .map_err(error)?;
        tx.execute(
            &insert,
            &[
                &children.ids,
                &children.states,
                &children.waiting_on,
                &children.indexes,
                &spec.project,
                &spec.priority,
                &spec.image,
                &i64::from(spec.resources.cpu_millicores),
                &i64::from(spec.resources.memory_mib),
                &constraints,
                &payload_bytes,
                &array.created_at.millis(),
                &i64::from(spec.retry.max_attempts),
                &i64::from(spec.retry.backoff_seconds),
                &spec.first_start(array.created_at).millis(),
                &spec.placement_shape(key),
                &id,
                &crate::workflow::rules_text(spec)?,
            ],
        )
        .await
        .map_err(|e| duplicate(e, &children.ids[0]))?;
    }
    // Its labels, once, under its id: a list by label finds its children.
    if !spec.labels.is_empty() {
        let (keys, values): (Vec<&str>, Vec<&str>) = spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).unzip();
        let ids = vec![id.as_str(); keys.len()];
        let insert = tx
            .prepare_cached("INSERT INTO task_labels (task_id, key, value) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])")
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&ids, &keys, &values]).await.map_err(error)?;
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO arrays (id, project, spec, payload, payload_bytes, size, children, parallelism, fail_fast, state, \
             waiting_on, admitted, remaining, retry_of, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $7, $13, $14)",
        )
        .await
        .map_err(error)?;
    tx.execute(
        &insert,
        &[
            &id,
            &spec.project,
            &spec_json,
            &array.payload,
            &payload_bytes,
            &i64::from(settings.size),
            &i64::from(array.children.count),
            &settings.parallelism.map(i64::from),
            &(settings.failure_policy == shepherd_core::FailurePolicy::FailFast),
            &if running { "running" } else { "waiting" },
            &waiting_on,
            &children.admitted,
            &array.retry_of,
            &array.created_at.millis(),
        ],
    )
    .await
    .map_err(|e| duplicate(e, &id))?;
    Ok(())
}

const ARRAY_COLUMNS: &str = "id, project, spec, state, size, children, parallelism, fail_fast, reason, retry_of, created_at, finished_at, \
     waiting_on";

/// An array's row (of [`ARRAY_COLUMNS`]) as its status, counts filled in
/// from its children.
async fn array_status(client: &impl GenericClient, row: &tokio_postgres::Row) -> Result<shepherd_core::ArrayStatus, StoreError> {
    let id: String = row.get(0);
    let spec: shepherd_core::TaskSpec =
        serde_json::from_str(row.get::<_, &str>(2)).map_err(|e| corrupt(&format!("array {id}: spec"), e))?;
    let mut counts: std::collections::BTreeMap<String, u64> = TaskState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    let stmt = client.prepare_cached("SELECT state, COUNT(*) FROM tasks WHERE array_id = $1 GROUP BY state").await.map_err(error)?;
    for r in client.query(&stmt, &[&id]).await.map_err(error)? {
        counts.insert(r.get(0), r.get::<_, i64>(1).max(0) as u64);
    }
    let stmt = client
        .prepare_cached(
            "SELECT array_index FROM tasks WHERE array_id = $1 AND state IN ('failed', 'timed_out') ORDER BY array_index LIMIT 1000",
        )
        .await
        .map_err(error)?;
    let failed_indices = client.query(&stmt, &[&id]).await.map_err(error)?.iter().map(|r| to_u32(r.get(0))).collect();
    let state: String = row.get(3);
    let reason = if state == "waiting" {
        let left: i64 = row.get(12);
        Some(format!("waiting for {left} of {} dependencies", spec.depends_on.iter().filter(|d| d.on != DependOn::Each).count()))
    } else {
        row.get(8)
    };
    Ok(shepherd_core::ArrayStatus {
        project: row.get(1),
        state,
        size: to_u32(row.get(4)),
        children: to_u32(row.get(5)),
        parallelism: row.get::<_, Option<i64>>(6).map(to_u32),
        failure_policy: if row.get(7) { shepherd_core::FailurePolicy::FailFast } else { shepherd_core::FailurePolicy::FinishAll },
        counts,
        failed_indices,
        reason,
        depends_on: spec.depends_on.clone(),
        retry_of: row.get(9),
        image: spec.image.clone(),
        command: spec.command.clone(),
        created_at: Timestamp(row.get(10)),
        finished_at: row.get::<_, Option<i64>>(11).map(Timestamp),
        id,
    })
}

/// The [`Store`](crate::Store) methods on workflows, as `pg_` methods its
/// impl (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_submit(&self, submission: Submission) -> Result<Submitted, StoreError> {
        // A key used before: its answer, without a write (or an audit number).
        if let Some(idem) = &submission.idempotency {
            if let Some((request, status, response)) = self.pg_idempotent_answer(&idem.project, &idem.key, Timestamp::now()).await? {
                if request != idem.request {
                    return Err(StoreError::IdempotencyConflict(idem.key.clone()));
                }
                return Ok(Submitted::Replayed { status, response });
            }
        }
        let numbers = reserve_audit_numbers(&self.counters, &submission.audit).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let (mut events, mut cascade) = (Vec::new(), Vec::new());
        let submitted = submit(&tx, &submission, &self.shape_key, now, &mut events, &mut cascade).await?;
        if submitted != Submitted::Created {
            // Nothing was written: the transaction rolls back as it drops.
            return Ok(submitted);
        }
        append_events(&tx, now, &events).await?;
        append_audit(&tx, &submission.audit, &numbers).await?;
        let changes: Vec<ClusterEvent> = cascade.iter().filter_map(|r| r.as_ref().ok()).map(Applied::event).collect();
        append_events(&tx, now, &changes).await?;
        tx.commit().await.map_err(error)?;
        if let Some(observer) = self.observer.get() {
            observer.committed(1, started.elapsed());
            for entry in &submission.entries {
                match entry {
                    Entry::Task(t) => observer.created(&t.spec.project, 1),
                    Entry::Array(a) => observer.created(&a.spec.project, u64::from(a.children.count)),
                }
            }
            observer.applied(&cascade);
        }
        Ok(submitted)
    }

    pub(super) async fn pg_idempotent_answer(
        &self,
        project: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<(String, u16, String)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT request, status, response FROM idempotency_keys WHERE project = $1 AND key = $2 AND created_at > $3",
                &[&project, &key, &(now.millis() - IDEMPOTENCY_TTL_MS)],
            )
            .await
            .map_err(error)?;
        Ok(row.map(|r| (r.get(0), r.get::<_, i32>(1).clamp(0, i32::from(u16::MAX)) as u16, r.get(2))))
    }

    pub(super) async fn pg_prune_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM idempotency_keys WHERE created_at < $1", &[&before.millis()]).await.map_err(error)
    }

    pub(super) async fn pg_get_array(&self, id: &str) -> Result<Option<shepherd_core::ArrayStatus>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("SELECT {ARRAY_COLUMNS} FROM arrays WHERE id = $1")).await.map_err(error)?;
        match client.query_opt(&stmt, &[&id]).await.map_err(error)? {
            Some(row) => Ok(Some(array_status(&client, &row).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn pg_list_arrays(
        &self,
        project: Option<String>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<shepherd_core::ArrayStatus>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ARRAY_COLUMNS} FROM arrays WHERE ($1::text IS NULL OR project = $1) AND ($2::text IS NULL OR id < $2) \
                 ORDER BY id DESC LIMIT $3"
            ))
            .await
            .map_err(error)?;
        let mut out = Vec::new();
        for row in client.query(&stmt, &[&project, &before, &(limit.clamp(1, 1000) as i64)]).await.map_err(error)? {
            out.push(array_status(&client, &row).await?);
        }
        Ok(out)
    }

    pub(super) async fn pg_array_source(&self, id: &str) -> Result<Option<ArraySource>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client.query_opt("SELECT project, spec, payload FROM arrays WHERE id = $1", &[&id]).await.map_err(error)? else {
            return Ok(None);
        };
        let spec = serde_json::from_str(row.get::<_, &str>(1)).map_err(|e| corrupt(&format!("array {id}: spec"), e))?;
        let failed = client
            .query("SELECT array_index FROM tasks WHERE array_id = $1 AND state IN ('failed', 'timed_out') ORDER BY array_index", &[&id])
            .await
            .map_err(error)?
            .iter()
            .map(|r| to_u32(r.get(0)))
            .collect();
        Ok(Some(ArraySource { project: row.get(0), spec, payload: row.get(2), failed }))
    }

    pub(super) async fn pg_cancel_array(
        &self,
        project: Option<String>,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Vec<ApplyResult>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let mut results = Vec::new();
        if workflow::cancel_array(&tx, project.as_deref(), id, now, &mut results).await?.is_none() {
            return Ok(None);
        }
        let changes: Vec<ClusterEvent> = results.iter().filter_map(|r| r.as_ref().ok()).map(Applied::event).collect();
        append_events(&tx, now, &changes).await?;
        tx.commit().await.map_err(error)?;
        self.observer.applied(&results);
        Ok(Some(results))
    }

    pub(super) async fn pg_dependency_edges(&self, id: &str, limit: usize) -> Result<Vec<(String, String, DependOn)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT task_id, dep_id, cond FROM task_deps WHERE task_id = $1 UNION ALL \
                 SELECT task_id, dep_id, cond FROM task_deps WHERE dep_id = $1 LIMIT $2",
                &[&id, &(limit as i64)],
            )
            .await
            .map_err(error)?;
        rows.iter()
            .map(|r| {
                let cond: &str = r.get(2);
                let on = DependOn::parse(cond).ok_or_else(|| StoreError::Corrupt(format!("dependency condition `{cond}`")))?;
                Ok((r.get(0), r.get(1), on))
            })
            .collect()
    }
}

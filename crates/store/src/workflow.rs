//! Workflows in the store: what a submission with arrays and dependencies
//! stores, and the records it reads back. Both backends keep the same
//! tables: `arrays` (one row per array: its spec once, its counts),
//! children in `tasks` with an empty `spec` (read through their array's),
//! `task_deps` (one row per dependency, `each` between arrays as one row),
//! and `idempotency_keys`.

use shepherd_core::{ArraySpec, DependOn, NewTask, TaskId, TaskSpec, Timestamp};

/// A new array: its spec (with `array` set, payload stripped) stored once,
/// and its children, by id and index.
#[derive(Debug, Clone)]
pub struct NewArray {
    pub id: TaskId,
    pub created_at: Timestamp,
    pub spec: TaskSpec,
    pub payload: Option<Vec<u8>>,
    /// Every index of the array, or, for a retry of failed children, only those.
    pub children: Children,
    /// The array whose failed children this one runs again.
    pub retry_of: Option<String>,
}

impl NewArray {
    /// Its array settings (the spec's `array`).
    pub fn array(&self) -> ArraySpec {
        self.spec.array.unwrap_or(ArraySpec { size: self.children.count, parallelism: None, failure_policy: Default::default() })
    }
}

/// How many children of an array exist as rows ahead of the queue: a store
/// makes the first ones with the array and the next ones as the queue
/// reaches them (a child of the last half placed or ended), so that
/// creating an array of 100,000 writes 10,000 rows, and a scheduling pass
/// (at most 10 pages of 1,000) never runs out of an array's children.
pub const ARRAY_WINDOW: u32 = 10_000;

/// An array's children: child `k` (0-based, in index order) has the id
/// `first.offset(k)` and the index `k`, or for a retry of some indices,
/// the `k`-th of them. Nothing per child is stored to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Children {
    /// The first child's id (a [`TaskId::block`]).
    pub first: TaskId,
    /// Their indices, ascending, when not `0..count`.
    pub indices: Option<Vec<u32>>,
    /// How many.
    pub count: u32,
}

impl Children {
    /// Children `0..count`.
    pub fn all(first: TaskId, count: u32) -> Children {
        Children { first, indices: None, count }
    }

    /// Children of some indices (ascending, distinct).
    pub fn of(first: TaskId, indices: Vec<u32>) -> Children {
        Children { first, count: indices.len() as u32, indices: Some(indices) }
    }

    /// The `k`-th child's id.
    pub fn id(&self, k: u32) -> TaskId {
        self.first.offset(k)
    }

    /// The `k`-th child's index.
    pub fn index(&self, k: u32) -> u32 {
        self.indices.as_ref().and_then(|i| i.get(k as usize).copied()).unwrap_or(k)
    }

    /// Which child has `index`, if one does.
    pub fn position(&self, index: u32) -> Option<u32> {
        match &self.indices {
            None => (index < self.count).then_some(index),
            Some(indices) => indices.binary_search(&index).ok().map(|k| k as u32),
        }
    }

    /// Every child, `(id, index)`, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, u32)> + '_ {
        (0..self.count).map(|k| (self.id(k), self.index(k)))
    }

    /// The indices as a row keeps them (`None`: `0..count`).
    pub(crate) fn indices_text(&self) -> Option<String> {
        self.indices.as_ref().map(|i| i.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
    }

    /// Children from an array row's columns; `None` for an array made
    /// before children were numbered from a first id (all its rows exist).
    pub(crate) fn from_row(first: Option<&str>, indices: Option<&str>, count: i64) -> Result<Option<Children>, crate::StoreError> {
        let Some(first) = first else { return Ok(None) };
        let first = first.parse().map_err(|e| crate::StoreError::Corrupt(format!("array first child `{first}`: {e}")))?;
        let count = u32::try_from(count).map_err(|_| crate::StoreError::Corrupt(format!("array of {count} children")))?;
        match indices {
            None => Ok(Some(Children::all(first, count))),
            Some(text) => {
                let indices = text
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u32>().map_err(|e| crate::StoreError::Corrupt(format!("array indices: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(Children::of(first, indices)))
            }
        }
    }
}

/// One entry of a submission, in request order.
#[derive(Debug, Clone)]
pub enum Entry {
    Task(NewTask),
    Array(NewArray),
}

impl Entry {
    /// Its id (a task's or an array's).
    pub fn id(&self) -> TaskId {
        match self {
            Entry::Task(t) => t.id,
            Entry::Array(a) => a.id,
        }
    }

    /// Its spec.
    pub fn spec(&self) -> &TaskSpec {
        match self {
            Entry::Task(t) => &t.spec,
            Entry::Array(a) => &a.spec,
        }
    }
}

/// What [`crate::Store::submit`] stores in one transaction: tasks and
/// arrays, each with its dependencies (by id: the caller resolved batch
/// positions), the audit lines, and the idempotency key that stands for
/// the request.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub entries: Vec<Entry>,
    pub audit: Vec<crate::AuditEntry>,
    /// How errors name an entry's fields: `tasks[3].` for a batch, nothing
    /// for one task.
    pub batch: bool,
    pub idempotency: Option<IdempotencyKey>,
}

impl Submission {
    /// The field path of entry `index`'s `field`.
    pub fn field(&self, index: usize, field: &str) -> String {
        if self.batch {
            format!("tasks[{index}].{field}")
        } else {
            field.to_string()
        }
    }
}

/// An `Idempotency-Key` and the answer it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub project: String,
    pub key: String,
    /// SHA-256 (hex) of the route and body: the same key with another
    /// request is refused.
    pub request: String,
    /// The answer given the first time: its HTTP status and JSON body.
    pub status: u16,
    pub response: String,
    pub at: Timestamp,
}

/// What [`crate::Store::submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored.
    Created,
    /// The key was used within its lifetime by the same request: nothing
    /// was stored; this is the first answer.
    Replayed { status: u16, response: String },
}

/// What an array's children share, and which of them failed.
#[derive(Debug, Clone)]
pub struct ArraySource {
    pub project: String,
    /// The spec, `array` included, payload stripped.
    pub spec: TaskSpec,
    pub payload: Option<Vec<u8>>,
    /// Indices of the children that failed or timed out, ascending.
    pub failed: Vec<u32>,
}

/// How long an idempotency key is kept (24 h).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// The SQL both stores read a task's spec with: a child of an array keeps
/// an empty spec and reads its array's.
pub const SPEC_SQL: &str = "CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END";

/// The same for its payload.
pub const PAYLOAD_SQL: &str =
    "CASE WHEN tasks.array_id IS NULL THEN tasks.payload ELSE (SELECT a.payload FROM arrays a WHERE a.id = tasks.array_id) END";

/// A stored spec as the task reads it: a child of an array gets its index
/// and the array's size in its environment.
pub fn child_spec(text: &str, index: Option<i64>) -> Result<TaskSpec, crate::StoreError> {
    let mut spec: TaskSpec = serde_json::from_str(text).map_err(|e| crate::StoreError::Corrupt(format!("spec: {e}")))?;
    if let (Some(index), Some(array)) = (index, spec.array) {
        spec.env.extend(shepherd_core::workflow::child_env(index.max(0) as u32, array.size));
    }
    Ok(spec)
}

/// Where a child stands in its array, from its row.
pub fn member(spec: &TaskSpec, array_id: Option<String>, index: Option<i64>) -> Option<shepherd_core::ArrayMember> {
    let (id, index) = (array_id?, index?);
    Some(shepherd_core::ArrayMember { id, index: index.max(0) as u32, size: spec.array.map_or(0, |a| a.size) })
}

/// Why a waiting task waits, from its count of unmet dependencies.
pub fn waiting_reason(spec: &TaskSpec, child: bool, waiting_on: i64) -> String {
    match (child, waiting_on) {
        (false, n) => format!("waiting for {n} of {} dependencies", spec.depends_on.len().max(n as usize)),
        (true, 0) => match spec.array.and_then(|a| a.parallelism) {
            Some(p) => format!("waiting for a place: the array runs at most {p} children at once (or for its dependencies)"),
            None => "waiting for its array's dependencies".to_string(),
        },
        (true, n) => format!("waiting for {n} dependencies (the same index of another array)"),
    }
}

/// The condition (for a task list) that a task has the label `key` =
/// `value` (placeholders of the backend's SQL), itself or through the array
/// it is a child of (an array's labels are kept once, under its id).
pub(crate) fn label_condition(key: &str, value: &str) -> String {
    format!(
        " AND (id IN (SELECT task_id FROM task_labels WHERE key = {key} AND value = {value}) \
         OR array_id IN (SELECT task_id FROM task_labels WHERE key = {key} AND value = {value}))"
    )
}

/// A task's retry rules as its row keeps them (`None`: it has none), so
/// that applying an event needs no spec.
pub fn rules_text(spec: &TaskSpec) -> Result<Option<String>, crate::StoreError> {
    if spec.retry.on.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&spec.retry.on).map(Some).map_err(|e| crate::StoreError::Corrupt(format!("retry rules: {e}")))
}

/// A row's retry rules.
pub fn parse_rules(text: Option<&str>) -> Result<Vec<shepherd_core::RetryRule>, crate::StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| crate::StoreError::Corrupt(format!("retry rules: {e}"))),
    }
}

/// A task's constraints as its row keeps them (`None`: it has none).
pub(crate) fn constraints_text(spec: &TaskSpec) -> Result<Option<String>, crate::StoreError> {
    if spec.constraints.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&spec.constraints).map(Some).map_err(|e| crate::StoreError::Corrupt(e.to_string()))
}

/// The event of a task just stored, in `state` (queued or waiting).
pub(crate) fn created_event(id: TaskId, project: &str, state: shepherd_core::TaskState, at: Timestamp) -> shepherd_core::ClusterEvent {
    shepherd_core::ClusterEvent::Task(shepherd_core::events::TaskChange {
        task: id,
        project: project.to_string(),
        state,
        from: None,
        attempt: 0,
        node: None,
        exit_code: None,
        reason: None,
        at,
    })
}

/// How child `index` of a new array stands with the arrays it pairs with
/// (`each`, their children's states by index): how many pairs it still
/// waits for, and the first that can never succeed (ended otherwise, or
/// missing), which ends it.
pub(crate) fn pair_wait<'a>(
    index: i64,
    pairs: impl IntoIterator<Item = (&'a str, &'a std::collections::HashMap<i64, shepherd_core::TaskState>)>,
) -> (i64, Option<String>) {
    let (mut waiting, mut failed) = (0i64, None);
    for (dep, states) in pairs {
        match states.get(&index) {
            Some(shepherd_core::TaskState::Succeeded) => {}
            Some(state) if state.is_terminal() => {
                failed.get_or_insert_with(|| format!("{dep}[{index}]"));
            }
            Some(_) => waiting += 1,
            None => {
                failed.get_or_insert_with(|| format!("{dep}[{index}] (no such child)"));
            }
        }
    }
    (waiting, failed)
}

/// A dependency as a row keeps it.
pub(crate) fn dep_rows(spec: &TaskSpec) -> Vec<(String, DependOn)> {
    spec.depends_on
        .iter()
        .filter_map(|d| match &d.task {
            shepherd_core::DependencyTarget::Id(id) => Some((id.clone(), d.on)),
            shepherd_core::DependencyTarget::Position(_) => None,
        })
        .collect()
}

/// An array row's counters, as the hooks read them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ArrayCounts {
    pub children: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub remaining: i64,
    pub admitted: i64,
    pub parallelism: Option<i64>,
    pub fail_fast: bool,
    pub stopping: bool,
}

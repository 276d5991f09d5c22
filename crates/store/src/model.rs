//! The records the store takes and returns.

use shepherd_core::{Decision, IllegalTransition, LogStream, NodeState, Resources, TaskId, TaskSpec, TaskState, Timestamp};
use std::collections::BTreeMap;

/// Which tasks `list_tasks` returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub project: Option<String>,
    /// Every (key, value) must match.
    pub labels: Vec<(String, String)>,
    /// Only tasks older than this id (the previous page's `next_cursor`).
    pub before: Option<TaskId>,
    /// Only the children of this array.
    pub array: Option<String>,
    pub limit: usize,
}

/// A page of tasks and where the next one starts.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<shepherd_core::Task>,
    pub next_cursor: Option<TaskId>,
}

/// What one event did.
pub type ApplyResult = Result<Applied, ApplyError>;

/// A persisted transition.
#[derive(Debug, Clone)]
pub struct Applied {
    pub task_id: TaskId,
    pub from: TaskState,
    pub decision: Decision,
    /// The task's current attempt number after the change.
    pub attempt: u32,
    /// The node of the current attempt, if any.
    pub node_id: Option<String>,
    /// The task's project.
    pub project: String,
    /// When the task was created.
    pub created_at: Timestamp,
    /// When its latest attempt started (after the change), if one did.
    pub started_at: Option<Timestamp>,
    /// When the change happened.
    pub at: Timestamp,
}

impl Applied {
    /// The event the change stands for in the cluster's event stream.
    pub fn event(&self) -> shepherd_core::ClusterEvent {
        shepherd_core::ClusterEvent::Task(shepherd_core::events::TaskChange {
            task: self.task_id,
            project: self.project.clone(),
            state: self.decision.to,
            from: Some(self.from),
            attempt: self.attempt,
            node: self.node_id.clone(),
            exit_code: self.decision.exit_code,
            reason: self.decision.reason.clone(),
            at: self.at,
        })
    }
}

/// Why an event was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("no task with id {0}")]
    NotFound(TaskId),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// A node reported about a task whose current attempt is not its own.
    #[error("task {0} is not on the reporting node")]
    NotOnNode(TaskId),
}

/// A queued task as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct QueuedTask {
    pub id: TaskId,
    pub spec: TaskSpec,
    /// Its placement shape ([`shepherd_core::shape`]).
    pub shape: i64,
    /// Whether it has a payload (which the queue read leaves out).
    pub has_payload: bool,
}

impl QueuedTask {
    /// Where a read that ended at this task continues.
    pub fn cursor(&self) -> QueueCursor {
        QueueCursor { priority: self.spec.priority, id: self.id }
    }
}

/// A place in a project's queue (ordered by priority, highest first, then
/// by id, oldest first): a read continues after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCursor {
    pub priority: i32,
    pub id: TaskId,
}

/// What [`crate::Store::queued_tasks`] read.
#[derive(Debug, Clone, Default)]
pub struct QueuePage {
    /// Per project in queue order.
    pub tasks: Vec<QueuedTask>,
    /// The projects whose share was filled, so more may wait: where to go on.
    pub more: BTreeMap<String, QueueCursor>,
}

/// Which queued tasks [`crate::Store::queued_tasks`] reads: tasks ready to
/// place (past their retry backoff), in queue order, a share per project.
#[derive(Debug, Clone, Default)]
pub struct QueueQuery {
    /// Tasks to read in all, shared evenly among the projects read (at
    /// least 16 each), so that no project crowds out the others.
    pub limit: usize,
    /// `None`: every project with ready tasks, from the head of its queue.
    /// Otherwise only these projects, each after its cursor (or from the head).
    pub projects: Option<BTreeMap<String, Option<QueueCursor>>>,
    /// Leave out tasks of these placement shapes (known not to fit).
    pub skip_shapes: Vec<i64>,
}

/// A task that holds a place on a node.
#[derive(Debug, Clone)]
pub struct ActiveTask {
    pub id: TaskId,
    pub project: String,
    pub labels: BTreeMap<String, String>,
    /// The code it was made from (for codes' concurrency limits).
    pub code: Option<String>,
    pub state: TaskState,
    pub node_id: String,
    pub attempt: u32,
    pub resources: Resources,
    pub cancel_requested: bool,
    /// GPUs it holds.
    pub gpus: u32,
}

/// A stored log chunk, with its position.
#[derive(Debug, Clone)]
pub struct StoredLogChunk {
    /// Increases with every chunk appended; pass it back as `after`.
    pub seq: i64,
    pub attempt: u32,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// One node's heartbeat for [`crate::Store::touch_nodes`]: when it was
/// last heard, and its images if they changed since the last write.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBeat {
    pub id: String,
    pub at: Timestamp,
    pub images: Option<Vec<String>>,
}

/// A node: a host with an agent and a driver.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub id: String,
    pub hostname: String,
    pub state: NodeState,
    pub driver: String,
    pub capacity: Resources,
    pub max_tasks: u32,
    pub labels: BTreeMap<String, String>,
    /// Images the node's engine holds (for image-locality scoring), and `warm=<key>` entries (warm locality).
    pub images: Vec<String>,
    pub registered_at: Timestamp,
    pub last_heartbeat_at: Timestamp,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    pub created_at: Timestamp,
    pub limits: shepherd_core::ProjectLimits,
    /// What its tasks may use beyond CPU and memory (set apart from the
    /// project's creation: `set_project_policy`).
    pub policy: shepherd_core::ProjectPolicy,
}

/// An API token of a project. The token itself is never stored: only its
/// hash, by which it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (shown in lists and the audit log, used to revoke).
    pub id: String,
    pub project: String,
    /// What the token is for, as its creator said.
    pub name: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A secret's name and when it was last set; the value is never listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: Timestamp,
}

/// One line of the audit log: who did what to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Assigned by the store; ignored on append.
    pub seq: i64,
    pub at: Timestamp,
    /// `admin`, or `token:ID` for a project token.
    pub actor: String,
    /// The project acted on, if any.
    pub project: Option<String>,
    /// e.g. `task.create`, `task.cancel`, `project.create`, `token.revoke`.
    pub action: String,
    /// What was acted on (a task id, a token id, a secret name, a node id).
    pub target: String,
    pub detail: Option<String>,
}

/// The right to act as the cluster's leader (run the scheduler and node
/// failure detection) until `expires_at`. `epoch` grows with every change
/// of holder: a write made under an older epoch is refused (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    /// By the store's clock (PostgreSQL's, shared by all servers).
    pub expires_at: Timestamp,
}

/// A server of the cluster, as it last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    pub id: String,
    /// Where its API listens.
    pub url: String,
    /// `leader` or `follower`.
    pub role: String,
    pub started_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// A code's concurrency limit: at most `max` of `project`'s tasks made
/// from code `name` hold a node at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeLimit {
    pub project: String,
    pub name: String,
    pub max: u32,
}

/// What firing a schedule's due slots changes, written in one transaction
/// ([`crate::Store::fire_schedule`]) only if the schedule is still active
/// with `expected_next` as its next slot: so each slot fires once, however
/// many servers look.
#[derive(Debug, Clone)]
pub struct ScheduleFiring {
    pub id: String,
    pub expected_next: Timestamp,
    /// The slot after these; `None`: the schedule is done.
    pub next: Option<Timestamp>,
    /// Slots skipped this time (added to the schedule's count).
    pub skipped: u32,
    /// Of those, slots whose task could not be made (added to `failed`).
    pub failed: u32,
    /// Why they could not (the schedule's `reason`; `None` clears it).
    pub reason: Option<String>,
    /// One task per slot fired (added to the schedule's count; the last
    /// becomes its `last_task`).
    pub tasks: Vec<shepherd_core::NewTask>,
    pub audit: Vec<AuditEntry>,
    pub at: Timestamp,
}

/// A task's webhook: where its end is posted, and how that went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub task_id: TaskId,
    pub project: String,
    pub url: String,
    /// `pending` (the task has not ended, or a try failed and another is
    /// due), `delivered` (a 2xx answer), `failed` (given up).
    pub state: String,
    /// Tries so far.
    pub attempts: u32,
    /// When the next try is due, while pending.
    pub next_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    /// Every try, oldest first.
    pub history: Vec<WebhookAttempt>,
}

/// One try at posting a task's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub number: u32,
    pub at: Timestamp,
    /// The HTTP status the endpoint answered, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed (a connection error, a timeout, a non-2xx status).
    pub error: Option<String>,
}

/// What follows a webhook try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookNext {
    Delivered,
    RetryAt(Timestamp),
    GiveUp,
}

/// Which usage [`Store::usage`](crate::Store::usage) sums: attempts that
/// ended in `[from, to)`, per project and per `bucket_ms` of their end time.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub project: Option<String>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub bucket_ms: i64,
}

/// What one project's attempts used in one bucket of time.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub project: String,
    /// The bucket's start.
    pub start: Timestamp,
    /// Tasks with an attempt that ended in the bucket.
    pub tasks: u64,
    pub attempts: u64,
    /// CPU time, from the attempts whose node measured it.
    pub cpu_ms: u64,
    /// Peak memory times run time, in byte-milliseconds (measured attempts).
    pub memory_byte_ms: f64,
    /// Run time (start to end) of the attempts that started.
    pub wall_ms: u64,
}

/// A stored code package, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// SHA-256 of the zip, lowercase hex.
    pub digest: String,
    pub size: u64,
    pub created_at: Timestamp,
}

//! # shepherd-store
//!
//! Shepherd's durable state behind one trait, [`Store`]: tasks and their
//! attempts, task logs, and nodes. The embedded implementation,
//! [`SqliteStore`], keeps everything in one SQLite database in WAL mode.
//!
//! Invariants:
//! - A write is on disk (committed) before its future resolves, so a caller
//!   may acknowledge it to a user.
//! - Every change of a task's state goes through [`shepherd_core::lifecycle::decide`]
//!   inside the transaction that persists it ([`Store::apply`]); the store
//!   never writes a state of its own accord.
//! - The SQL is kept portable (no SQLite-only syntax in queries) so a
//!   PostgreSQL implementation can share the semantics.

pub mod conformance;
pub mod history;
pub mod migrate;
mod model;
pub mod postgres;
pub mod retention;
pub mod sqlite;
pub mod workflow;

pub use model::*;
pub use postgres::PgStore;
/// Kept by the store, defined in `shepherd-core` (the agent shares them).
pub use shepherd_core::{LaunchSpec, LogChunk, LogStream, NodeState};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
pub use workflow::{ArraySource, Children, Entry, IdempotencyKey, NewArray, Submission, Submitted, ARRAY_WINDOW};

use async_trait::async_trait;
use shepherd_core::{
    Code, CodeSpec, Event, EventCursor, Machine, MachineState, NewTask, Schedule, ScheduleState, StoredEvent, Task, TaskId, Timestamp,
};

/// Failures of the store itself (not of the request it was given), the
/// same whatever database is behind it: each backend maps its own errors
/// onto these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or the connection broke: the same
    /// request may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A concurrent write conflicted (a serialization failure, a busy
    /// database): the same request may succeed if tried again.
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// Any other failure of the database, with its own message. (Part of
    /// the message, not a separate source: a chain says it once.)
    #[error("database error: {0}")]
    Database(Box<dyn std::error::Error + Send + Sync>),
    /// The database holds a newer schema than this build knows.
    #[error("the database is at schema version {found}; this shepherd knows versions up to {known}: run a newer shepherd")]
    NewerSchema { found: i64, known: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("a task with id {0} already exists")]
    Duplicate(TaskId),
    #[error("the store is shut down")]
    Closed,
    /// A leader-only write under a lease that is no longer the current one.
    #[error("not the leader any more (lease epoch {epoch} is over)")]
    Fenced { epoch: i64 },
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A request the store refused for what it names (a dependency that
    /// is not there, or another project's): `field` says where.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// An idempotency key used before, within its lifetime, for another request.
    #[error("idempotency key `{0}` was used for a different request")]
    IdempotencyConflict(String),
}

/// A store's connection pool: connections at most, open and idle, callers
/// waiting now, and how many waited and for how long in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStatus {
    pub max: u64,
    pub open: u64,
    pub idle: u64,
    pub waiting: u64,
    pub waits: u64,
    pub waited_seconds: f64,
}

impl StoreError {
    /// Whether trying the same request again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

/// Shepherd's durable state. Implementations: [`SqliteStore`] (embedded);
/// PostgreSQL later, with the same semantics.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores new tasks in one transaction: all of them or none.
    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<(), StoreError>;

    /// Stores new tasks and the audit log lines that record who created
    /// them, in one transaction.
    async fn create_tasks_audited(&self, tasks: Vec<NewTask>, audit: Vec<AuditEntry>) -> Result<(), StoreError>;

    /// Stores a submission: tasks and arrays with their dependencies,
    /// audit lines and idempotency key, in one transaction (all or none).
    /// Each dependency must be a task or array of the entry's own project
    /// ([`StoreError::Invalid`] naming the field otherwise); one that has
    /// already ended in a way that can never satisfy it ends its dependent
    /// at once. A key used before for the same request stores nothing and
    /// gives back the first answer ([`Submitted::Replayed`]).
    async fn submit(&self, submission: Submission) -> Result<Submitted, StoreError>;

    /// The answer an idempotency key stands for, if it was used in the
    /// last 24 hours: `(request hash, status, response)`.
    async fn idempotent_answer(&self, project: &str, key: &str, now: Timestamp) -> Result<Option<(String, u16, String)>, StoreError>;

    /// Forgets idempotency keys made before `before`; how many went.
    async fn prune_idempotency(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// One array with its children's counts.
    async fn get_array(&self, id: &str) -> Result<Option<shepherd_core::ArrayStatus>, StoreError>;

    /// Arrays of one project or all, newest first, before `before` (an id).
    async fn list_arrays(
        &self,
        project: Option<String>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<shepherd_core::ArrayStatus>, StoreError>;

    /// What an array's children share (spec with `array`, payload) and
    /// the indices of those that failed or timed out (all of them).
    async fn array_source(&self, id: &str) -> Result<Option<ArraySource>, StoreError>;

    /// Cancels every child of an array that has not ended, in one
    /// transaction (of `project` only, when given); `None` if there is no
    /// such array. What changed, for the caller to stop attempts on nodes.
    async fn cancel_array(&self, project: Option<String>, id: &str, now: Timestamp) -> Result<Option<Vec<ApplyResult>>, StoreError>;

    /// The dependencies of `id` (a task or an array) and its dependents,
    /// as edges `(dependent, dependency, on)`, at most `limit`.
    async fn dependency_edges(&self, id: &str, limit: usize) -> Result<Vec<(String, String, shepherd_core::DependOn)>, StoreError>;

    /// What a task's latest attempt that wrote one put in its result file.
    async fn task_result(&self, id: TaskId) -> Result<Option<Vec<u8>>, StoreError>;

    /// One task with its attempts.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// A page of tasks, newest first.
    async fn list_tasks(&self, filter: TaskFilter) -> Result<TaskPage, StoreError>;

    /// Applies lifecycle events, each through the state machine, in one
    /// transaction. Each event succeeds or is refused on its own.
    async fn apply(&self, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError>;

    /// Applies events that `node` reported, as [`Store::apply`] does, except
    /// that an event about a task whose current attempt is not on `node`,
    /// or one that names no attempt (a placement, a cancel request), is
    /// refused with [`ApplyError::NotOnNode`], checked in the same
    /// transaction as the write.
    async fn apply_reported(&self, node: String, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError>;

    /// Queued tasks ready to place (past their retry backoff), per project
    /// highest priority first, oldest first within a priority, as `query`
    /// says (a share per project, after a cursor, skipping shapes).
    async fn queued_tasks(&self, now: Timestamp, query: QueueQuery) -> Result<QueuePage, StoreError>;

    /// Tasks that hold a place on a node (scheduled or running).
    async fn active_tasks(&self) -> Result<Vec<ActiveTask>, StoreError>;

    /// The tasks scheduled on or running on one node (an index lookup, not
    /// a scan of every active task).
    async fn active_tasks_on(&self, node_id: &str) -> Result<Vec<ActiveTask>, StoreError>;

    /// The launch specs of several tasks, in the order asked (a scheduling
    /// pass reads those of all its placements at once).
    async fn launch_specs(&self, ids: Vec<TaskId>) -> Result<Vec<Option<LaunchSpec>>, StoreError> {
        futures_util::future::join_all(ids.into_iter().map(|id| self.launch_spec(id))).await.into_iter().collect()
    }

    /// What an agent needs to run one attempt of a task.
    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, StoreError>;

    /// Appends log chunks.
    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), StoreError>;

    /// Log chunks of a task after `after` (a chunk's `seq`), oldest first.
    async fn read_logs(&self, id: TaskId, after: i64, limit: usize) -> Result<Vec<StoredLogChunk>, StoreError>;

    /// Registers a node or updates it.
    async fn upsert_node(&self, node: NodeRecord) -> Result<(), StoreError>;

    /// All known nodes.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// One node, by id.
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;

    /// Records a heartbeat (time and images) without touching anything
    /// else, so it never undoes a concurrent drain. Returns the node's
    /// state, `None` if the node is unknown.
    async fn touch_node(&self, id: &str, at: Timestamp, images: Vec<String>) -> Result<Option<NodeState>, StoreError>;

    /// Heartbeats of many nodes in one write (images only where given);
    /// each node's state, in order (`None`: no such node).
    async fn touch_nodes(&self, beats: Vec<NodeBeat>) -> Result<Vec<Option<NodeState>>, StoreError>;

    /// Sets a node's state (drain, down, ready). False if the node is unknown.
    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, StoreError>;

    /// [`Store::set_node_state`] by the leader: refused (`Fenced`) unless
    /// `lease` is still the current lease, checked in the same transaction,
    /// so a paused old leader that wakes cannot mark a node down that the
    /// new one hears from.
    async fn set_node_state_as_leader(&self, id: &str, state: NodeState, lease: &Lease) -> Result<bool, StoreError>;

    /// Counts of tasks per state, of one project or of all.
    async fn count_by_state(&self, project: Option<String>) -> Result<Vec<(shepherd_core::TaskState, u64)>, StoreError>;

    /// How many of a project's tasks are queued.
    async fn count_queued(&self, project: &str) -> Result<u64, StoreError>;

    /// Creates a project; false if one of that name exists.
    async fn create_project(&self, project: Project) -> Result<bool, StoreError>;

    /// One project.
    async fn get_project(&self, name: &str) -> Result<Option<Project>, StoreError>;

    /// Every project, by name.
    async fn list_projects(&self) -> Result<Vec<Project>, StoreError>;

    /// Replaces a project's limits; false if there is no such project.
    async fn set_project_limits(&self, name: &str, limits: shepherd_core::ProjectLimits) -> Result<bool, StoreError>;

    /// Stores a new token by the hash of its secret part.
    async fn create_token(&self, token: TokenRecord, hash: String) -> Result<(), StoreError>;

    /// The live (not revoked) token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// A project's tokens, revoked ones included.
    async fn list_tokens(&self, project: &str) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revokes a project's token; false if it has no such live token.
    async fn revoke_token(&self, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError>;

    /// Sets (creates or replaces) a project secret.
    async fn put_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<(), StoreError>;

    /// Deletes a project secret; false if there was none.
    async fn delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError>;

    /// A project's secrets, names only.
    async fn list_secrets(&self, project: &str) -> Result<Vec<SecretInfo>, StoreError>;

    /// Appends to the audit log.
    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError>;

    /// Flushes and stops: writes already accepted are committed first. (A
    /// no-op for stores whose writes commit as they go.)
    fn close(&self) {}

    /// Takes the leader's lease for `holder`, or renews it if `holder` has
    /// it, for `ttl` by the store's clock; `None` while another holds an
    /// unexpired one. A new holder gets a higher epoch.
    async fn acquire_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease up if `holder` has it (a clean stop: the next leader
    /// need not wait for it to expire).
    async fn release_lease(&self, holder: &str) -> Result<(), StoreError>;

    /// [`Store::apply`] for leader-only writes (placements, lost attempts):
    /// in the same transaction, refused with [`StoreError::Fenced`] unless
    /// `lease` is still the current, unexpired lease.
    async fn apply_as_leader(&self, events: Vec<(TaskId, Event)>, now: Timestamp, lease: &Lease) -> Result<Vec<ApplyResult>, StoreError>;

    /// Records a server's heartbeat (and role).
    async fn touch_server(&self, server: ServerRecord) -> Result<(), StoreError>;

    /// Every server seen, by id.
    async fn list_servers(&self) -> Result<Vec<ServerRecord>, StoreError>;

    /// Sends a message to every server sharing this store (itself
    /// included), e.g. "assign this attempt to the agent you hold". A
    /// store that only one server uses has no one to tell: the default
    /// does nothing.
    async fn publish(&self, _message: String) -> Result<(), StoreError> {
        Ok(())
    }

    /// Messages [`Store::publish`]ed by any server, from now on; `None` for
    /// a store that only one server uses.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }

    /// The audit log, newest first: of one project or all, before `before` (a seq).
    async fn list_audit(&self, project: Option<String>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores a new revision of a code (numbered one past its latest, even
    /// if it was deleted) and makes it the code's current one.
    async fn push_code(&self, project: &str, spec: CodeSpec, at: Timestamp, rolled_back_from: Option<u32>) -> Result<Code, StoreError>;

    /// A live code's revision (`None`: its latest). A deleted code has none.
    async fn get_code(&self, project: &str, name: &str, revision: Option<u32>) -> Result<Option<Code>, StoreError>;

    /// The latest revision of every live code, of one project or all, by project then name.
    async fn list_codes(&self, project: Option<String>) -> Result<Vec<Code>, StoreError>;

    /// A live code's revisions, newest first.
    async fn code_revisions(&self, project: &str, name: &str) -> Result<Vec<Code>, StoreError>;

    /// Deletes a code: it can no longer be run or read; its revisions stay
    /// for the tasks that name them. False if there was no live code.
    async fn delete_code(&self, project: &str, name: &str) -> Result<bool, StoreError>;

    /// The concurrency limits of live codes that set one.
    async fn code_limits(&self) -> Result<Vec<CodeLimit>, StoreError>;

    /// Stores a new schedule.
    async fn create_schedule(&self, schedule: Schedule) -> Result<(), StoreError>;

    /// One schedule.
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError>;

    /// Schedules of one project or all, oldest first.
    async fn list_schedules(&self, project: Option<String>) -> Result<Vec<Schedule>, StoreError>;

    /// Sets a schedule's state and next slot (pause, resume, cancel); false
    /// if there is no such schedule or it is already cancelled.
    async fn set_schedule_state(&self, id: &str, state: ScheduleState, next_at: Option<Timestamp>) -> Result<bool, StoreError>;

    /// Active schedules whose next slot is at or before `now`, soonest first.
    async fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, StoreError>;

    /// The earliest next slot of any active schedule.
    async fn next_schedule_at(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Fires a schedule's slots: creates their tasks, moves its next slot
    /// on and adds to its counts, in one transaction, under `lease` — only
    /// if it is still active with `firing.expected_next` as its next slot
    /// (false otherwise, and nothing is written).
    async fn fire_schedule(&self, firing: ScheduleFiring, lease: &Lease) -> Result<bool, StoreError>;

    /// Stores a code package (a zip) for a project by its SHA-256 (storing
    /// the same one again changes nothing).
    async fn put_package(&self, project: &str, digest: &str, data: Vec<u8>, at: Timestamp) -> Result<(), StoreError>;

    /// A project's package, by its SHA-256.
    async fn get_package(&self, project: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether a project has a package, and its size.
    async fn package_size(&self, project: &str, digest: &str) -> Result<Option<u64>, StoreError>;

    /// A project's packages, oldest first (without their bytes).
    async fn list_packages(&self, project: &str) -> Result<Vec<PackageInfo>, StoreError>;

    /// Removes a project's package; false if it has none by that digest.
    async fn delete_package(&self, project: &str, digest: &str) -> Result<bool, StoreError>;

    /// Whether an unfinished task (queued, scheduled or running) of the
    /// project runs the package.
    async fn package_in_use(&self, project: &str, digest: &str) -> Result<bool, StoreError>;

    /// Records a task's progress; false if there is no such task.
    async fn set_progress(&self, id: TaskId, progress: shepherd_core::Progress) -> Result<bool, StoreError>;

    /// Records how far attempt `attempt` got before its task runs (its
    /// image's pull), in the same write that checks it is still the task's
    /// current attempt, waiting to start, on `node_id` (any node if `None`):
    /// a late report never lands on a task that started. False if not.
    async fn set_attempt_progress(
        &self,
        id: TaskId,
        attempt: u32,
        node_id: Option<String>,
        progress: shepherd_core::Progress,
    ) -> Result<bool, StoreError>;

    /// A project secret's value, set to `value` first if it has none (a
    /// secret Shepherd keeps for itself, such as the webhook secret).
    async fn ensure_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<Vec<u8>, StoreError>;

    /// Webhooks due a try: of ended tasks, pending, due at `now`, at most
    /// `per_project` of each project (its soonest), soonest first, `limit`
    /// in all (without their history).
    async fn due_webhooks(&self, now: Timestamp, limit: usize, per_project: usize) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Records a try at a task's webhook and what follows it.
    async fn record_webhook(&self, task: TaskId, attempt: WebhookAttempt, next: WebhookNext) -> Result<(), StoreError>;

    /// A task's webhook, with every try.
    async fn webhook_of(&self, task: TaskId) -> Result<Option<WebhookDelivery>, StoreError>;

    /// Events of the cluster's stream after `after` (from the oldest kept
    /// when `None`), oldest first, from at most `limit` stored rows after
    /// the one `after` is in (a row holds one write's events, never split).
    /// Only committed events, and nothing is later found before a cursor
    /// already returned. SQLite gives them in commit order. PostgreSQL
    /// gives them in the order of the writing transactions' ids, which are
    /// taken at a transaction's first write or lock: two transactions racing
    /// on one task (a leader's `Lost` against a node's report) may show in
    /// the other order; each event names its `from` state. PostgreSQL holds
    /// events back while any older transaction of the database server is
    /// still open.
    async fn read_events(&self, after: Option<EventCursor>, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The cursor of the newest event, if there is one (a stream that
    /// starts "now" starts after it).
    async fn latest_event(&self) -> Result<Option<EventCursor>, StoreError>;

    /// A queued task's place in line: 1 + the queued tasks of its project,
    /// and of every project, that come before it in queue order (higher
    /// priority, then older), each counted up to [`QUEUE_COUNT_CAP`] (a
    /// place beyond it reads `QUEUE_COUNT_CAP + 1`). `None` if it is not queued.
    async fn queue_position(&self, id: TaskId) -> Result<Option<(u64, u64)>, StoreError>;

    /// What attempts used, summed per project and bucket of time.
    async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// A page of the cluster's history: the tasks whose ids are after
    /// `after` and before `until` (ids sort by creation:
    /// [`history::window`]), at most `limit`, in order, each with its
    /// attempts, as shapes and times only.
    async fn history_tasks(
        &self,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> Result<Vec<(TaskId, shepherd_core::history::TaskRecord)>, StoreError>;

    /// Every node state recorded before `until`, in order, each with the
    /// node's capacity and labels then (nodes since removed included).
    async fn node_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::NodeRecord>, StoreError>;

    /// How many tasks each project has queued, scheduled and running.
    async fn active_counts(&self) -> Result<Vec<(String, shepherd_core::TaskState, u64)>, StoreError>;

    /// Removes the events recorded before `before`; returns how many rows went.
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Finished tasks of `project` that retention may remove at `before`
    /// (finished before it; an array's child only once its array finished
    /// before it; none with a webhook still to deliver), with ids after
    /// `after`, in id order, at most `limit` (capped at
    /// [`retention::MAX_BATCH`]).
    async fn expired_tasks(&self, project: &str, before: Timestamp, after: Option<TaskId>, limit: usize)
        -> Result<Vec<TaskId>, StoreError>;

    /// Removes those of `ids` that are still expired at `before`, in one
    /// transaction: their logs, attempts (whose usage is first added to the
    /// hourly sums usage reports read), labels, dependency edges, webhook
    /// records and rows, and their arrays once no child is left. Returns
    /// the ids removed. Audit lines and events stay.
    async fn remove_tasks(&self, ids: Vec<TaskId>, before: Timestamp) -> Result<Vec<TaskId>, StoreError>;

    /// Tasks as retention exports them: each of `ids` still there, with
    /// its attempts and all its output in order. (A store may read them
    /// all at once; this default reads task by task.)
    async fn export_tasks(&self, ids: Vec<TaskId>) -> Result<Vec<(Task, Vec<StoredLogChunk>)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(task) = self.get_task(id).await? else { continue };
            let mut logs: Vec<StoredLogChunk> = Vec::new();
            loop {
                let after = logs.last().map_or(0, |c| c.seq);
                let page = self.read_logs(id, after, 1000).await?;
                let full = page.len() == 1000;
                logs.extend(page);
                if !full {
                    break;
                }
            }
            out.push((task, logs));
        }
        Ok(out)
    }

    /// The time by the clock node heartbeat times are stored in: the
    /// database's on PostgreSQL (every server converts the heartbeats it
    /// writes to it), this process's on SQLite. Whoever judges a node's
    /// silence from its stored heartbeat compares with this.
    async fn clock(&self) -> Result<Timestamp, StoreError> {
        Ok(Timestamp::now())
    }

    /// The store's size and the creation time of its oldest task.
    async fn store_size(&self) -> Result<retention::StoreSize, StoreError>;

    /// Records a provisioned machine: a new one when `expected` is `None`
    /// (false if the id is taken), else only while its stored state is
    /// still `expected` (compare-and-set: false if it changed meanwhile).
    async fn put_machine(&self, machine: Machine, expected: Option<MachineState>) -> Result<bool, StoreError>;

    /// Every autoscaled machine asked for before `until`: when it was
    /// asked for, joined and destroyed, kept after it is gone (what a
    /// replay counts machine-hours from).
    async fn machine_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::MachineRecord>, StoreError>;

    /// Every provisioned machine, by id.
    async fn machines(&self) -> Result<Vec<Machine>, StoreError>;

    /// Forgets a machine; false if there was none.
    async fn delete_machine(&self, id: &str) -> Result<bool, StoreError>;

    /// Forgets a node that holds no scheduled or running task (a destroyed
    /// machine's); false if it holds one or is unknown.
    async fn delete_node(&self, id: &str) -> Result<bool, StoreError>;

    /// Binds node `id` to `credential` (the SHA-256 of its own secret) if it
    /// is bound to none, and says whether it is bound to this one. `None`
    /// (an agent that keeps no secret): true only while the id is bound to
    /// no credential. Removing the node frees the id.
    async fn claim_node(&self, id: &str, credential: Option<String>) -> Result<bool, StoreError>;

    /// The projects that hold a registry login (a secret `registry.*`).
    async fn registry_login_projects(&self) -> Result<Vec<String>, StoreError>;

    /// A project's login to the registry `image` comes from, if it has one
    /// (what its tasks pull with; `shepherd image prefetch` too).
    async fn registry_auth(&self, project: &str, image: &str) -> Result<Option<shepherd_core::RegistryAuth>, StoreError>;

    /// Sets a project's policy (volume drivers, networks, egress,
    /// devices); false if there is no such project.
    async fn set_project_policy(&self, name: &str, policy: shepherd_core::ProjectPolicy) -> Result<bool, StoreError>;

    /// Records a volume; false if its project has one of that name or its
    /// engine name is another volume's.
    async fn create_volume(&self, volume: shepherd_core::Volume) -> Result<bool, StoreError>;

    /// A project's volumes (every project's with `None`), by project and name.
    async fn volumes(&self, project: Option<String>) -> Result<Vec<shepherd_core::Volume>, StoreError>;

    /// One volume of a project.
    async fn get_volume(&self, project: &str, name: &str) -> Result<Option<shepherd_core::Volume>, StoreError> {
        Ok(self.volumes(Some(project.to_string())).await?.into_iter().find(|v| v.name == name))
    }

    /// Forgets a volume; false if there was none.
    async fn delete_volume(&self, project: &str, name: &str) -> Result<bool, StoreError>;

    /// Binds a node-scoped volume to `node` unless it is bound already;
    /// the node it is bound to after (`None`: no such volume).
    async fn bind_volume(&self, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError>;

    /// A value of the cluster's, the same for every server of a shared
    /// store: the one stored under `key`, or `proposed`, stored now, if
    /// there is none (the first caller's proposal wins).
    async fn cluster_value(&self, key: &str, proposed: &str) -> Result<String, StoreError>;

    /// The cluster's identity: random, made at first use, the same for
    /// every server of a shared store (provisioners tag machines with it).
    async fn cluster_id(&self) -> Result<String, StoreError> {
        self.cluster_value("cluster_id", &ulid::Ulid::new().to_string().to_lowercase()).await
    }

    /// Hands the store an observer of its writes (metrics). Set once; later
    /// calls are ignored.
    fn set_observer(&self, _observer: std::sync::Arc<dyn StoreObserver>) {}

    /// The cluster's secret key of placement shapes, which this store
    /// gives every task it stores ([`shepherd_core::shape`]).
    fn shape_key(&self) -> &shepherd_core::shape::ShapeKey;

    /// The connection pool's state, for a store that has one (PostgreSQL).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// What a store tells an observer about its writes, after they committed.
/// Called on the store's own threads: keep it quick and never block.
pub trait StoreObserver: Send + Sync + 'static {
    /// A transaction committed `requests` write requests together (group
    /// commit) in `took`, from its first statement to the end of its commit.
    fn committed(&self, _requests: usize, _took: std::time::Duration) {}
    /// `count` tasks of `project` were stored.
    fn created(&self, _project: &str, _count: u64) {}
    /// Lifecycle events were applied.
    fn applied(&self, _results: &[ApplyResult]) {}
}

/// Where a store keeps its observer: set once, shared with its threads.
#[derive(Clone, Default)]
pub struct ObserverSlot(std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn StoreObserver>>>);

impl ObserverSlot {
    /// The observer, once one is set.
    pub fn get(&self) -> Option<&std::sync::Arc<dyn StoreObserver>> {
        self.0.get()
    }

    /// Sets the observer unless one is set already.
    pub fn set(&self, observer: std::sync::Arc<dyn StoreObserver>) {
        let _ = self.0.set(observer);
    }

    /// Tells the observer about stored tasks.
    pub fn created(&self, tasks: &[NewTask]) {
        if let Some(o) = self.get() {
            for (project, count) in count_by_project(tasks) {
                o.created(project, count);
            }
        }
    }

    /// Tells the observer about applied events.
    pub fn applied(&self, results: &[ApplyResult]) {
        if let Some(o) = self.get() {
            o.applied(results);
        }
    }
}

/// The most queued tasks [`Store::queue_position`] counts ahead of one: a
/// task's `GET` stays quick whatever the queue's length.
pub const QUEUE_COUNT_CAP: u64 = 100_000;

/// The most a stored usage figure may be (2⁴⁰: 35 years of CPU in ms, a
/// TiB of memory): what a node reports is clamped to it, so no sum of a
/// report's worth of attempts overflows.
pub const MAX_USAGE: u64 = 1 << 40;

/// The SQL both stores sum usage with (`$`-numbered parameters: from, to,
/// bucket, and the project or NULL for all). An attempt's start as its node
/// saw it can fall after its end as the engine recorded it (a container that
/// exits at once): such an attempt counts no run time, not a negative one.
/// Tasks retention removed count from their hourly sums (`usage_hours`),
/// placed by the hour their attempts ended in: exact for hourly and daily
/// buckets; a removed task whose attempts ended in different hours counts
/// once in each.
pub const USAGE_SQL: &str = "SELECT project, bucket, CAST(SUM(tasks) AS BIGINT), CAST(SUM(attempts) AS BIGINT), \
     CAST(SUM(cpu) AS BIGINT), CAST(SUM(memory) AS DOUBLE PRECISION), CAST(SUM(wall) AS BIGINT) FROM ( \
     SELECT t.project AS project, (a.finished_at / $3) * $3 AS bucket, COUNT(DISTINCT a.task_id) AS tasks, COUNT(*) AS attempts, \
     CAST(COALESCE(SUM(a.cpu_ms), 0) AS BIGINT) AS cpu, \
     CAST(COALESCE(SUM(CAST(a.peak_memory_bytes AS DOUBLE PRECISION) * (CASE WHEN a.finished_at > a.started_at THEN a.finished_at - a.started_at ELSE 0 END)), 0) AS DOUBLE PRECISION) AS memory, \
     CAST(COALESCE(SUM(CASE WHEN a.finished_at > a.started_at THEN a.finished_at - a.started_at ELSE 0 END), 0) AS BIGINT) AS wall \
     FROM attempts a JOIN tasks t ON t.id = a.task_id \
     WHERE a.finished_at >= $1 AND a.finished_at < $2 AND a.started_at IS NOT NULL AND ($4 IS NULL OR t.project = $4) \
     GROUP BY t.project, (a.finished_at / $3) * $3 \
     UNION ALL \
     SELECT u.project, (u.hour / $3) * $3, u.tasks, u.attempts, u.cpu_ms, u.memory_byte_ms, u.wall_ms FROM usage_hours u \
     WHERE u.hour >= $1 AND u.hour < $2 AND ($4 IS NULL OR u.project = $4) \
     ) usage GROUP BY project, bucket ORDER BY 2, 1";

/// How many of `tasks` each project has, in the order first seen.
pub fn count_by_project(tasks: &[NewTask]) -> Vec<(&str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for task in tasks {
        match counts.iter_mut().find(|(p, _)| *p == task.spec.project) {
            Some((_, n)) => *n += 1,
            None => counts.push((&task.spec.project, 1)),
        }
    }
    counts
}

/// The events that creating `tasks` records: each one queued.
pub fn created_events(tasks: &[NewTask]) -> Vec<shepherd_core::ClusterEvent> {
    tasks.iter().map(|t| workflow::created_event(t.id, &t.spec.project, shepherd_core::TaskState::Queued, t.created_at)).collect()
}

/// Appends the events of one stored row (`cursor` with index 0) that
/// come after `after`.
pub(crate) fn push_events(out: &mut Vec<StoredEvent>, row: EventCursor, body: &str, after: Option<EventCursor>) -> Result<(), StoreError> {
    let events: Vec<shepherd_core::ClusterEvent> =
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("event row: {e}")))?;
    for (index, event) in events.into_iter().enumerate() {
        let cursor = EventCursor { index: index as u32, ..row };
        if after.is_none_or(|a| cursor > a) {
            out.push(StoredEvent { cursor, event });
        }
    }
    Ok(())
}

/// The events an audit log records: tenant actions.
pub fn audit_events(entries: &[AuditEntry]) -> Vec<shepherd_core::ClusterEvent> {
    entries.iter().filter_map(|e| shepherd_core::ClusterEvent::from_audit(e.project.as_deref(), &e.action, &e.target, e.at)).collect()
}

/// A stored volume record with the node it is bound to (kept apart, for
/// compare-and-set).
pub(crate) fn volume_from(record: &str, node: Option<String>) -> Result<shepherd_core::Volume, StoreError> {
    let mut volume: shepherd_core::Volume = serde_json::from_str(record).map_err(|e| StoreError::Corrupt(format!("volume record: {e}")))?;
    volume.node_id = node;
    Ok(volume)
}

/// A project's login to the registry of `image`, from its secrets (`None`
/// if it has none, or one that does not decode).
pub(crate) fn registry_auth_from(image: &str, value: Option<Vec<u8>>) -> Option<shepherd_core::RegistryAuth> {
    let auth: shepherd_core::RegistryAuth = serde_json::from_slice(&value?).ok()?;
    (auth.registry == shepherd_core::registry::registry_of(image)).then_some(auth)
}

/// The `cluster_meta` key of the secret that keys placement shapes.
pub(crate) const SHAPE_KEY: &str = "shape_key";

/// A new random secret for [`SHAPE_KEY`] (32 bytes, hex).
pub(crate) fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| StoreError::Corrupt("the system's random source failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The shape key from its stored text.
pub(crate) fn shape_key_from(hex: &str) -> Result<shepherd_core::shape::ShapeKey, StoreError> {
    shepherd_core::shape::ShapeKey::from_hex(hex)
        .ok_or_else(|| StoreError::Corrupt(format!("cluster value {SHAPE_KEY} is not a hex secret")))
}

//! The PostgreSQL store: the same [`Store`] as SQLite's (the conformance
//! suite runs unchanged against both), for several servers sharing one
//! database. Connections come from a pool (deadpool-postgres); statements
//! are prepared and cached per connection; a batch of tasks is one
//! multi-row insert (`UNNEST` of arrays); every lifecycle change is worked
//! out by `shepherd_core::change` and written as it says, under a row lock.
//!
//! [`PgStore`] and its pools are in `connection`; each concern's methods
//! are in a file of their own (`tasks`, `queue`, `nodes`, `tenants`,
//! `events`, `logs`, `leases`, `machines`, `volumes`, `codes`,
//! `schedules`, `webhooks`), as `pg_` methods that the [`Store`] impl here
//! hands each call to. What they share is in `sql` (errors, decoding, the
//! event stream's append) and `rows` (tasks as rows); `apply` is lifecycle
//! events in bulk, `workflow` what a task's end does to its array and its
//! dependents (in the same transaction), `submit` submissions of tasks and
//! arrays with dependencies and the reads of arrays, `schema` the
//! migrations.

mod apply;
mod codes;
mod connection;
mod events;
mod group;
mod inserts;
mod leases;
mod lifecycle;
mod logs;
mod machines;
mod nodes;
mod queue;
mod retention;
mod rows;
mod schedules;
mod schema;
mod sql;
mod submit;
mod tasks;
mod tenants;
mod volumes;
mod webhooks;
mod workflow;

use crate::*;
use shepherd_core::shape::ShapeKey;
use shepherd_core::{Event, EventCursor, NewTask, StoredEvent, Task, TaskId, TaskState, Timestamp, Volume};

pub use connection::{redact, PgOptions, PgStore, IDLE_IN_TRANSACTION, RESYNC};
pub use schema::VERSION;

#[async_trait::async_trait]
impl Store for PgStore {
    async fn acquire_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError> {
        self.pg_acquire_lease(holder, ttl).await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.pg_release_lease(holder).await
    }

    async fn apply_as_leader(&self, events: Vec<(TaskId, Event)>, now: Timestamp, lease: &Lease) -> Result<Vec<ApplyResult>, StoreError> {
        self.pg_apply_as_leader(events, now, lease).await
    }

    async fn touch_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        self.pg_touch_server(server).await
    }

    async fn list_servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        self.pg_list_servers().await
    }

    async fn publish(&self, message: String) -> Result<(), StoreError> {
        self.pg_publish(message).await
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.messages.subscribe())
    }

    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        self.pg_create_tasks(tasks).await
    }

    async fn create_tasks_audited(&self, tasks: Vec<NewTask>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        self.pg_create_tasks_audited(tasks, audit).await
    }

    async fn submit(&self, submission: Submission) -> Result<Submitted, StoreError> {
        self.pg_submit(submission).await
    }

    async fn idempotent_answer(&self, project: &str, key: &str, now: Timestamp) -> Result<Option<(String, u16, String)>, StoreError> {
        self.pg_idempotent_answer(project, key, now).await
    }

    async fn prune_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.pg_prune_idempotency(before).await
    }

    async fn get_array(&self, id: &str) -> Result<Option<shepherd_core::ArrayStatus>, StoreError> {
        self.pg_get_array(id).await
    }

    async fn list_arrays(
        &self,
        project: Option<String>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<shepherd_core::ArrayStatus>, StoreError> {
        self.pg_list_arrays(project, before, limit).await
    }

    async fn array_source(&self, id: &str) -> Result<Option<ArraySource>, StoreError> {
        self.pg_array_source(id).await
    }

    async fn cancel_array(&self, project: Option<String>, id: &str, now: Timestamp) -> Result<Option<Vec<ApplyResult>>, StoreError> {
        self.pg_cancel_array(project, id, now).await
    }

    async fn dependency_edges(&self, id: &str, limit: usize) -> Result<Vec<(String, String, shepherd_core::DependOn)>, StoreError> {
        self.pg_dependency_edges(id, limit).await
    }

    async fn task_result(&self, id: TaskId) -> Result<Option<Vec<u8>>, StoreError> {
        self.pg_task_result(id).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.pg_get_task(id).await
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<TaskPage, StoreError> {
        self.pg_list_tasks(filter).await
    }

    async fn apply(&self, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        self.pg_apply(events, now).await
    }

    async fn apply_reported(&self, node: String, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        self.pg_apply_reported(node, events, now).await
    }

    async fn queued_tasks(&self, now: Timestamp, query: QueueQuery) -> Result<QueuePage, StoreError> {
        self.pg_queued_tasks(now, query).await
    }

    async fn active_tasks(&self) -> Result<Vec<ActiveTask>, StoreError> {
        self.pg_active_tasks().await
    }

    async fn active_tasks_on(&self, node_id: &str) -> Result<Vec<ActiveTask>, StoreError> {
        self.pg_active_tasks_on(node_id).await
    }

    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, StoreError> {
        self.pg_launch_spec(id).await
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), StoreError> {
        self.pg_append_logs(chunks).await
    }

    async fn read_logs(&self, id: TaskId, after: i64, limit: usize) -> Result<Vec<StoredLogChunk>, StoreError> {
        self.pg_read_logs(id, after, limit).await
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<(), StoreError> {
        self.pg_upsert_node(node).await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.pg_list_nodes().await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.pg_get_node(id).await
    }

    async fn touch_node(&self, id: &str, at: Timestamp, images: Vec<String>) -> Result<Option<NodeState>, StoreError> {
        self.pg_touch_node(id, at, images).await
    }

    async fn touch_nodes(&self, beats: Vec<NodeBeat>) -> Result<Vec<Option<NodeState>>, StoreError> {
        self.pg_touch_nodes(beats).await
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, StoreError> {
        self.pg_set_node_state(id, state).await
    }

    async fn set_node_state_as_leader(&self, id: &str, state: NodeState, lease: &Lease) -> Result<bool, StoreError> {
        self.pg_set_node_state_as(id, state, Some(lease)).await
    }

    async fn count_by_state(&self, project: Option<String>) -> Result<Vec<(TaskState, u64)>, StoreError> {
        self.pg_count_by_state(project).await
    }

    async fn count_queued(&self, project: &str) -> Result<u64, StoreError> {
        self.pg_count_queued(project).await
    }

    async fn create_project(&self, project: Project) -> Result<bool, StoreError> {
        self.pg_create_project(project).await
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        self.pg_get_project(name).await
    }

    async fn list_projects(&self) -> Result<Vec<Project>, StoreError> {
        self.pg_list_projects().await
    }

    async fn set_project_limits(&self, name: &str, limits: shepherd_core::ProjectLimits) -> Result<bool, StoreError> {
        self.pg_set_project_limits(name, limits).await
    }

    async fn registry_login_projects(&self) -> Result<Vec<String>, StoreError> {
        self.pg_registry_login_projects().await
    }

    async fn registry_auth(&self, project: &str, image: &str) -> Result<Option<shepherd_core::RegistryAuth>, StoreError> {
        self.pg_registry_auth(project, image).await
    }

    async fn set_project_policy(&self, name: &str, policy: shepherd_core::ProjectPolicy) -> Result<bool, StoreError> {
        self.pg_set_project_policy(name, policy).await
    }

    async fn create_volume(&self, volume: Volume) -> Result<bool, StoreError> {
        self.pg_create_volume(volume).await
    }

    async fn volumes(&self, project: Option<String>) -> Result<Vec<Volume>, StoreError> {
        self.pg_volumes(project).await
    }

    async fn delete_volume(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        self.pg_delete_volume(project, name).await
    }

    async fn bind_volume(&self, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError> {
        self.pg_bind_volume(project, name, node).await
    }

    async fn create_token(&self, token: TokenRecord, hash: String) -> Result<(), StoreError> {
        self.pg_create_token(token, hash).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.pg_token_by_hash(hash).await
    }

    async fn list_tokens(&self, project: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.pg_list_tokens(project).await
    }

    async fn revoke_token(&self, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.pg_revoke_token(project, id, at).await
    }

    async fn put_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        self.pg_put_secret(project, name, value, at).await
    }

    async fn delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        self.pg_delete_secret(project, name).await
    }

    async fn list_secrets(&self, project: &str) -> Result<Vec<SecretInfo>, StoreError> {
        self.pg_list_secrets(project).await
    }

    async fn push_code(
        &self,
        project: &str,
        spec: shepherd_core::CodeSpec,
        at: Timestamp,
        from: Option<u32>,
    ) -> Result<shepherd_core::Code, StoreError> {
        self.pg_push_code(project, spec, at, from).await
    }

    async fn get_code(&self, project: &str, name: &str, revision: Option<u32>) -> Result<Option<shepherd_core::Code>, StoreError> {
        self.pg_get_code(project, name, revision).await
    }

    async fn list_codes(&self, project: Option<String>) -> Result<Vec<shepherd_core::Code>, StoreError> {
        self.pg_list_codes(project).await
    }

    async fn code_revisions(&self, project: &str, name: &str) -> Result<Vec<shepherd_core::Code>, StoreError> {
        self.pg_code_revisions(project, name).await
    }

    async fn delete_code(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        self.pg_delete_code(project, name).await
    }

    async fn code_limits(&self) -> Result<Vec<CodeLimit>, StoreError> {
        self.pg_code_limits().await
    }

    async fn create_schedule(&self, schedule: shepherd_core::Schedule) -> Result<(), StoreError> {
        self.pg_create_schedule(schedule).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<shepherd_core::Schedule>, StoreError> {
        self.pg_get_schedule(id).await
    }

    async fn list_schedules(&self, project: Option<String>) -> Result<Vec<shepherd_core::Schedule>, StoreError> {
        self.pg_list_schedules(project).await
    }

    async fn set_schedule_state(
        &self,
        id: &str,
        state: shepherd_core::ScheduleState,
        next_at: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        self.pg_set_schedule_state(id, state, next_at).await
    }

    async fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<shepherd_core::Schedule>, StoreError> {
        self.pg_due_schedules(now, limit).await
    }

    async fn next_schedule_at(&self) -> Result<Option<Timestamp>, StoreError> {
        self.pg_next_schedule_at().await
    }

    async fn fire_schedule(&self, firing: ScheduleFiring, lease: &Lease) -> Result<bool, StoreError> {
        self.pg_fire_schedule(firing, lease).await
    }

    async fn read_events(&self, after: Option<EventCursor>, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.pg_read_events(after, limit).await
    }

    async fn latest_event(&self) -> Result<Option<EventCursor>, StoreError> {
        self.pg_latest_event().await
    }

    async fn queue_position(&self, id: TaskId) -> Result<Option<(u64, u64)>, StoreError> {
        self.pg_queue_position(id).await
    }

    async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.pg_usage(query).await
    }

    async fn active_counts(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        self.pg_active_counts().await
    }

    async fn history_tasks(
        &self,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> Result<Vec<(TaskId, shepherd_core::history::TaskRecord)>, StoreError> {
        self.pg_history_tasks(after, until, limit).await
    }

    async fn node_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::NodeRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(crate::history::NODE_HISTORY_SQL, &[&until.millis()]).await.map_err(sql::error)?;
        rows.iter()
            .map(|row| {
                crate::history::node_record(
                    row.get(0),
                    row.get::<_, &str>(1),
                    row.get(2),
                    row.get(3),
                    row.get(4),
                    row.get(5),
                    row.get::<_, &str>(6),
                )
            })
            .collect()
    }

    async fn machine_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::MachineRecord>, StoreError> {
        self.pg_machine_history(until).await
    }

    async fn put_machine(&self, machine: Machine, expected: Option<MachineState>) -> Result<bool, StoreError> {
        self.pg_put_machine(machine, expected).await
    }

    async fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.pg_machines().await
    }

    async fn expired_tasks(
        &self,
        project: &str,
        before: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        self.pg_expired_tasks(project, before, after, limit).await
    }

    async fn remove_tasks(&self, ids: Vec<TaskId>, before: Timestamp) -> Result<Vec<TaskId>, StoreError> {
        self.pg_remove_tasks(ids, before).await
    }

    async fn clock(&self) -> Result<Timestamp, StoreError> {
        self.pg_clock().await
    }

    async fn store_size(&self) -> Result<crate::retention::StoreSize, StoreError> {
        self.pg_store_size().await
    }

    async fn delete_machine(&self, id: &str) -> Result<bool, StoreError> {
        self.pg_delete_machine(id).await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        self.pg_delete_node(id).await
    }

    async fn claim_node(&self, id: &str, credential: Option<String>) -> Result<bool, StoreError> {
        self.pg_claim_node(id, credential).await
    }

    async fn cluster_value(&self, key: &str, proposed: &str) -> Result<String, StoreError> {
        self.pg_cluster_value(key, proposed).await
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.pg_prune_events(before).await
    }

    fn shape_key(&self) -> &ShapeKey {
        &self.shape_key
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        Some(PgStore::pool_status(self))
    }

    fn set_observer(&self, observer: std::sync::Arc<dyn StoreObserver>) {
        self.observer.set(observer);
    }

    async fn put_package(&self, project: &str, digest: &str, data: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        self.pg_put_package(project, digest, data, at).await
    }

    async fn get_package(&self, project: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.pg_get_package(project, digest).await
    }

    async fn list_packages(&self, project: &str) -> Result<Vec<crate::PackageInfo>, StoreError> {
        self.pg_list_packages(project).await
    }

    async fn delete_package(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        self.pg_delete_package(project, digest).await
    }

    async fn package_in_use(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        self.pg_package_in_use(project, digest).await
    }

    async fn package_size(&self, project: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        self.pg_package_size(project, digest).await
    }

    async fn set_progress(&self, id: TaskId, progress: shepherd_core::Progress) -> Result<bool, StoreError> {
        self.pg_set_progress(id, progress).await
    }

    async fn set_attempt_progress(
        &self,
        id: TaskId,
        attempt: u32,
        node_id: Option<String>,
        progress: shepherd_core::Progress,
    ) -> Result<bool, StoreError> {
        self.pg_set_attempt_progress(id, attempt, node_id, progress).await
    }

    async fn ensure_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<Vec<u8>, StoreError> {
        self.pg_ensure_secret(project, name, value, at).await
    }

    async fn due_webhooks(&self, now: Timestamp, limit: usize, per_project: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.pg_due_webhooks(now, limit, per_project).await
    }

    async fn record_webhook(&self, task: TaskId, attempt: WebhookAttempt, next: WebhookNext) -> Result<(), StoreError> {
        self.pg_record_webhook(task, attempt, next).await
    }

    async fn webhook_of(&self, task: TaskId) -> Result<Option<WebhookDelivery>, StoreError> {
        self.pg_webhook_of(task).await
    }

    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        self.pg_append_audit(entries).await
    }

    async fn list_audit(&self, project: Option<String>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.pg_list_audit(project, before, limit).await
    }
}

impl PgStore {
    /// Inserts `tasks` in a transaction of their own with the store's own
    /// statements, nothing else: no group commit, audit line, event or
    /// observer. The benchmarks' raw baseline (`shepherd-bench ingest`),
    /// not a way to create tasks.
    pub async fn raw_insert(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql::error)?;
        inserts::insert_tasks(&tx, &tasks, &self.shape_key).await?;
        tx.commit().await.map_err(sql::error)
    }
}

//! The PostgreSQL store: the same [`Store`] as SQLite's (the conformance
//! suite runs unchanged against both), for several servers sharing one
//! database. Connections come from a pool (deadpool-postgres); statements
//! are prepared and cached per connection; a batch of tasks is one
//! multi-row insert (`UNNEST` of arrays); every lifecycle change is worked
//! out by `shepherd_core::change` and written as it says, under a row lock.

mod apply;
mod codes;
mod schema;

use crate::*;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use shepherd_core::shape::ShapeKey;
use shepherd_core::{Event, EventCursor, NewTask, Resources, StoredEvent, Task, TaskId, TaskState, Timestamp, Volume};
use std::collections::BTreeMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

pub use schema::VERSION;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: Pool,
    /// Connections that commit without waiting for the disk, for audit
    /// number reservations only ([`reserve_audit_numbers`]).
    counters: Pool,
    /// Messages between servers (LISTEN/NOTIFY on [`CHANNEL`]).
    messages: tokio::sync::broadcast::Sender<String>,
    listener: tokio::task::JoinHandle<()>,
    /// Group commit for [`Store::apply`].
    combiner: apply::Combiner,
    observer: ObserverSlot,
    /// Keys placement shapes (the cluster's secret, in `cluster_meta`).
    shape_key: ShapeKey,
}

/// The NOTIFY channel servers talk on.
const CHANNEL: &str = "shepherd";

/// Handed to subscribers each time the listening connection (re)starts:
/// messages sent meanwhile may have been missed.
pub const RESYNC: &str = "__resync__";

/// The database's clock in milliseconds: every server reads the same one.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Holds a connection that LISTENs on [`CHANNEL`] and hands every
/// notification to `messages`; reconnects (after a pause) when it breaks.
async fn listen(config: tokio_postgres::Config, messages: tokio::sync::broadcast::Sender<String>) {
    use futures_util::StreamExt;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    // The connection must be driven while LISTEN runs.
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await
                };
                let mut listening = std::pin::pin!(listening);
                let mut ready = false;
                loop {
                    tokio::select! {
                        result = &mut listening, if !ready => {
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "LISTEN failed");
                                break;
                            }
                            ready = true;
                            let _ = messages.send(RESYNC.to_string());
                        }
                        message = stream.next() => match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                let _ = messages.send(n.payload().to_string());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "the listening connection broke; reconnecting");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the listening connection; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// PostgreSQL's errors as the store's.
pub(crate) fn error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            StoreError::Conflict(e.to_string())
        }
        Some(code) if code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW => {
            StoreError::Unavailable(e.to_string())
        }
        Some(_) => StoreError::Database(Box::new(e)),
        None if e.is_closed() => StoreError::Unavailable(e.to_string()),
        // No SQL state: the connection (an I/O error, a refused connect).
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Refuses (fenced) unless `lease` is still the current, unexpired lease.
/// FOR SHARE: a new leader cannot take the lease over until `tx` ends, so a
/// write checked here is never late.
async fn check_lease(tx: &deadpool_postgres::Transaction<'_>, lease: &Lease) -> Result<(), StoreError> {
    let current = tx
        .query_opt(&format!("SELECT holder, epoch, expires_at >= {NOW_MS} FROM leadership WHERE id = 1 FOR SHARE"), &[])
        .await
        .map_err(error)?;
    match current {
        Some(row) if row.get::<_, &str>(0) == lease.holder && row.get::<_, i64>(1) == lease.epoch && row.get::<_, bool>(2) => Ok(()),
        _ => Err(StoreError::Fenced { epoch: lease.epoch }),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse_id(text: &str) -> Result<TaskId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task id `{text}`")))
}

fn parse_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("bad task state `{text}`")))
}

const TASK_COLUMNS: &str = "id, state, spec, payload_bytes, created_at, scheduled_at, started_at, finished_at, node_id, exit_code, \
     reason, cancel_requested, not_before, progress_percent, progress_message";

fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    let id: String = row.get(0);
    let state: String = row.get(1);
    let spec: shepherd_core::TaskSpec = serde_json::from_str(row.get::<_, &str>(2)).map_err(|e| corrupt("spec", e))?;
    let created_at = Timestamp(row.get(4));
    let task = Task::from_spec(parse_id(&id)?, spec, row.get::<_, i64>(3) as u64, created_at);
    let not_before = Timestamp(row.get(12));
    Ok(Task {
        state: parse_state(&state)?,
        scheduled_at: row.get::<_, Option<i64>>(5).map(Timestamp),
        started_at: row.get::<_, Option<i64>>(6).map(Timestamp),
        finished_at: row.get::<_, Option<i64>>(7).map(Timestamp),
        node_id: row.get(8),
        exit_code: row.get(9),
        reason: row.get(10),
        cancel_requested: row.get(11),
        retry_at: Some(not_before).filter(|at| state == "queued" && *at > created_at),
        progress: row.get::<_, Option<i64>>(13).map(|percent| shepherd_core::Progress {
            percent: percent.clamp(0, 100) as u8,
            message: row.get::<_, Option<String>>(14).unwrap_or_default(),
        }),
        ..task
    })
}

async fn load_attempts(client: &impl GenericClient, task: &mut Task) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT number, node_id, scheduled_at, started_at, finished_at, outcome, exit_code, reason, container, warm, \
             cpu_ms, peak_memory_bytes, image_digest FROM attempts WHERE task_id = $1 ORDER BY number",
        )
        .await
        .map_err(error)?;
    for row in client.query(&stmt, &[&task.id.to_string()]).await.map_err(error)? {
        let outcome: Option<String> = row.get(5);
        task.attempts.push(shepherd_core::Attempt {
            number: row.get::<_, i64>(0) as u32,
            node_id: row.get(1),
            scheduled_at: Timestamp(row.get(2)),
            started_at: row.get::<_, Option<i64>>(3).map(Timestamp),
            finished_at: row.get::<_, Option<i64>>(4).map(Timestamp),
            outcome: outcome.as_deref().and_then(shepherd_core::AttemptOutcome::parse),
            exit_code: row.get(6),
            reason: row.get(7),
            runtime: row.get::<_, Option<String>>(8).map(|container| shepherd_core::AttemptRuntime {
                container,
                warm: row.get(9),
                image_digest: row.get(12),
            }),
            usage: match (row.get::<_, Option<i64>>(10), row.get::<_, Option<i64>>(11)) {
                (Some(cpu), Some(memory)) => {
                    Some(shepherd_core::Usage { cpu_ms: cpu.max(0) as u64, peak_memory_bytes: memory.max(0) as u64 })
                }
                _ => None,
            },
        });
    }
    Ok(())
}

fn node_from_row(row: &Row) -> Result<NodeRecord, StoreError> {
    let state: String = row.get(2);
    Ok(NodeRecord {
        id: row.get(0),
        hostname: row.get(1),
        state: NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))?,
        driver: row.get(3),
        capacity: Resources { cpu_millicores: row.get::<_, i64>(4) as u32, memory_mib: row.get::<_, i64>(5) as u32 },
        max_tasks: row.get::<_, i64>(6) as u32,
        labels: serde_json::from_str(row.get::<_, &str>(7)).map_err(|e| corrupt("node labels", e))?,
        images: serde_json::from_str(row.get::<_, &str>(10)).map_err(|e| corrupt("node images", e))?,
        registered_at: Timestamp(row.get(8)),
        last_heartbeat_at: Timestamp(row.get(9)),
    })
}

fn token_from(row: &Row) -> TokenRecord {
    TokenRecord {
        id: row.get(0),
        project: row.get(1),
        name: row.get(2),
        created_at: Timestamp(row.get(3)),
        revoked_at: row.get::<_, Option<i64>>(4).map(Timestamp),
    }
}

fn project_from(row: &Row) -> Result<Project, StoreError> {
    Ok(Project {
        name: row.get(0),
        created_at: Timestamp(row.get(1)),
        limits: serde_json::from_str(row.get::<_, &str>(2)).map_err(|e| corrupt("project limits", e))?,
        policy: serde_json::from_str(row.get::<_, &str>(3)).map_err(|e| corrupt("project policy", e))?,
    })
}

/// How long PostgreSQL lets a session sit idle inside a transaction.
/// Our transactions send their statements back to back; a gap this long
/// means the server holding it has stalled.
pub const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(2);

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`),
    /// migrates the schema, and keeps a pool of up to `max_connections`.
    pub async fn connect(url: &str, max_connections: usize) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Unavailable(format!("`{}` is not a PostgreSQL URL: {e}", redact(url))))?;
        // A server that stalls inside a transaction (frozen, swapped out,
        // partitioned) must not hold its row locks for ever: the lease row
        // it reads FOR SHARE would keep every other server from taking
        // over. PostgreSQL ends such a session, rolling its writes back.
        // A URL's own `options=-c idle_in_transaction_session_timeout=…` wins.
        let options = config.get_options().unwrap_or("").to_string();
        if !options.contains("idle_in_transaction_session_timeout") {
            config.options(format!("{options} -c idle_in_transaction_session_timeout={}", IDLE_IN_TRANSACTION.as_millis()).trim());
        }
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(max_connections.max(2)).build().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut counters_config = config.clone();
        let options = counters_config.get_options().unwrap_or("").to_string();
        counters_config.options(format!("{options} -c synchronous_commit=off"));
        let counters =
            Pool::builder(Manager::from_config(counters_config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast }))
                .max_size(4)
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL at {}: {}", redact(url), error_chain(&e)))
            }
            other => StoreError::Unavailable(other.to_string()),
        })?;
        let version = schema::migrate(&mut client).await?;
        let row = client.query_one("SELECT value FROM cluster_meta WHERE key = $1", &[&crate::SHAPE_KEY]).await.map_err(error)?;
        let shape_key = crate::shape_key_from(row.get(0))?;
        drop(client);
        tracing::info!(url = %redact(url), schema_version = version, "connected to the PostgreSQL store");
        let (messages, _) = tokio::sync::broadcast::channel(4096);
        let listener = tokio::spawn(listen(config, messages.clone()));
        let observer = ObserverSlot::default();
        let combiner = apply::Combiner::start(pool.clone(), observer.clone());
        Ok(PgStore { pool, counters, messages, listener, combiner, observer, shape_key })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn insert_tasks(tx: &deadpool_postgres::Transaction<'_>, tasks: &[NewTask], key: &ShapeKey) -> Result<(), StoreError> {
    let mut ids = Vec::with_capacity(tasks.len());
    let (mut projects, mut priorities, mut images, mut cpus, mut memories) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut constraints, mut specs, mut payloads, mut payload_bytes, mut created) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut max_attempts, mut backoffs, mut shapes, mut not_before) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut label_tasks, mut label_keys, mut label_values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hook_tasks, mut hook_projects, mut hook_urls, mut hook_at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        let spec = &task.spec;
        let id = task.id.to_string();
        if let Some(url) = &spec.webhook {
            hook_tasks.push(id.clone());
            hook_projects.push(spec.project.clone());
            hook_urls.push(url.clone());
            hook_at.push(task.created_at.millis());
        }
        for (key, value) in &spec.labels {
            label_tasks.push(id.clone());
            label_keys.push(key.clone());
            label_values.push(value.clone());
        }
        ids.push(id);
        projects.push(spec.project.clone());
        priorities.push(spec.priority);
        images.push(spec.image.clone());
        cpus.push(i64::from(spec.resources.cpu_millicores));
        memories.push(i64::from(spec.resources.memory_mib));
        constraints.push(if spec.constraints.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&spec.constraints).map_err(|e| corrupt("constraints", e))?)
        });
        specs.push(serde_json::to_string(spec).map_err(|e| corrupt("spec", e))?);
        payload_bytes.push(task.payload.as_ref().map_or(0, |p| p.len() as i64));
        payloads.push(task.payload.clone());
        created.push(task.created_at.millis());
        max_attempts.push(i64::from(spec.retry.max_attempts));
        backoffs.push(i64::from(spec.retry.backoff_seconds));
        shapes.push(spec.placement_shape(key));
        not_before.push(task.not_before().millis());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO tasks (id, project, state, priority, image, cpu_millicores, memory_mib, constraints, spec, payload, payload_bytes, \
             created_at, attempt, charged_attempts, max_attempts, backoff_seconds, cancel_requested, not_before, updated_at, shape) \
             SELECT id, project, 'queued', priority, image, cpu, memory, constraints, spec, payload, payload_bytes, created, 0, 0, \
             max_attempts, backoff, false, not_before, created, shape \
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bytea[], \
             $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[]) \
             AS t(id, project, priority, image, cpu, memory, constraints, spec, payload, payload_bytes, created, max_attempts, backoff, shape, \
             not_before)",
        )
        .await
        .map_err(error)?;
    let inserted = tx
        .execute(
            &insert,
            &[
                &ids,
                &projects,
                &priorities,
                &images,
                &cpus,
                &memories,
                &constraints,
                &specs,
                &payloads,
                &payload_bytes,
                &created,
                &max_attempts,
                &backoffs,
                &shapes,
                &not_before,
            ],
        )
        .await;
    match inserted {
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            // Which one: the server says "Key (id)=(01…) already exists."
            let named =
                e.as_db_error().and_then(|db| db.detail()).and_then(|d| d.split("=(").nth(1)).and_then(|rest| rest.split(')').next());
            let id = match named.map(parse_id) {
                Some(Ok(id)) => id,
                _ => parse_id(&ids[0])?,
            };
            return Err(StoreError::Duplicate(id));
        }
        other => other.map_err(error)?,
    };
    if !label_tasks.is_empty() {
        let insert = tx
            .prepare_cached("INSERT INTO task_labels (task_id, key, value) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])")
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&label_tasks, &label_keys, &label_values]).await.map_err(error)?;
    }
    if !hook_tasks.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO webhook_deliveries (task_id, project, url, state, attempts, next_at, created_at) \
                 SELECT t, p, u, 'pending', 0, a, a FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(t, p, u, a)",
            )
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&hook_tasks, &hook_projects, &hook_urls, &hook_at]).await.map_err(error)?;
    }
    Ok(())
}

/// Takes the next audit numbers of each project the entries name, in one
/// statement committed on its own on a connection that waits for no disk
/// flush (the `counters` pool): the counter row is locked only while
/// PostgreSQL executes it, not for any round trip, so concurrent creates in
/// one project (through any number of servers) are not serialised on it. A
/// number taken by a create that then fails is skipped: a gap in the
/// project's own numbering, which tells nothing of other projects. (Its
/// record reaches the disk before any later commit that uses it: the log is
/// sequential.)
async fn reserve_audit_numbers(counters: &Pool, entries: &[AuditEntry]) -> Result<Vec<Option<i64>>, StoreError> {
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for entry in entries {
        if let Some(project) = &entry.project {
            *wanted.entry(project.as_str()).or_default() += 1;
        }
    }
    if wanted.is_empty() {
        return Ok(vec![None; entries.len()]);
    }
    let client = counters.get().await.map_err(pool_error)?;
    // Projects in order, so that two reservations never wait on each other crosswise.
    let take = client
        .prepare_cached(
            "INSERT INTO audit_counters (project, last) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (project) DO UPDATE SET last = audit_counters.last + excluded.last RETURNING project, last",
        )
        .await
        .map_err(error)?;
    let projects: Vec<&str> = wanted.keys().copied().collect();
    let counts: Vec<i64> = wanted.values().copied().collect();
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for row in client.query(&take, &[&projects, &counts]).await.map_err(error)? {
        let (project, last): (String, i64) = (row.get(0), row.get(1));
        let count = wanted.get(project.as_str()).copied().unwrap_or(0);
        next.insert(project, last - count + 1);
    }
    Ok(entries
        .iter()
        .map(|entry| {
            entry.project.as_deref().and_then(|project| next.get_mut(project)).map(|n| {
                *n += 1;
                *n - 1
            })
        })
        .collect())
}

/// Records events in the stream, in the transaction of the write that
/// made them: one row per write, numbered by the writing transaction's id
/// and a sequence (see [`Store::read_events`] for why both).
async fn append_events(tx: &impl GenericClient, at: Timestamp, events: &[shepherd_core::ClusterEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let body = serde_json::to_string(events).map_err(|e| corrupt("events", e))?;
    let insert =
        tx.prepare_cached("INSERT INTO events (xid, at, body) VALUES (pg_current_xact_id()::text::bigint, $1, $2)").await.map_err(error)?;
    tx.execute(&insert, &[&at.millis(), &body]).await.map_err(error)?;
    Ok(())
}

/// Records a node's new state in the event stream.
async fn append_node_event(tx: &impl GenericClient, id: &str, state: NodeState, at: Timestamp) -> Result<(), StoreError> {
    let event = shepherd_core::ClusterEvent::Node(shepherd_core::events::NodeChange {
        node: id.to_string(),
        state: state.as_str().to_string(),
        at,
    });
    append_events(tx, at, &[event]).await
}

async fn append_audit(tx: &impl GenericClient, entries: &[AuditEntry], numbers: &[Option<i64>]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    append_events(tx, entries[0].at, &crate::audit_events(entries)).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (at, actor, project, action, target, detail, project_seq) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await
        .map_err(error)?;
    for (e, project_seq) in entries.iter().zip(numbers) {
        tx.execute(&insert, &[&e.at.millis(), &e.actor, &e.project, &e.action, &e.target, &e.detail, project_seq]).await.map_err(error)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn acquire_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError> {
        let client = self.client().await?;
        let ttl = ttl.as_millis() as i64;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO leadership (id, holder, epoch, expires_at) VALUES (1, $1, 1, {NOW_MS} + $2) \
                     ON CONFLICT (id) DO UPDATE SET \
                     epoch = CASE WHEN leadership.holder = excluded.holder THEN leadership.epoch ELSE leadership.epoch + 1 END, \
                     holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leadership.holder = excluded.holder OR leadership.expires_at < {NOW_MS} \
                     RETURNING holder, epoch, expires_at"
                ),
                &[&holder, &ttl],
            )
            .await
            .map_err(error)?;
        Ok(row.map(|row| Lease { holder: row.get(0), epoch: row.get(1), expires_at: Timestamp(row.get(2)) }))
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("UPDATE leadership SET expires_at = 0 WHERE id = 1 AND holder = $1", &[&holder]).await.map_err(error)?;
        Ok(())
    }

    async fn apply_as_leader(&self, events: Vec<(TaskId, Event)>, now: Timestamp, lease: &Lease) -> Result<Vec<ApplyResult>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        check_lease(&tx, lease).await?;
        let batch: Vec<apply::BatchEvent<'_>> = events.iter().map(|(id, event)| (*id, event, now, None)).collect();
        let results = apply::apply_batch(&tx, &batch).await?;
        tx.commit().await.map_err(error)?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn touch_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO servers (id, url, role, started_at, last_seen_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, role = excluded.role, last_seen_at = excluded.last_seen_at",
                &[&server.id, &server.url, &server.role, &server.started_at.millis(), &server.last_seen_at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn list_servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT id, url, role, started_at, last_seen_at FROM servers ORDER BY id", &[])
            .await
            .map_err(error)?
            .iter()
            .map(|row| ServerRecord {
                id: row.get(0),
                url: row.get(1),
                role: row.get(2),
                started_at: Timestamp(row.get(3)),
                last_seen_at: Timestamp(row.get(4)),
            })
            .collect())
    }

    async fn publish(&self, message: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &message]).await.map_err(error)?;
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.messages.subscribe())
    }

    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        self.create_tasks_audited(tasks, Vec::new()).await
    }

    async fn create_tasks_audited(&self, tasks: Vec<NewTask>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        let numbers = reserve_audit_numbers(&self.counters, &audit).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let started = std::time::Instant::now();
        insert_tasks(&tx, &tasks, &self.shape_key).await?;
        if let Some(first) = tasks.first() {
            append_events(&tx, first.created_at, &crate::created_events(&tasks)).await?;
        }
        append_audit(&tx, &audit, &numbers).await?;
        tx.commit().await.map_err(error)?;
        if let Some(observer) = self.observer.get() {
            observer.committed(1, started.elapsed());
        }
        self.observer.created(&tasks);
        Ok(())
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).await.map_err(error)?;
        let Some(row) = client.query_opt(&stmt, &[&id.to_string()]).await.map_err(error)? else { return Ok(None) };
        let mut task = task_from_row(&row)?;
        load_attempts(&client, &mut task).await?;
        Ok(Some(task))
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<TaskPage, StoreError> {
        let client = self.client().await?;
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if !filter.states.is_empty() {
            args.push(Box::new(filter.states.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>()));
            sql.push_str(&format!(" AND state = ANY(${})", args.len()));
        }
        if let Some(project) = &filter.project {
            args.push(Box::new(project.clone()));
            sql.push_str(&format!(" AND project = ${}", args.len()));
        }
        for (key, value) in &filter.labels {
            args.push(Box::new(key.clone()));
            args.push(Box::new(value.clone()));
            sql.push_str(&format!(
                " AND id IN (SELECT task_id FROM task_labels WHERE key = ${} AND value = ${})",
                args.len() - 1,
                args.len()
            ));
        }
        if let Some(before) = filter.before {
            args.push(Box::new(before.to_string()));
            sql.push_str(&format!(" AND id < ${}", args.len()));
        }
        let limit = filter.limit.clamp(1, 10_000);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &params).await.map_err(error)?;
        let mut tasks = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if tasks.len() > limit {
            tasks.truncate(limit);
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        for task in &mut tasks {
            load_attempts(&client, task).await?;
        }
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn apply(&self, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.combiner.apply(events, now, None).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn apply_reported(&self, node: String, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.combiner.apply(events, now, Some(node)).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn queued_tasks(&self, now: Timestamp, query: QueueQuery) -> Result<QueuePage, StoreError> {
        let client = self.client().await?;
        let projects: Vec<(String, Option<QueueCursor>)> = match query.projects {
            Some(projects) => projects.into_iter().collect(),
            None => client
                // One index step per project (a loose index scan), not a
                // read of every queued task.
                .query(
                    "WITH RECURSIVE p(project) AS ( \
                       SELECT (SELECT project FROM tasks WHERE state = 'queued' ORDER BY project LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT project FROM tasks WHERE state = 'queued' AND project > p.project ORDER BY project LIMIT 1) \
                       FROM p WHERE p.project IS NOT NULL) \
                     SELECT project FROM p WHERE project IS NOT NULL AND EXISTS \
                       (SELECT 1 FROM tasks WHERE state = 'queued' AND project = p.project AND not_before <= $1)",
                    &[&now.millis()],
                )
                .await
                .map_err(error)?
                .iter()
                .map(|row| (row.get(0), None))
                .collect(),
        };
        let mut page = QueuePage::default();
        if projects.is_empty() {
            return Ok(page);
        }
        let per_project = (query.limit / projects.len()).max(16);
        let skip: Vec<i64> = query.skip_shapes;
        let base =
            "SELECT id, spec, shape, payload IS NOT NULL FROM tasks WHERE state = 'queued' AND project = $1 AND not_before <= $2 AND shape <> ALL($3)";
        let order = "ORDER BY priority DESC, id LIMIT $4";
        let head = client.prepare_cached(&format!("{base} {order}")).await.map_err(error)?;
        let same = client.prepare_cached(&format!("{base} AND priority = $5 AND id > $6 {order}")).await.map_err(error)?;
        let lower = client.prepare_cached(&format!("{base} AND priority < $5 {order}")).await.map_err(error)?;
        for (project, cursor) in &projects {
            let mut left = per_project as i64;
            let mut rows = Vec::new();
            match cursor {
                None => rows.extend(client.query(&head, &[project, &now.millis(), &skip, &left]).await.map_err(error)?),
                Some(c) => {
                    let after = c.id.to_string();
                    rows.extend(client.query(&same, &[project, &now.millis(), &skip, &left, &c.priority, &after]).await.map_err(error)?);
                    left -= rows.len() as i64;
                    if left > 0 {
                        rows.extend(client.query(&lower, &[project, &now.millis(), &skip, &left, &c.priority]).await.map_err(error)?);
                    }
                }
            }
            let full = rows.len() >= per_project;
            for row in rows {
                page.tasks.push(QueuedTask {
                    id: parse_id(row.get::<_, &str>(0))?,
                    spec: serde_json::from_str(row.get::<_, &str>(1)).map_err(|e| corrupt("spec", e))?,
                    shape: row.get(2),
                    has_payload: row.get::<_, bool>(3),
                });
            }
            if full {
                if let Some(last) = page.tasks.last() {
                    page.more.insert(project.clone(), last.cursor());
                }
            }
        }
        Ok(page)
    }

    async fn active_tasks(&self) -> Result<Vec<ActiveTask>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("{ACTIVE_COLUMNS} WHERE state IN ('scheduled', 'running')")).await.map_err(error)?;
        client.query(&stmt, &[]).await.map_err(error)?.iter().map(active_from_row).collect()
    }

    async fn active_tasks_on(&self, node_id: &str) -> Result<Vec<ActiveTask>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{ACTIVE_COLUMNS} WHERE node_id = $1 AND state IN ('scheduled', 'running')"))
            .await
            .map_err(error)?;
        client.query(&stmt, &[&node_id]).await.map_err(error)?.iter().map(active_from_row).collect()
    }

    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT t.state, t.attempt, t.node_id, t.cancel_requested, t.spec, t.payload, a.started_at FROM tasks t \
                 LEFT JOIN attempts a ON a.task_id = t.id AND a.number = t.attempt WHERE t.id = $1",
            )
            .await
            .map_err(error)?;
        let Some(row) = client.query_opt(&stmt, &[&id.to_string()]).await.map_err(error)? else { return Ok(None) };
        let spec: shepherd_core::TaskSpec = serde_json::from_str(row.get::<_, &str>(4)).map_err(|e| corrupt("spec", e))?;
        let mut secrets = BTreeMap::new();
        if !spec.secrets.is_empty() {
            let names: Vec<String> = spec.secrets.iter().map(|s| s.name.clone()).collect();
            for secret in client
                .query("SELECT name, value FROM secrets WHERE project = $1 AND name = ANY($2)", &[&spec.project, &names])
                .await
                .map_err(error)?
            {
                secrets.insert(secret.get::<_, String>(0), secret.get::<_, Vec<u8>>(1));
            }
        }
        let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(&spec.image));
        let value = client
            .query_opt("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&spec.project, &login])
            .await
            .map_err(error)?
            .map(|row| row.get::<_, Vec<u8>>(0));
        let registry_auth = crate::registry_auth_from(&spec.image, value);
        drop(client);
        let mounts = if spec.volumes.is_empty() {
            Vec::new()
        } else {
            shepherd_core::launch::resolve_mounts(&spec, &self.volumes(Some(spec.project.clone())).await?)
        };
        let networks = if spec.networks.is_empty() && spec.network != "bridge" {
            Vec::new()
        } else {
            let policy = self.get_project(&spec.project).await?.map(|p| p.policy).unwrap_or_default();
            shepherd_core::launch::resolve_networks(&spec, &policy)
        };
        Ok(Some(LaunchSpec {
            id,
            state: parse_state(row.get::<_, &str>(0))?,
            attempt: row.get::<_, i64>(1) as u32,
            node_id: row.get(2),
            cancel_requested: row.get(3),
            spec,
            payload: row.get(5),
            attempt_started_at: row.get::<_, Option<i64>>(6).map(Timestamp),
            secrets,
            volumes: mounts,
            networks,
            registry_auth,
        }))
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let ids: Vec<String> = chunks.iter().map(|c| c.task_id.to_string()).collect();
        let attempts: Vec<i64> = chunks.iter().map(|c| i64::from(c.attempt)).collect();
        let streams: Vec<i16> = chunks.iter().map(|c| c.stream as i16).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        client
            .execute(
                "INSERT INTO task_logs (task_id, attempt, stream, data) SELECT task_id, attempt, stream, data \
                 FROM UNNEST($1::text[], $2::bigint[], $3::smallint[], $4::bytea[]) WITH ORDINALITY AS t(task_id, attempt, stream, data, n) \
                 ORDER BY n",
                &[&ids, &attempts, &streams, &data],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn read_logs(&self, id: TaskId, after: i64, limit: usize) -> Result<Vec<StoredLogChunk>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT seq, attempt, stream, data FROM task_logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .await
            .map_err(error)?;
        Ok(client
            .query(&stmt, &[&id.to_string(), &after, &(limit as i64)])
            .await
            .map_err(error)?
            .iter()
            .map(|row| StoredLogChunk {
                seq: row.get(0),
                attempt: row.get::<_, i64>(1) as u32,
                stream: LogStream::from_code(i64::from(row.get::<_, i16>(2))),
                data: row.get(3),
            })
            .collect())
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let client = client.transaction().await.map_err(error)?;
        let labels = serde_json::to_string(&node.labels).map_err(|e| corrupt("labels", e))?;
        let images = serde_json::to_string(&node.images).map_err(|e| corrupt("images", e))?;
        client
            .execute(
                "INSERT INTO nodes (id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, \
                 last_heartbeat_at, images) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, state = excluded.state, driver = excluded.driver, \
                 cpu_millicores = excluded.cpu_millicores, memory_mib = excluded.memory_mib, max_tasks = excluded.max_tasks, \
                 labels = excluded.labels, last_heartbeat_at = excluded.last_heartbeat_at, images = excluded.images",
                &[
                    &node.id,
                    &node.hostname,
                    &node.state.as_str(),
                    &node.driver,
                    &i64::from(node.capacity.cpu_millicores),
                    &i64::from(node.capacity.memory_mib),
                    &i64::from(node.max_tasks),
                    &labels,
                    &node.registered_at.millis(),
                    &node.last_heartbeat_at.millis(),
                    &images,
                ],
            )
            .await
            .map_err(error)?;
        append_node_event(&client, &node.id, node.state, node.last_heartbeat_at).await?;
        client.commit().await.map_err(error)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, last_heartbeat_at, images \
                 FROM nodes ORDER BY id",
            )
            .await
            .map_err(error)?;
        client.query(&stmt, &[]).await.map_err(error)?.iter().map(node_from_row).collect()
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, last_heartbeat_at, images \
                 FROM nodes WHERE id = $1",
            )
            .await
            .map_err(error)?;
        client.query_opt(&stmt, &[&id]).await.map_err(error)?.as_ref().map(node_from_row).transpose()
    }

    async fn touch_node(&self, id: &str, at: Timestamp, images: Vec<String>) -> Result<Option<NodeState>, StoreError> {
        let client = self.client().await?;
        let images = serde_json::to_string(&images).map_err(|e| corrupt("images", e))?;
        let row = client
            .query_opt(
                "UPDATE nodes SET last_heartbeat_at = GREATEST(last_heartbeat_at, $2), images = $3 WHERE id = $1 RETURNING state",
                &[&id, &at.millis(), &images],
            )
            .await
            .map_err(error)?;
        row.map(|row| {
            let state: String = row.get(0);
            NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))
        })
        .transpose()
    }

    async fn touch_nodes(&self, beats: Vec<NodeBeat>) -> Result<Vec<Option<NodeState>>, StoreError> {
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // In id order, so two servers' batches lock rows in the same order.
        let mut sorted: Vec<&NodeBeat> = beats.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = sorted.iter().map(|b| b.id.as_str()).collect();
        let times: Vec<i64> = sorted.iter().map(|b| b.at.millis()).collect();
        let images = sorted
            .iter()
            .map(|b| b.images.as_ref().map(serde_json::to_string).transpose().map_err(|e| corrupt("images", e)))
            .collect::<Result<Vec<Option<String>>, StoreError>>()?;
        // One statement for the whole batch; images kept where none were sent.
        let rows = client
            .query(
                "UPDATE nodes n SET last_heartbeat_at = GREATEST(n.last_heartbeat_at, v.at), images = COALESCE(v.images, n.images) \
                 FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS v(id, at, images) WHERE n.id = v.id RETURNING n.id, n.state",
                &[&ids, &times, &images],
            )
            .await
            .map_err(error)?;
        let mut states = std::collections::HashMap::new();
        for row in rows {
            let state: String = row.get(1);
            let state = NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))?;
            states.insert(row.get::<_, String>(0), state);
        }
        Ok(beats.iter().map(|b| states.get(&b.id).copied()).collect())
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let changed = tx.execute("UPDATE nodes SET state = $2 WHERE id = $1", &[&id, &state.as_str()]).await.map_err(error)? > 0;
        if changed {
            append_node_event(&tx, id, state, Timestamp::now()).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(changed)
    }

    async fn count_by_state(&self, project: Option<String>) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = match project {
            None => client.query("SELECT state, COUNT(*) FROM tasks GROUP BY state", &[]).await,
            Some(p) => client.query("SELECT state, COUNT(*) FROM tasks WHERE project = $1 GROUP BY state", &[&p]).await,
        }
        .map_err(error)?;
        rows.iter().map(|row| Ok((parse_state(row.get::<_, &str>(0))?, row.get::<_, i64>(1) as u64))).collect()
    }

    async fn count_queued(&self, project: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_one("SELECT COUNT(*) FROM tasks WHERE project = $1 AND state = 'queued'", &[&project]).await.map_err(error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn create_project(&self, project: Project) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let limits = serde_json::to_string(&project.limits).map_err(|e| corrupt("limits", e))?;
        Ok(client
            .execute(
                "INSERT INTO projects (name, created_at, limits) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[&project.name, &project.created_at.millis(), &limits],
            )
            .await
            .map_err(error)?
            > 0)
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT name, created_at, limits, policy FROM projects WHERE name = $1", &[&name])
            .await
            .map_err(error)?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    async fn list_projects(&self) -> Result<Vec<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query("SELECT name, created_at, limits, policy FROM projects ORDER BY name", &[])
            .await
            .map_err(error)?
            .iter()
            .map(project_from)
            .collect()
    }

    async fn set_project_limits(&self, name: &str, limits: shepherd_core::ProjectLimits) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let limits = serde_json::to_string(&limits).map_err(|e| corrupt("limits", e))?;
        Ok(client.execute("UPDATE projects SET limits = $2 WHERE name = $1", &[&name, &limits]).await.map_err(error)? > 0)
    }

    async fn registry_login_projects(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT DISTINCT project FROM secrets WHERE name LIKE 'registry.%' ORDER BY project", &[]).await.map_err(error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn registry_auth(&self, project: &str, image: &str) -> Result<Option<shepherd_core::RegistryAuth>, StoreError> {
        let client = self.client().await?;
        let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(image));
        let value = client
            .query_opt("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&project, &login])
            .await
            .map_err(error)?
            .map(|row| row.get::<_, Vec<u8>>(0));
        Ok(crate::registry_auth_from(image, value))
    }

    async fn set_project_policy(&self, name: &str, policy: shepherd_core::ProjectPolicy) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let policy = serde_json::to_string(&policy).map_err(|e| corrupt("policy", e))?;
        Ok(client.execute("UPDATE projects SET policy = $2 WHERE name = $1", &[&name, &policy]).await.map_err(error)? > 0)
    }

    async fn create_volume(&self, volume: Volume) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let record = serde_json::to_string(&volume).map_err(|e| corrupt("volume record", e))?;
        Ok(client
            .execute(
                "INSERT INTO volumes (project, name, engine_name, node_id, record) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&volume.project, &volume.name, &volume.engine_name, &volume.node_id, &record],
            )
            .await
            .map_err(error)?
            == 1)
    }

    async fn volumes(&self, project: Option<String>) -> Result<Vec<Volume>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT record, node_id FROM volumes WHERE $1::TEXT IS NULL OR project = $1 ORDER BY project, name", &[&project])
            .await
            .map_err(error)?;
        rows.iter().map(|row| crate::volume_from(row.get::<_, &str>(0), row.get(1))).collect()
    }

    async fn delete_volume(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM volumes WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)? == 1)
    }

    async fn bind_volume(&self, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        client
            .execute("UPDATE volumes SET node_id = $3 WHERE project = $1 AND name = $2 AND node_id IS NULL", &[&project, &name, &node])
            .await
            .map_err(error)?;
        let row =
            client.query_opt("SELECT node_id FROM volumes WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)?;
        Ok(row.and_then(|r| r.get(0)))
    }

    async fn create_token(&self, token: TokenRecord, hash: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_tokens (id, project, name, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&token.id, &token.project, &token.name, &hash, &token.created_at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
            .await
            .map_err(error)?;
        Ok(client.query_opt(&stmt, &[&hash]).await.map_err(error)?.as_ref().map(token_from))
    }

    async fn list_tokens(&self, project: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE project = $1 ORDER BY created_at, id",
                &[&project],
            )
            .await
            .map_err(error)?
            .iter()
            .map(token_from)
            .collect())
    }

    async fn revoke_token(&self, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE api_tokens SET revoked_at = $3 WHERE project = $1 AND id = $2 AND revoked_at IS NULL",
                &[&project, &id, &at.millis()],
            )
            .await
            .map_err(error)?
            > 0)
    }

    async fn put_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO secrets (project, name, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&project, &name, &value, &at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM secrets WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)? > 0)
    }

    async fn list_secrets(&self, project: &str) -> Result<Vec<SecretInfo>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT name, updated_at FROM secrets WHERE project = $1 ORDER BY name", &[&project])
            .await
            .map_err(error)?
            .iter()
            .map(|row| SecretInfo { name: row.get(0), updated_at: Timestamp(row.get(1)) })
            .collect())
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
        // Rows are read in (transaction id, sequence) order, and only those of
        // transactions older than every one still running (the snapshot's
        // xmin): a transaction that commits later has an id at least that
        // xmin, so it can never land before a cursor already handed out.
        let client = self.client().await?;
        let (major, minor) = after.map_or((-1, -1), |c| (c.major, c.minor));
        let rows = client
            .query(
                "SELECT xid, id, body FROM events WHERE (xid, id) >= ($1, $2) \
                 AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY xid, id LIMIT $3",
                &[&major, &minor, &((limit.max(1) + usize::from(after.is_some())) as i64)],
            )
            .await
            .map_err(error)?;
        let mut out = Vec::new();
        for row in rows {
            let cursor = EventCursor { major: row.get(0), minor: row.get(1), index: 0 };
            crate::push_events(&mut out, cursor, row.get(2), after)?;
        }
        Ok(out)
    }

    async fn latest_event(&self) -> Result<Option<EventCursor>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT xid, id, body FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY xid DESC, id DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(error)?;
        let Some(row) = row else { return Ok(None) };
        let mut events = Vec::new();
        crate::push_events(&mut events, EventCursor { major: row.get(0), minor: row.get(1), index: 0 }, row.get(2), None)?;
        Ok(events.last().map(|e| e.cursor))
    }

    async fn queue_position(&self, id: TaskId) -> Result<Option<(u64, u64)>, StoreError> {
        let client = self.client().await?;
        let key = id.to_string();
        let row =
            client.query_opt("SELECT project, priority FROM tasks WHERE id = $1 AND state = 'queued'", &[&key]).await.map_err(error)?;
        let Some(row) = row else { return Ok(None) };
        let (project, priority): (String, i32) = (row.get(0), row.get(1));
        // Each walks a queue index up to the task, at most QUEUE_COUNT_CAP entries.
        let cap = QUEUE_COUNT_CAP as i64;
        let in_project = client
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' AND project = $4 \
                 AND (priority > $1 OR (priority = $1 AND id < $2)) LIMIT $3) AS ahead",
                &[&priority, &key, &cap, &project],
            )
            .await
            .map_err(error)?;
        let in_cluster = client
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' \
                 AND (priority > $1 OR (priority = $1 AND id < $2)) LIMIT $3) AS ahead",
                &[&priority, &key, &cap],
            )
            .await
            .map_err(error)?;
        Ok(Some((in_project.get::<_, i64>(0) as u64 + 1, in_cluster.get::<_, i64>(0) as u64 + 1)))
    }

    async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let client = self.client().await?;
        let sql = USAGE_SQL.replace("$4 IS NULL", "$4::text IS NULL");
        let rows = client
            .query(&sql, &[&query.from.millis(), &query.to.millis(), &query.bucket_ms.max(1), &query.project])
            .await
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|row| UsageRow {
                project: row.get(0),
                start: Timestamp(row.get(1)),
                tasks: row.get::<_, i64>(2).max(0) as u64,
                attempts: row.get::<_, i64>(3).max(0) as u64,
                cpu_ms: row.get::<_, i64>(4).max(0) as u64,
                memory_byte_ms: row.get::<_, f64>(5),
                wall_ms: row.get::<_, i64>(6).max(0) as u64,
            })
            .collect())
    }

    async fn active_counts(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT project, state, COUNT(*) FROM tasks WHERE state IN ('queued', 'scheduled', 'running') GROUP BY project, state",
                &[],
            )
            .await
            .map_err(error)?;
        rows.iter().map(|row| Ok((row.get::<_, String>(0), parse_state(row.get::<_, &str>(1))?, row.get::<_, i64>(2) as u64))).collect()
    }

    async fn put_machine(&self, machine: Machine, expected: Option<MachineState>) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let record = serde_json::to_string(&machine).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))?;
        let tx = client.transaction().await.map_err(error)?;
        let changed = match expected {
            None => tx
                .execute(
                    "INSERT INTO machines (id, state, record) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                    &[&machine.id, &machine.state.as_str(), &record],
                )
                .await
                .map_err(error)?,
            Some(expected) => tx
                .execute(
                    "UPDATE machines SET state = $2, record = $3 WHERE id = $1 AND state = $4",
                    &[&machine.id, &machine.state.as_str(), &record, &expected.as_str()],
                )
                .await
                .map_err(error)?,
        };
        if changed == 1 && expected != Some(machine.state) {
            let at = Timestamp::now();
            append_events(&tx, at, &[shepherd_core::events::MachineChange::of(&machine, at)]).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(changed == 1)
    }

    async fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT record FROM machines ORDER BY id", &[]).await.map_err(error)?;
        rows.iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| StoreError::Corrupt(format!("machine record: {e}"))))
            .collect()
    }

    async fn delete_machine(&self, id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let Some(row) = tx.query_opt("DELETE FROM machines WHERE id = $1 RETURNING record", &[&id]).await.map_err(error)? else {
            return Ok(false);
        };
        let machine: Machine =
            serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))?;
        let at = Timestamp::now();
        append_events(&tx, at, &[shepherd_core::events::MachineChange::destroyed(&machine, at)]).await?;
        tx.commit().await.map_err(error)?;
        Ok(true)
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM nodes WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM tasks WHERE node_id = $1 AND state IN ('scheduled', 'running'))",
                &[&id],
            )
            .await
            .map_err(error)?;
        if deleted == 1 {
            client.execute("DELETE FROM node_credentials WHERE node_id = $1", &[&id]).await.map_err(error)?;
        }
        Ok(deleted == 1)
    }

    async fn claim_node(&self, id: &str, credential: Option<String>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        if let Some(credential) = &credential {
            client
                .execute(
                    "INSERT INTO node_credentials (node_id, credential) VALUES ($1, $2) ON CONFLICT (node_id) DO NOTHING",
                    &[&id, credential],
                )
                .await
                .map_err(error)?;
        }
        let row = client.query_opt("SELECT credential FROM node_credentials WHERE node_id = $1", &[&id]).await.map_err(error)?;
        Ok(row.map(|r| r.get::<_, String>(0)) == credential)
    }

    async fn cluster_value(&self, key: &str, proposed: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute("INSERT INTO cluster_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &proposed])
            .await
            .map_err(error)?;
        let row = client.query_one("SELECT value FROM cluster_meta WHERE key = $1", &[&key]).await.map_err(error)?;
        Ok(row.get(0))
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM events WHERE at < $1", &[&before.millis()]).await.map_err(error)
    }

    fn shape_key(&self) -> &ShapeKey {
        &self.shape_key
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
        let client = self.client().await?;
        let rows = client
            .query("SELECT digest, size, created_at FROM packages WHERE project = $1 ORDER BY created_at, digest", &[&project])
            .await
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|r| crate::PackageInfo { digest: r.get(0), size: r.get::<_, i64>(1).max(0) as u64, created_at: Timestamp(r.get(2)) })
            .collect())
    }

    async fn delete_package(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(n > 0)
    }

    async fn package_in_use(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let pattern = format!("%\"digest\":\"{digest}\"%");
        let row = client
            .query_opt(
                "SELECT 1 FROM tasks WHERE project = $1 AND state IN ('queued', 'scheduled', 'running') AND spec LIKE $2 LIMIT 1",
                &[&project, &pattern],
            )
            .await
            .map_err(error)?;
        Ok(row.is_some())
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
        let numbers = reserve_audit_numbers(&self.counters, &entries).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        append_audit(&tx, &entries, &numbers).await?;
        tx.commit().await.map_err(error)
    }

    async fn list_audit(&self, project: Option<String>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        let limit = limit.clamp(1, 10_000) as i64;
        let rows = match &project {
            Some(project) => {
                client
                    .query(
                        "SELECT project_seq, at, actor, project, action, target, detail FROM audit_log \
                     WHERE project = $1 AND ($2::bigint IS NULL OR project_seq < $2) ORDER BY project_seq DESC LIMIT $3",
                        &[project, &before, &limit],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        "SELECT seq, at, actor, project, action, target, detail FROM audit_log \
                     WHERE ($1::bigint IS NULL OR seq < $1) ORDER BY seq DESC LIMIT $2",
                        &[&before, &limit],
                    )
                    .await
            }
        }
        .map_err(error)?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                seq: row.get(0),
                at: Timestamp(row.get(1)),
                actor: row.get(2),
                project: row.get(3),
                action: row.get(4),
                target: row.get(5),
                detail: row.get(6),
            })
            .collect())
    }
}

const ACTIVE_COLUMNS: &str = "SELECT id, state, node_id, attempt, cpu_millicores, memory_mib, cancel_requested, spec FROM tasks";

fn active_from_row(row: &tokio_postgres::Row) -> Result<ActiveTask, StoreError> {
    let spec: shepherd_core::TaskSpec = serde_json::from_str(row.get::<_, &str>(7)).map_err(|e| corrupt("spec", e))?;
    Ok(ActiveTask {
        id: parse_id(row.get::<_, &str>(0))?,
        project: spec.project,
        labels: spec.labels,
        code: spec.code,
        state: parse_state(row.get::<_, &str>(1))?,
        node_id: row.get::<_, Option<String>>(2).unwrap_or_default(),
        attempt: row.get::<_, i64>(3) as u32,
        resources: Resources { cpu_millicores: row.get::<_, i64>(4) as u32, memory_mib: row.get::<_, i64>(5) as u32 },
        cancel_requested: row.get(6),
        gpus: spec.gpus,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(super::redact("postgres://shep:secret@db:5432/shep"), "postgres://shep:***@db:5432/shep");
        assert_eq!(super::redact("postgres://db/shep"), "postgres://db/shep");
    }
}

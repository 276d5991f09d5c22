//! The embedded store: one SQLite database file in WAL mode.
//!
//! Writes go to a single writer thread that batches them into group
//! commits ([`writer`]); reads use a small pool of read-only connections,
//! which WAL lets run alongside the writer.

mod children;
mod codes;
mod lifecycle;
mod machines;
mod retention;
mod rows;
mod schema;
mod tenants;
mod volumes;
mod workflow;
pub mod writer;
#[cfg(test)]
mod writer_tests;

use crate::*;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use shepherd_core::{
    Code, CodeSpec, EventCursor, NewTask, Resources, Schedule, ScheduleState, StoredEvent, Task, TaskId, TaskState, Timestamp,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;
use writer::WriteOp;

/// Whether an array's children not made yet wait for more than the queue
/// (a parallelism, or pairs in another array): they count as waiting.
const UNMADE_HELD: &str = "parallelism IS NOT NULL OR EXISTS (SELECT 1 FROM task_deps d WHERE d.task_id = arrays.id AND d.cond = 'each')";

/// SQLite's errors as the store's.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Conflict(e.to_string())
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(Box::new(e)),
        }
    }
}

/// At most this many shapes are skipped in one queue read (one SQL
/// parameter each); tasks of further shapes are read and placed as usual.
const MAX_SKIPPED_SHAPES: usize = 500;

/// How hard SQLite works to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync the WAL at every commit: survives power loss. The default.
    Full,
    /// fsync only at checkpoints: survives a process crash (SIGKILL), may
    /// lose the last commits on power loss.
    Normal,
}

/// Settings for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { synchronous: Synchronous::Full, readers: 4 }
    }
}

/// The embedded SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writes: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped to stop the checkpointer thread.
    checkpoints: Mutex<Option<mpsc::Sender<()>>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    observer: ObserverSlot,
    /// Keys placement shapes (the cluster's secret, in `cluster_meta`).
    shape_key: shepherd_core::shape::ShapeKey,
    /// Code packages' bytes, one file per digest beside the database: a
    /// 32 MiB upload never goes through the writer that every other write
    /// waits for.
    packages_dir: PathBuf,
    /// Held while a package file is written or removed with its row.
    package_files: tokio::sync::Mutex<()>,
}

/// WAL pages past which the writer checkpoints itself: a backstop, for
/// when the checkpointer thread falls behind.
const WAL_CHECKPOINT_PAGES: i64 = 40_000;

/// How often the checkpointer thread copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer connection's page cache, KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Opens a connection with the pragmas every Shepherd connection uses.
pub fn open_connection(path: &Path, synchronous: Synchronous, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Checkpoints are the checkpointer thread's (`checkpointer`), once
        // a second, off the writer's thread. The writer checkpoints itself
        // only past 40,000 pages (160 MiB) of WAL, if that thread falls
        // behind. (SQLite's default, 1,000 pages in the writer's commit,
        // cost the writer a checkpoint a few times a second at 5,000 nodes.)
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        // Every request of a group commit runs in its own savepoint, and a
        // savepoint keeps the pages it changes in a statement journal. By
        // default that journal spills to a temporary file past 64 KiB: at
        // 5,000 nodes two thirds of the writer's write calls went there,
        // not to the WAL. In memory it costs at most a group's pages.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // A larger page cache for the writer (SQLite's default is 2 MiB):
        // the tails of the tasks table and its indexes stay in memory
        // instead of being read again by every commit.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    }
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Copies the WAL into the database once a second (a passive checkpoint:
/// it never waits for the writer or a reader), on its own connection and
/// thread, so that the single writer only writes. Stops when `stop`'s
/// sender is dropped.
fn checkpointer(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint not done");
        }
    }
}

/// The database and its WAL and shared-memory files hold secrets: readable
/// by their owner only, also when an older version made them 0644.
fn private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the schema in a fresh database (used by the ingest benchmark's baseline).
pub fn create_schema(conn: &mut Connection) -> Result<i64, StoreError> {
    schema::migrate(conn)
}

/// The database's placement shape key (made by the migrations).
pub fn shape_key(conn: &Connection) -> Result<shepherd_core::shape::ShapeKey, StoreError> {
    use rusqlite::OptionalExtension;
    let value: Option<String> =
        conn.query_row("SELECT value FROM cluster_meta WHERE key = ?1", [crate::SHAPE_KEY], |row| row.get(0)).optional()?;
    crate::shape_key_from(&value.ok_or_else(|| StoreError::Corrupt(format!("no cluster value {}", crate::SHAPE_KEY)))?)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut conn = open_connection(&path, options.synchronous, false)?;
        let version = schema::migrate(&mut conn)?;
        if version > schema::VERSION {
            return Err(StoreError::NewerSchema { found: version, known: schema::VERSION });
        }
        private(&path)?;
        let shape_key = shape_key(&conn)?;
        tracing::info!(path = %path.display(), schema_version = version, "opened SQLite store");
        let readers = (0..options.readers.max(1))
            .map(|_| open_connection(&path, options.synchronous, true).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel();
        let observer = ObserverSlot::default();
        let slot = observer.clone();
        let key = shape_key.clone();
        let writer = std::thread::Builder::new().name("store-writer".into()).spawn(move || writer::run(conn, rx, slot, key))?;
        let (stop, stopped) = mpsc::channel();
        let checkpoint_conn = open_connection(&path, options.synchronous, false)?;
        std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || checkpointer(checkpoint_conn, stopped))?;
        Ok(SqliteStore {
            writes: Mutex::new(Some(tx)),
            checkpoints: Mutex::new(Some(stop)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            observer,
            shape_key,
            packages_dir: path.with_file_name("package-zips"),
            package_files: tokio::sync::Mutex::new(()),
            path,
        })
    }

    /// Makes every array's children not made yet as rows: running
    /// arrays' as the queue would make them, stopped arrays' as cancelled
    /// (before the store is copied to PostgreSQL, which holds every child
    /// as a row). Returns how many arrays it completed.
    pub async fn make_every_child(&self) -> Result<usize, StoreError> {
        self.write_with(|conn| {
            let arrays: Vec<String> = conn
                .prepare("SELECT id FROM arrays WHERE made < children ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let now = Timestamp::now();
            for array in &arrays {
                let mut follow = children::FollowUps::new();
                children::make_rest(conn, array, &mut follow)?;
                let mut cascade = Vec::new();
                lifecycle::run_follow_ups(conn, follow, now, &mut cascade)?;
                writer::append_applied(conn, now, &cascade)?;
                children::make_cancelled(conn, array)?;
            }
            Ok(arrays.len())
        })
        .await
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after the writes already queued, and waits for it.
    pub fn close_writer(&self) {
        if let Ok(mut checkpoints) = self.checkpoints.lock() {
            checkpoints.take();
        }
        if let Ok(mut writes) = self.writes.lock() {
            writes.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        {
            let writes = self.writes.lock().map_err(|_| StoreError::Closed)?;
            let sender = writes.as_ref().ok_or(StoreError::Closed)?;
            sender.send(make(reply)).map_err(|_| StoreError::Closed)?;
        }
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on the writer thread in the next group commit.
    async fn write_with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let work: writer::Work = Box::new(move |conn| work(conn).map(|value| Box::new(value) as writer::AnyResult));
        let value = self.write(|reply| WriteOp::Run(work, reply)).await?;
        value.downcast::<T>().map(|v| *v).map_err(|_| StoreError::Corrupt("a write returned the wrong type".into()))
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[index].lock().map_err(|_| StoreError::Closed)?;
            query(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Queued tasks ahead of one (priority `?1`, id `?2`), at most `?3` counted.
const QUEUE_AHEAD_SQLITE: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' \
     AND (priority > ?1 OR (priority = ?1 AND id < ?2)) LIMIT ?3) AS ahead";
/// The same within project `?4`.
const QUEUE_AHEAD_IN_PROJECT_SQLITE: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' AND project = ?4 \
     AND (priority > ?1 OR (priority = ?1 AND id < ?2)) LIMIT ?3) AS ahead";

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close_writer();
    }
}

/// The current lease, if `lease` still is it at `now`.
fn check_lease(conn: &Connection, lease: &Lease, now: Timestamp) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let current = conn
        .prepare_cached("SELECT holder, epoch, expires_at FROM leadership WHERE id = 1")?
        .query_row([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)))
        .optional()?;
    match current {
        Some((holder, epoch, expires_at)) if holder == lease.holder && epoch == lease.epoch && expires_at >= now.millis() => Ok(()),
        _ => Err(StoreError::Fenced { epoch: lease.epoch }),
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn close(&self) {
        self.close_writer();
    }

    async fn acquire_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError> {
        let holder = holder.to_string();
        self.write_with(move |conn| {
            use rusqlite::OptionalExtension;
            let now = Timestamp::now();
            let row = conn
                .prepare_cached(
                    "INSERT INTO leadership (id, holder, epoch, expires_at) VALUES (1, ?1, 1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET \
                     epoch = CASE WHEN leadership.holder = excluded.holder THEN leadership.epoch ELSE leadership.epoch + 1 END, \
                     holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leadership.holder = excluded.holder OR leadership.expires_at < ?3 \
                     RETURNING holder, epoch, expires_at",
                )?
                .query_row(rusqlite::params![holder, now.plus(ttl).millis(), now.millis()], |row| {
                    Ok(Lease { holder: row.get(0)?, epoch: row.get(1)?, expires_at: Timestamp(row.get(2)?) })
                })
                .optional()?;
            Ok(row)
        })
        .await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let holder = holder.to_string();
        self.write_with(move |conn| {
            conn.prepare_cached("UPDATE leadership SET expires_at = 0 WHERE id = 1 AND holder = ?1")?.execute([holder])?;
            Ok(())
        })
        .await
    }

    async fn apply_as_leader(
        &self,
        events: Vec<(TaskId, shepherd_core::Event)>,
        now: Timestamp,
        lease: &Lease,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        let lease = lease.clone();
        let results = self
            .write_with(move |conn| {
                check_lease(conn, &lease, Timestamp::now())?;
                let (results, cascade) = lifecycle::apply_events(conn, &events, now, None)?;
                writer::append_applied(conn, now, &results)?;
                writer::append_applied(conn, now, &cascade)?;
                Ok(results)
            })
            .await?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn touch_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        self.write_with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO servers (id, url, role, started_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, role = excluded.role, last_seen_at = excluded.last_seen_at",
            )?
            .execute(rusqlite::params![
                server.id,
                server.url,
                server.role,
                server.started_at.millis(),
                server.last_seen_at.millis()
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT id, url, role, started_at, last_seen_at FROM servers ORDER BY id")?;
            let rows = stmt.query_map([], |row| {
                Ok(ServerRecord {
                    id: row.get(0)?,
                    url: row.get(1)?,
                    role: row.get(2)?,
                    started_at: Timestamp(row.get(3)?),
                    last_seen_at: Timestamp(row.get(4)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        // The writer tells the observer once the group commits.
        self.write(|reply| WriteOp::Create(tasks, reply)).await
    }

    async fn create_tasks_audited(&self, tasks: Vec<NewTask>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        // The rows' JSON and shapes are worked out here, not on the writer's thread.
        let rows = writer::TaskRow::all(&tasks, &self.shape_key)?;
        let tasks = Arc::new(tasks);
        let stored = tasks.clone();
        self.write_with(move |conn| {
            writer::insert_rows(conn, &stored, &rows, TaskState::Queued, 0)?;
            writer::append_created(conn, &stored)?;
            tenants::append_audit(conn, &audit)
        })
        .await?;
        self.observer.created(&tasks);
        Ok(())
    }

    async fn submit(&self, submission: Submission) -> Result<Submitted, StoreError> {
        let key = self.shape_key.clone();
        let counts: Vec<(String, u64)> = submission
            .entries
            .iter()
            .map(|e| match e {
                Entry::Task(t) => (t.spec.project.clone(), 1),
                Entry::Array(a) => (a.spec.project.clone(), u64::from(a.children.count)),
            })
            .collect();
        let (submitted, cascade) = self
            .write_with(move |conn| {
                let mut events = Vec::new();
                let mut cascade = Vec::new();
                let submitted = workflow::submit(conn, &submission, &key, Timestamp::now(), &mut events, &mut cascade)?;
                if submitted == Submitted::Created {
                    events.extend(crate::audit_events(&submission.audit));
                    writer::append_events(conn, Timestamp::now(), &events)?;
                    writer::append_applied(conn, Timestamp::now(), &cascade)?;
                }
                Ok((submitted, cascade))
            })
            .await?;
        if submitted == Submitted::Created {
            if let Some(o) = self.observer.get() {
                for (project, n) in counts {
                    o.created(&project, n);
                }
                o.applied(&cascade);
            }
        }
        Ok(submitted)
    }

    async fn idempotent_answer(&self, project: &str, key: &str, now: Timestamp) -> Result<Option<(String, u16, String)>, StoreError> {
        let (project, key) = (project.to_string(), key.to_string());
        self.read(move |conn| {
            use rusqlite::OptionalExtension;
            Ok(conn
                .prepare_cached(
                    "SELECT request, status, response FROM idempotency_keys WHERE project = ?1 AND key = ?2 AND created_at > ?3",
                )?
                .query_row(rusqlite::params![project, key, now.millis() - crate::workflow::IDEMPOTENCY_TTL_MS], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?)
        })
        .await
    }

    async fn prune_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.write_with(move |conn| {
            Ok(conn.prepare_cached("DELETE FROM idempotency_keys WHERE created_at < ?1")?.execute([before.millis()])? as u64)
        })
        .await
    }

    async fn get_array(&self, id: &str) -> Result<Option<shepherd_core::ArrayStatus>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| workflow::get_array(conn, &id)).await
    }

    async fn list_arrays(
        &self,
        project: Option<String>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<shepherd_core::ArrayStatus>, StoreError> {
        self.read(move |conn| workflow::list_arrays(conn, project.as_deref(), before.as_deref(), limit)).await
    }

    async fn array_source(&self, id: &str) -> Result<Option<ArraySource>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| workflow::array_source(conn, &id)).await
    }

    async fn cancel_array(&self, project: Option<String>, id: &str, now: Timestamp) -> Result<Option<Vec<ApplyResult>>, StoreError> {
        let id = id.to_string();
        let results = self
            .write_with(move |conn| {
                let mut cascade = Vec::new();
                let found = workflow::cancel_array(conn, project.as_deref(), &id, now, &mut cascade)?;
                writer::append_applied(conn, now, &cascade)?;
                Ok(found.map(|()| cascade))
            })
            .await?;
        if let Some(results) = &results {
            self.observer.applied(results);
        }
        Ok(results)
    }

    async fn dependency_edges(&self, id: &str, limit: usize) -> Result<Vec<(String, String, shepherd_core::DependOn)>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| workflow::dependency_edges(conn, &id, limit)).await
    }

    async fn task_result(&self, id: TaskId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |conn| task_result_in(conn, &id.to_string())).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.read(move |conn| rows::get_task(conn, id)).await
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<TaskPage, StoreError> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {} FROM tasks WHERE 1 = 1", rows::TASK_COLUMNS);
            let mut args: Vec<String> = Vec::new();
            if !filter.states.is_empty() {
                let marks: Vec<String> = filter
                    .states
                    .iter()
                    .map(|state| {
                        args.push(state.as_str().to_string());
                        format!("?{}", args.len())
                    })
                    .collect();
                sql.push_str(&format!(" AND state IN ({})", marks.join(", ")));
            }
            if let Some(project) = &filter.project {
                args.push(project.clone());
                sql.push_str(&format!(" AND project = ?{}", args.len()));
            }
            for (key, value) in &filter.labels {
                args.push(key.clone());
                args.push(value.clone());
                sql.push_str(&crate::workflow::label_condition(&format!("?{}", args.len() - 1), &format!("?{}", args.len())));
            }
            if let Some(before) = filter.before {
                args.push(before.to_string());
                sql.push_str(&format!(" AND id < ?{}", args.len()));
            }
            if let Some(array) = &filter.array {
                args.push(array.clone());
                sql.push_str(&format!(" AND array_id = ?{}", args.len()));
            }
            let limit = filter.limit.clamp(1, 10_000);
            sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params_from_iter(args.iter()))?;
            let mut tasks = Vec::new();
            while let Some(row) = rows.next()? {
                tasks.push(rows::task_from_row(row)?);
            }
            let next_cursor = if tasks.len() > limit {
                tasks.truncate(limit);
                tasks.last().map(|t| t.id)
            } else {
                None
            };
            for task in &mut tasks {
                rows::load_attempts(conn, task)?;
            }
            Ok(TaskPage { tasks, next_cursor })
        })
        .await
    }

    async fn apply(&self, events: Vec<(TaskId, shepherd_core::Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.write(|reply| WriteOp::Apply(events, now, None, reply)).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn apply_reported(
        &self,
        node: String,
        events: Vec<(TaskId, shepherd_core::Event)>,
        now: Timestamp,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.write(|reply| WriteOp::Apply(events, now, Some(node), reply)).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    async fn queued_tasks(&self, now: Timestamp, query: QueueQuery) -> Result<QueuePage, StoreError> {
        self.read(move |conn| {
            // Each project with ready tasks gets a share of the batch, so a
            // project with a million queued tasks cannot crowd out the rest.
            let projects: Vec<(String, Option<QueueCursor>)> = match query.projects {
                Some(projects) => projects.into_iter().collect(),
                None => {
                    // One index step per project (a loose index scan), not
                    // a read of every queued task.
                    let mut stmt = conn.prepare_cached(
                        "WITH RECURSIVE p(project) AS ( \
                           SELECT (SELECT project FROM tasks INDEXED BY tasks_queue_by_project WHERE state = 'queued' \
                                   ORDER BY project LIMIT 1) \
                           UNION ALL \
                           SELECT (SELECT project FROM tasks INDEXED BY tasks_queue_by_project WHERE state = 'queued' \
                                   AND project > p.project ORDER BY project LIMIT 1) FROM p WHERE p.project IS NOT NULL) \
                         SELECT project FROM p WHERE project IS NOT NULL AND EXISTS (SELECT 1 FROM tasks INDEXED BY \
                           tasks_queue_by_project WHERE state = 'queued' AND project = p.project AND not_before <= ?1)",
                    )?;
                    let mut rows = stmt.query([now.millis()])?;
                    let mut projects = Vec::new();
                    while let Some(row) = rows.next()? {
                        projects.push((row.get(0)?, None));
                    }
                    projects
                }
            };
            if projects.is_empty() {
                return Ok(QueuePage::default());
            }
            let per_project = (query.limit / projects.len()).max(16);
            // Shapes to skip go in as parameters (?5, ?6, ...): portable SQL.
            let skip: Vec<i64> = query.skip_shapes.iter().copied().take(MAX_SKIPPED_SHAPES).collect();
            let skip_clause = if skip.is_empty() {
                String::new()
            } else {
                let marks: Vec<String> = (0..skip.len()).map(|i| format!("?{}", i + 6)).collect();
                format!(" AND shape NOT IN ({})", marks.join(", "))
            };
            // After a cursor the read is two index seeks: the rest of the
            // cursor's priority, then the lower priorities.
            let base =
                "SELECT id, CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END, \
                 shape, payload IS NOT NULL OR (array_id IS NOT NULL AND payload_bytes > 0), array_index \
                 FROM tasks WHERE state = 'queued' AND project = ?1 AND not_before <= ?2";
            let order = "ORDER BY priority DESC, id LIMIT ?3";
            let head = format!("{base}{skip_clause} {order}");
            let same = format!("{base} AND priority = ?4 AND id > ?5{skip_clause} {order}");
            let lower = format!("{base} AND priority < ?4{skip_clause} {order}");
            let mut page = QueuePage::default();
            for (project, cursor) in &projects {
                let segments: Vec<(&str, Vec<rusqlite::types::Value>)> = match cursor {
                    None => vec![(head.as_str(), vec![0i64.into(), String::new().into()])],
                    Some(c) => vec![
                        (same.as_str(), vec![i64::from(c.priority).into(), c.id.to_string().into()]),
                        (lower.as_str(), vec![i64::from(c.priority).into(), String::new().into()]),
                    ],
                };
                let mut left = per_project;
                for (sql, extra) in segments {
                    if left == 0 {
                        break;
                    }
                    let mut stmt = conn.prepare_cached(sql)?;
                    let mut args: Vec<rusqlite::types::Value> = vec![project.clone().into(), now.millis().into(), (left as i64).into()];
                    // Unused cursor parameters are bound anyway: numbering stays fixed.
                    args.extend(extra);
                    args.extend(skip.iter().map(|shape| rusqlite::types::Value::from(*shape)));
                    // Without shapes to skip, a statement takes only the parameters it names.
                    args.truncate(stmt.parameter_count());
                    let mut rows = stmt.query(params_from_iter(args))?;
                    while let Some(row) = rows.next()? {
                        let spec: String = row.get(1)?;
                        page.tasks.push(QueuedTask {
                            id: rows::parse_id(&row.get::<_, String>(0)?)?,
                            // A child's spec with its index (the scheduler may hand it to the agent as it is).
                            spec: crate::workflow::child_spec(&spec, row.get(4)?)?,
                            shape: row.get(2)?,
                            has_payload: row.get::<_, i64>(3)? != 0,
                        });
                        left -= 1;
                    }
                }
                if left == 0 {
                    if let Some(last) = page.tasks.last() {
                        page.more.insert(project.clone(), last.cursor());
                    }
                }
            }
            Ok(page)
        })
        .await
    }

    async fn active_tasks(&self) -> Result<Vec<ActiveTask>, StoreError> {
        self.read(|conn| active_in(conn, None)).await
    }

    async fn active_tasks_on(&self, node_id: &str) -> Result<Vec<ActiveTask>, StoreError> {
        let node_id = node_id.to_string();
        self.read(move |conn| active_in(conn, Some(&node_id))).await
    }

    async fn launch_specs(&self, ids: Vec<TaskId>) -> Result<Vec<Option<LaunchSpec>>, StoreError> {
        self.read(move |conn| ids.into_iter().map(|id| launch_spec_in(conn, id)).collect()).await
    }

    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, StoreError> {
        self.read(move |conn| launch_spec_in(conn, id)).await
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteOp::AppendLogs(chunks, reply)).await
    }

    async fn read_logs(&self, id: TaskId, after: i64, limit: usize) -> Result<Vec<StoredLogChunk>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, attempt, stream, data FROM task_logs WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
            let chunks = stmt.query_map(rusqlite::params![id.to_string(), after, limit as i64], rows::log_chunk)?;
            Ok(chunks.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn upsert_node(&self, node: NodeRecord) -> Result<(), StoreError> {
        self.write(|reply| WriteOp::UpsertNode(node, reply)).await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, \
                 last_heartbeat_at, images FROM nodes ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            let mut nodes = Vec::new();
            while let Some(row) = rows.next()? {
                nodes.push(rows::node_from_row(row)?);
            }
            Ok(nodes)
        })
        .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, \
                 last_heartbeat_at, images FROM nodes WHERE id = ?1",
            )?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(row) => Ok(Some(rows::node_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn touch_node(&self, id: &str, at: Timestamp, images: Vec<String>) -> Result<Option<NodeState>, StoreError> {
        let id = id.to_string();
        self.write(|reply| WriteOp::TouchNode(id, at, images, reply)).await
    }

    async fn touch_nodes(&self, beats: Vec<NodeBeat>) -> Result<Vec<Option<NodeState>>, StoreError> {
        self.write_with(move |conn| beats.iter().map(|beat| writer::touch_node(conn, &beat.id, beat.at, beat.images.as_deref())).collect())
            .await
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(|reply| WriteOp::SetNodeState(id, state, reply)).await
    }

    async fn set_node_state_as_leader(&self, id: &str, state: NodeState, lease: &Lease) -> Result<bool, StoreError> {
        let (id, lease) = (id.to_string(), lease.clone());
        self.write_with(move |conn| {
            let now = Timestamp::now();
            check_lease(conn, &lease, now)?;
            let mut events = Vec::new();
            let changed = writer::set_node_state(conn, &id, state, now, &mut events)?;
            writer::append_events(conn, now, &events)?;
            Ok(changed)
        })
        .await
    }

    async fn count_by_state(&self, project: Option<String>) -> Result<Vec<(TaskState, u64)>, StoreError> {
        self.read(move |conn| {
            // Two statements, so that each can use its index.
            let (mut stmt, args) = match project {
                None => (conn.prepare_cached("SELECT state, COUNT(*) FROM tasks GROUP BY state")?, Vec::new()),
                Some(p) => (conn.prepare_cached("SELECT state, COUNT(*) FROM tasks WHERE project = ?1 GROUP BY state")?, vec![p]),
            };
            let mut rows = stmt.query(params_from_iter(args.iter()))?;
            let mut counts = Vec::new();
            while let Some(row) = rows.next()? {
                counts.push((rows::parse_state(&row.get::<_, String>(0)?)?, row.get::<_, i64>(1)? as u64));
            }
            drop(rows);
            // Children not made yet (see `children.rs`): queued or waiting
            // with their array, cancelled if it stopped.
            let mut unmade = conn.prepare_cached(&format!(
                "SELECT CASE WHEN stopping = 1 THEN 'cancelled' WHEN state = 'running' AND NOT ({UNMADE_HELD}) THEN 'queued' \
                 ELSE 'waiting' END AS s, SUM(children - made) FROM arrays WHERE children > made AND (?1 IS NULL OR project = ?1) GROUP BY s"
            ))?;
            let mut rows = unmade.query([args.first()])?;
            while let Some(row) = rows.next()? {
                let (state, n) = (rows::parse_state(&row.get::<_, String>(0)?)?, row.get::<_, i64>(1)?.max(0) as u64);
                match counts.iter_mut().find(|(s, _)| *s == state) {
                    Some((_, count)) => *count += n,
                    None => counts.push((state, n)),
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn count_queued(&self, project: &str) -> Result<u64, StoreError> {
        let project = project.to_string();
        self.read(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT (SELECT COUNT(*) FROM tasks WHERE project = ?1 AND state = 'queued') + \
                     (SELECT COUNT(*) FROM tasks WHERE state = 'waiting' AND project = ?1) + \
                     (SELECT COALESCE(SUM(children - made), 0) FROM arrays \
                      WHERE project = ?1 AND stopping = 0 AND state IN ('waiting', 'running'))",
                )?
                .query_row([project], |row| row.get(0))?;
            Ok(count as u64)
        })
        .await
    }

    async fn create_project(&self, project: Project) -> Result<bool, StoreError> {
        self.write_with(move |conn| tenants::create_project(conn, &project)).await
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let name = name.to_string();
        self.read(move |conn| tenants::get_project(conn, &name)).await
    }

    async fn list_projects(&self) -> Result<Vec<Project>, StoreError> {
        self.read(tenants::list_projects).await
    }

    async fn set_project_limits(&self, name: &str, limits: shepherd_core::ProjectLimits) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_with(move |conn| tenants::set_project_limits(conn, &name, &limits)).await
    }

    async fn create_token(&self, token: TokenRecord, hash: String) -> Result<(), StoreError> {
        self.write_with(move |conn| tenants::create_token(conn, &token, &hash)).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let hash = hash.to_string();
        self.read(move |conn| tenants::token_by_hash(conn, &hash)).await
    }

    async fn list_tokens(&self, project: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let project = project.to_string();
        self.read(move |conn| tenants::list_tokens(conn, &project)).await
    }

    async fn revoke_token(&self, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let (project, id) = (project.to_string(), id.to_string());
        self.write_with(move |conn| tenants::revoke_token(conn, &project, &id, at)).await
    }

    async fn put_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write_with(move |conn| tenants::put_secret(conn, &project, &name, &value, at)).await
    }

    async fn delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write_with(move |conn| tenants::delete_secret(conn, &project, &name)).await
    }

    async fn list_secrets(&self, project: &str) -> Result<Vec<SecretInfo>, StoreError> {
        let project = project.to_string();
        self.read(move |conn| tenants::list_secrets(conn, &project)).await
    }

    async fn push_code(&self, project: &str, spec: CodeSpec, at: Timestamp, rolled_back_from: Option<u32>) -> Result<Code, StoreError> {
        let project = project.to_string();
        self.write_with(move |conn| codes::push_code(conn, &project, spec, at, rolled_back_from)).await
    }

    async fn get_code(&self, project: &str, name: &str, revision: Option<u32>) -> Result<Option<Code>, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.read(move |conn| codes::get_code(conn, &project, &name, revision)).await
    }

    async fn list_codes(&self, project: Option<String>) -> Result<Vec<Code>, StoreError> {
        self.read(move |conn| codes::list_codes(conn, project.as_deref())).await
    }

    async fn code_revisions(&self, project: &str, name: &str) -> Result<Vec<Code>, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.read(move |conn| codes::code_revisions(conn, &project, &name)).await
    }

    async fn delete_code(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write_with(move |conn| codes::delete_code(conn, &project, &name)).await
    }

    async fn code_limits(&self) -> Result<Vec<CodeLimit>, StoreError> {
        self.read(codes::code_limits).await
    }

    async fn create_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.write_with(move |conn| codes::create_schedule(conn, &schedule)).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| codes::get_schedule(conn, &id)).await
    }

    async fn list_schedules(&self, project: Option<String>) -> Result<Vec<Schedule>, StoreError> {
        self.read(move |conn| codes::list_schedules(conn, project.as_deref())).await
    }

    async fn set_schedule_state(&self, id: &str, state: ScheduleState, next_at: Option<Timestamp>) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write_with(move |conn| codes::set_schedule_state(conn, &id, state, next_at)).await
    }

    async fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, StoreError> {
        self.read(move |conn| codes::due_schedules(conn, now, limit)).await
    }

    async fn next_schedule_at(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(codes::next_schedule_at).await
    }

    async fn fire_schedule(&self, firing: ScheduleFiring, lease: &Lease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        let key = self.shape_key.clone();
        self.write_with(move |conn| {
            check_lease(conn, &lease, Timestamp::now())?;
            if !codes::advance_schedule(conn, &firing)? {
                return Ok(None);
            }
            writer::insert_tasks(conn, &firing.tasks, &key)?;
            writer::append_created(conn, &firing.tasks)?;
            tenants::append_audit(conn, &firing.audit)?;
            Ok(Some(firing.tasks))
        })
        .await
        .map(|fired| match fired {
            Some(tasks) => {
                self.observer.created(&tasks);
                true
            }
            None => false,
        })
    }

    async fn put_package(&self, project: &str, digest: &str, data: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        if !shepherd_core::PackageRef::is_digest(digest) {
            return Err(StoreError::Corrupt(format!("`{digest}` is not a package digest")));
        }
        let _files = self.package_files.lock().await;
        let (file, size) = (self.packages_dir.join(digest), data.len() as u64);
        // Durable before the row that names it commits.
        tokio::task::spawn_blocking(move || write_durably(&file, &data)).await.map_err(|_| StoreError::Closed)??;
        let (project, digest) = (project.to_string(), digest.to_string());
        self.write_with(move |conn| codes::put_package(conn, &project, &digest, size, at)).await
    }

    async fn get_package(&self, project: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (project, key) = (project.to_string(), digest.to_string());
        let Some((inline, size)) = self.read(move |conn| codes::get_package(conn, &project, &key)).await? else { return Ok(None) };
        if inline.len() as u64 == size && size > 0 {
            return Ok(Some(inline));
        }
        let file = self.packages_dir.join(digest);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(&file)).await.map_err(|_| StoreError::Closed)?;
        bytes.map(Some).map_err(|e| StoreError::Corrupt(format!("package {digest}: {e}")))
    }

    async fn list_packages(&self, project: &str) -> Result<Vec<crate::PackageInfo>, StoreError> {
        let project = project.to_string();
        self.read(move |conn| codes::list_packages(conn, &project)).await
    }

    async fn delete_package(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let _files = self.package_files.lock().await;
        let (project, key) = (project.to_string(), digest.to_string());
        let (deleted, last) = self.write_with(move |conn| codes::delete_package(conn, &project, &key)).await?;
        if deleted && last && shepherd_core::PackageRef::is_digest(digest) {
            match std::fs::remove_file(self.packages_dir.join(digest)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(deleted)
    }

    async fn package_in_use(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let (project, digest) = (project.to_string(), digest.to_string());
        self.read(move |conn| codes::package_in_use(conn, &project, &digest)).await
    }

    async fn package_size(&self, project: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        let (project, digest) = (project.to_string(), digest.to_string());
        self.read(move |conn| codes::package_size(conn, &project, &digest)).await
    }

    async fn set_progress(&self, id: TaskId, progress: shepherd_core::Progress) -> Result<bool, StoreError> {
        self.write_with(move |conn| codes::set_progress(conn, id, &progress)).await
    }

    async fn set_attempt_progress(
        &self,
        id: TaskId,
        attempt: u32,
        node_id: Option<String>,
        progress: shepherd_core::Progress,
    ) -> Result<bool, StoreError> {
        self.write_with(move |conn| codes::set_attempt_progress(conn, id, attempt, node_id.as_deref(), &progress)).await
    }

    async fn ensure_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<Vec<u8>, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write_with(move |conn| codes::ensure_secret(conn, &project, &name, &value, at)).await
    }

    async fn due_webhooks(&self, now: Timestamp, limit: usize, per_project: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.read(move |conn| codes::due_webhooks(conn, now, limit, per_project)).await
    }

    async fn record_webhook(&self, task: TaskId, attempt: WebhookAttempt, next: WebhookNext) -> Result<(), StoreError> {
        self.write_with(move |conn| codes::record_webhook(conn, task, &attempt, next)).await
    }

    async fn webhook_of(&self, task: TaskId) -> Result<Option<WebhookDelivery>, StoreError> {
        self.read(move |conn| codes::webhook_of(conn, task)).await
    }

    async fn read_events(&self, after: Option<EventCursor>, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            // The row of `after` again, for the events after its index.
            let from = after.map_or(0, |c| c.major);
            let mut stmt = conn.prepare_cached("SELECT id, body FROM events WHERE id >= ?1 ORDER BY id LIMIT ?2")?;
            let rows = stmt.query_map(rusqlite::params![from, (limit.max(1) + usize::from(after.is_some())) as i64], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, body) = row?;
                crate::push_events(&mut out, EventCursor { major: id, minor: 0, index: 0 }, &body, after)?;
            }
            Ok(out)
        })
        .await
    }

    async fn latest_event(&self) -> Result<Option<EventCursor>, StoreError> {
        self.read(|conn| {
            use rusqlite::OptionalExtension;
            let row = conn
                .prepare_cached("SELECT id, body FROM events ORDER BY id DESC LIMIT 1")?
                .query_row([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
                .optional()?;
            let Some((id, body)) = row else { return Ok(None) };
            let mut events = Vec::new();
            crate::push_events(&mut events, EventCursor { major: id, minor: 0, index: 0 }, &body, None)?;
            Ok(events.last().map(|e| e.cursor))
        })
        .await
    }

    async fn queue_position(&self, id: TaskId) -> Result<Option<(u64, u64)>, StoreError> {
        self.read(move |conn| {
            use rusqlite::OptionalExtension;
            let key = id.to_string();
            let row = conn
                .prepare_cached("SELECT project, priority FROM tasks WHERE id = ?1 AND state = 'queued'")?
                .query_row([&key], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                .optional()?;
            let Some((project, priority)) = row else { return Ok(None) };
            // Each walks a queue index up to the task, at most QUEUE_COUNT_CAP entries.
            let cap = QUEUE_COUNT_CAP as i64;
            let in_project: i64 = conn
                .prepare_cached(QUEUE_AHEAD_IN_PROJECT_SQLITE)?
                .query_row(rusqlite::params![priority, key, cap, project], |row| row.get(0))?;
            let in_cluster: i64 =
                conn.prepare_cached(QUEUE_AHEAD_SQLITE)?.query_row(rusqlite::params![priority, key, cap], |row| row.get(0))?;
            Ok(Some((in_project as u64 + 1, in_cluster as u64 + 1)))
        })
        .await
    }

    async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&USAGE_SQL.replace('$', "?"))?;
            let rows =
                stmt.query_map(rusqlite::params![query.from.millis(), query.to.millis(), query.bucket_ms.max(1), query.project], |row| {
                    Ok(UsageRow {
                        project: row.get(0)?,
                        start: Timestamp(row.get(1)?),
                        tasks: row.get::<_, i64>(2)?.max(0) as u64,
                        attempts: row.get::<_, i64>(3)?.max(0) as u64,
                        cpu_ms: row.get::<_, i64>(4)?.max(0) as u64,
                        memory_byte_ms: row.get::<_, f64>(5)?,
                        wall_ms: row.get::<_, i64>(6)?.max(0) as u64,
                    })
                })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn history_tasks(
        &self,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> Result<Vec<(TaskId, shepherd_core::history::TaskRecord)>, StoreError> {
        self.read(move |conn| {
            let mut out: Vec<(TaskId, shepherd_core::history::TaskRecord)> = Vec::new();
            let mut stmt = conn.prepare_cached(&crate::history::tasks_sql().replace('$', "?"))?;
            let mut rows = stmt.query(rusqlite::params![after.to_string(), until.to_string(), limit.clamp(1, 10_000) as i64])?;
            while let Some(row) = rows.next()? {
                let id = rows::parse_id(&row.get::<_, String>(0)?)?;
                let record = crate::history::record(
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get::<_, Option<String>>(6)?.as_deref(),
                    &row.get::<_, String>(7)?,
                )?;
                out.push((id, record));
            }
            if let (Some((first, _)), Some((last, _))) = (out.first(), out.last()) {
                let (first, last) = (first.to_string(), last.to_string());
                let mut stmt = conn.prepare_cached(&crate::history::ATTEMPTS_SQL.replace('$', "?"))?;
                let mut rows = stmt.query(rusqlite::params![first, last])?;
                let index: std::collections::HashMap<String, usize> =
                    out.iter().enumerate().map(|(i, (id, _))| (id.to_string(), i)).collect();
                while let Some(row) = rows.next()? {
                    let task: String = row.get(0)?;
                    if let Some(i) = index.get(&task) {
                        out[*i].1.attempts.push(crate::history::attempt(row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn node_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::NodeRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&crate::history::NODE_HISTORY_SQL.replace('$', "?"))?;
            let mut rows = stmt.query([until.millis()])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(crate::history::node_record(
                    row.get(0)?,
                    &row.get::<_, String>(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    &row.get::<_, String>(6)?,
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn active_counts(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT project, state, COUNT(*) FROM tasks WHERE state IN ('queued', 'scheduled', 'running') GROUP BY project, state",
            )?;
            let mut rows = stmt.query([])?;
            let mut counts = Vec::new();
            while let Some(row) = rows.next()? {
                counts.push((row.get::<_, String>(0)?, rows::parse_state(&row.get::<_, String>(1)?)?, row.get::<_, i64>(2)? as u64));
            }
            drop(rows);
            // Children of running arrays not made yet are queued.
            let mut unmade = conn.prepare_cached(&format!(
                "SELECT project, SUM(children - made) FROM arrays WHERE children > made AND stopping = 0 AND state = 'running' \
                 AND NOT ({UNMADE_HELD}) GROUP BY project"
            ))?;
            let mut rows = unmade.query([])?;
            while let Some(row) = rows.next()? {
                let (project, n) = (row.get::<_, String>(0)?, row.get::<_, i64>(1)?.max(0) as u64);
                match counts.iter_mut().find(|(p, s, _)| *p == project && *s == TaskState::Queued) {
                    Some((.., count)) => *count += n,
                    None => counts.push((project, TaskState::Queued, n)),
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn machine_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::MachineRecord>, StoreError> {
        self.read(move |conn| machines::history(conn, until.millis())).await
    }

    async fn put_machine(&self, machine: Machine, expected: Option<MachineState>) -> Result<bool, StoreError> {
        self.write_with(move |conn| machines::put(conn, &machine, expected)).await
    }

    async fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.read(machines::list).await
    }

    async fn expired_tasks(
        &self,
        project: &str,
        before: Timestamp,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let project = project.to_string();
        self.read(move |conn| retention::expired(conn, &project, before, after, limit)).await
    }

    async fn remove_tasks(&self, ids: Vec<TaskId>, before: Timestamp) -> Result<Vec<TaskId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.write_with(move |conn| retention::remove(conn, &ids, before)).await
    }

    async fn export_tasks(&self, ids: Vec<TaskId>) -> Result<Vec<(Task, Vec<StoredLogChunk>)>, StoreError> {
        // One read for the batch: a task and its output each, on one connection.
        self.read(move |conn| {
            let mut out = Vec::with_capacity(ids.len());
            let mut logs = conn.prepare_cached("SELECT seq, attempt, stream, data FROM task_logs WHERE task_id = ?1 ORDER BY seq")?;
            for id in ids {
                let Some(task) = rows::get_task(conn, id)? else { continue };
                let chunks = logs.query_map([id.to_string()], rows::log_chunk)?.collect::<rusqlite::Result<Vec<_>>>()?;
                out.push((task, chunks));
            }
            Ok(out)
        })
        .await
    }

    async fn store_size(&self) -> Result<crate::retention::StoreSize, StoreError> {
        self.read(retention::size).await
    }

    async fn delete_machine(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write_with(move |conn| machines::delete(conn, &id)).await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write_with(move |conn| machines::delete_node(conn, &id)).await
    }

    async fn claim_node(&self, id: &str, credential: Option<String>) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write_with(move |conn| machines::claim_node(conn, &id, credential.as_deref())).await
    }

    async fn registry_login_projects(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT project FROM secrets WHERE name LIKE 'registry.%' ORDER BY project")?;
            let projects = stmt.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(projects)
        })
        .await
    }

    async fn registry_auth(&self, project: &str, image: &str) -> Result<Option<shepherd_core::RegistryAuth>, StoreError> {
        let (project, image) = (project.to_string(), image.to_string());
        self.read(move |conn| {
            let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(&image));
            Ok(crate::registry_auth_from(&image, tenants::secret_values(conn, &project, std::slice::from_ref(&login))?.remove(&login)))
        })
        .await
    }

    async fn set_project_policy(&self, name: &str, policy: shepherd_core::ProjectPolicy) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_with(move |conn| tenants::set_project_policy(conn, &name, &policy)).await
    }

    async fn create_volume(&self, volume: shepherd_core::Volume) -> Result<bool, StoreError> {
        self.write_with(move |conn| volumes::create(conn, &volume)).await
    }

    async fn volumes(&self, project: Option<String>) -> Result<Vec<shepherd_core::Volume>, StoreError> {
        self.read(move |conn| volumes::list(conn, project.as_deref())).await
    }

    async fn delete_volume(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write_with(move |conn| volumes::delete(conn, &project, &name)).await
    }

    async fn bind_volume(&self, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError> {
        let (project, name, node) = (project.to_string(), name.to_string(), node.to_string());
        self.write_with(move |conn| volumes::bind(conn, &project, &name, &node)).await
    }

    async fn cluster_value(&self, key: &str, proposed: &str) -> Result<String, StoreError> {
        let (key, proposed) = (key.to_string(), proposed.to_string());
        self.write_with(move |conn| machines::cluster_value(conn, &key, &proposed)).await
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        // Oldest first, in id order (no index on the time): rows up to the
        // first one recorded at or after `before`, a page at a time.
        let mut removed = 0;
        loop {
            let (done, count) = self
                .write_with(move |conn| {
                    let rows: Vec<(i64, i64)> = conn
                        .prepare_cached("SELECT id, at FROM events ORDER BY id LIMIT 2000")?
                        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    let old = rows.iter().take_while(|(_, at)| *at < before.millis()).count();
                    let Some(&(last, _)) = old.checked_sub(1).and_then(|i| rows.get(i)) else { return Ok((true, 0)) };
                    let count = conn.prepare_cached("DELETE FROM events WHERE id <= ?1")?.execute([last])? as u64;
                    Ok((old < rows.len() || rows.len() < 2000, count))
                })
                .await?;
            removed += count;
            if done {
                return Ok(removed);
            }
        }
    }

    fn shape_key(&self) -> &shepherd_core::shape::ShapeKey {
        &self.shape_key
    }

    fn set_observer(&self, observer: Arc<dyn StoreObserver>) {
        self.observer.set(observer);
    }

    async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write_with(move |conn| tenants::append_audit(conn, &entries)).await
    }

    async fn list_audit(&self, project: Option<String>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| tenants::list_audit(conn, project.as_deref(), before, limit)).await
    }
}

/// The active tasks, all or one node's (by the partial index on node_id).
fn active_in(conn: &Connection, node_id: Option<&str>) -> Result<Vec<ActiveTask>, StoreError> {
    const COLUMNS: &str = "SELECT id, state, node_id, attempt, cpu_millicores, memory_mib, cancel_requested, \
         CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END FROM tasks";
    let (mut stmt, args) = match node_id {
        None => (conn.prepare_cached(&format!("{COLUMNS} WHERE state IN ('scheduled', 'running')"))?, Vec::new()),
        Some(node) => {
            (conn.prepare_cached(&format!("{COLUMNS} WHERE node_id = ?1 AND state IN ('scheduled', 'running')"))?, vec![node.to_string()])
        }
    };
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    let mut active = Vec::new();
    while let Some(row) = rows.next()? {
        let spec: shepherd_core::TaskSpec =
            serde_json::from_str(&row.get::<_, String>(7)?).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?;
        active.push(ActiveTask {
            id: rows::parse_id(&row.get::<_, String>(0)?)?,
            project: spec.project,
            labels: spec.labels,
            code: spec.code,
            state: rows::parse_state(&row.get::<_, String>(1)?)?,
            node_id: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            attempt: row.get(3)?,
            resources: Resources { cpu_millicores: row.get(4)?, memory_mib: row.get(5)? },
            cancel_requested: row.get::<_, i64>(6)? != 0,
            gpus: spec.gpus,
        });
    }
    Ok(active)
}

/// The result of a task's latest attempt that left one.
fn task_result_in(conn: &Connection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached("SELECT result FROM attempts WHERE task_id = ?1 AND result IS NOT NULL ORDER BY number DESC LIMIT 1")?
        .query_row([id], |row| row.get(0))
        .optional()?)
}

/// One task's launch spec, on a reader connection.
fn launch_spec_in(conn: &Connection, id: TaskId) -> Result<Option<LaunchSpec>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare_cached(
        "SELECT t.state, t.attempt, t.node_id, t.cancel_requested, COALESCE(NULLIF(t.spec, ''), r.spec), \
         CASE WHEN t.array_id IS NULL THEN t.payload ELSE r.payload END, a.started_at, t.array_index FROM tasks t \
         LEFT JOIN attempts a ON a.task_id = t.id AND a.number = t.attempt LEFT JOIN arrays r ON r.id = t.array_id WHERE t.id = ?1",
    )?;
    let row = stmt
        .query_row([id.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, i64>(3)? != 0,
                row.get::<_, String>(4)?,
                row.get::<_, Option<Vec<u8>>>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, Option<i64>>(7)?,
            ))
        })
        .optional()?;
    let Some((state, attempt, node_id, cancel_requested, spec, payload, started_at, index)) = row else {
        return Ok(None);
    };
    let spec = crate::workflow::child_spec(&spec, index)?;
    let secrets = if spec.secrets.is_empty() {
        Default::default()
    } else {
        let names: Vec<String> = spec.secrets.iter().map(|s| s.name.clone()).collect();
        tenants::secret_values(conn, &spec.project, &names)?
    };
    let mounts = if spec.volumes.is_empty() {
        Vec::new()
    } else {
        shepherd_core::launch::resolve_mounts(&spec, &volumes::list(conn, Some(&spec.project))?)
    };
    let networks = if spec.networks.is_empty() && spec.network != "bridge" {
        Vec::new()
    } else {
        let policy = tenants::get_project(conn, &spec.project)?.map(|p| p.policy).unwrap_or_default();
        shepherd_core::launch::resolve_networks(&spec, &policy)
    };
    // Its dependencies' results (tasks it depends on; an array's are read through the API).
    let mut inputs = std::collections::BTreeMap::new();
    for dep in &spec.depends_on {
        if let (shepherd_core::DependencyTarget::Id(dep_id), false) = (&dep.task, dep.on == shepherd_core::DependOn::Each) {
            if let Some(bytes) = task_result_in(conn, dep_id)? {
                inputs.insert(dep_id.clone(), bytes);
            }
        }
    }
    let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(&spec.image));
    let registry_auth =
        crate::registry_auth_from(&spec.image, tenants::secret_values(conn, &spec.project, std::slice::from_ref(&login))?.remove(&login));
    Ok(Some(LaunchSpec {
        id,
        state: rows::parse_state(&state)?,
        attempt,
        node_id,
        cancel_requested,
        spec,
        payload,
        attempt_started_at: started_at.map(Timestamp),
        secrets,
        volumes: mounts,
        networks,
        registry_auth,
        inputs,
    }))
}

/// Writes `bytes` to `file` so that it survives a power loss: beside it
/// first, synced, renamed into place, the directory synced. A file that is
/// there already is kept (its name is its content's digest).
fn write_durably(file: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if file.is_file() {
        return Ok(());
    }
    let dir = file.parent().ok_or_else(|| StoreError::Corrupt("a package file has no directory".into()))?;
    std::fs::create_dir_all(dir)?;
    let partial = file.with_extension("partial");
    let mut out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&partial, file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

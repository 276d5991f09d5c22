//! Versioned migrations. Each entry runs once, in order, in one transaction
//! with the row that records it. Never edit a shipped migration: add one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: tasks, attempts, labels, logs, nodes.
    r#"
    CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,
        project          TEXT NOT NULL,
        state            TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        image            TEXT NOT NULL,
        cpu_millicores   INTEGER NOT NULL,
        memory_mib       INTEGER NOT NULL,
        constraints      TEXT,
        spec             TEXT NOT NULL,
        payload          BLOB,
        payload_bytes    INTEGER NOT NULL,
        created_at       BIGINT NOT NULL,
        scheduled_at     BIGINT,
        started_at       BIGINT,
        finished_at      BIGINT,
        node_id          TEXT,
        exit_code        INTEGER,
        reason           TEXT,
        attempt          INTEGER NOT NULL,
        charged_attempts INTEGER NOT NULL,
        max_attempts     INTEGER NOT NULL,
        backoff_seconds  INTEGER NOT NULL,
        cancel_requested INTEGER NOT NULL,
        not_before       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL
    );
    CREATE INDEX tasks_queue ON tasks (priority DESC, id) WHERE state = 'queued';
    CREATE INDEX tasks_active ON tasks (node_id) WHERE state IN ('scheduled', 'running');
    CREATE INDEX tasks_by_state ON tasks (state, id);
    CREATE INDEX tasks_by_project ON tasks (project, id);
    CREATE TABLE task_labels (
        task_id TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (task_id, key)
    );
    CREATE INDEX task_labels_by_value ON task_labels (key, value, task_id);
    CREATE TABLE attempts (
        task_id      TEXT NOT NULL,
        number       INTEGER NOT NULL,
        node_id      TEXT NOT NULL,
        scheduled_at BIGINT NOT NULL,
        started_at   BIGINT,
        finished_at  BIGINT,
        outcome      TEXT,
        exit_code    INTEGER,
        reason       TEXT,
        PRIMARY KEY (task_id, number)
    );
    CREATE TABLE task_logs (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream  INTEGER NOT NULL,
        data    BLOB NOT NULL
    );
    CREATE INDEX task_logs_by_task ON task_logs (task_id, seq);
    CREATE TABLE nodes (
        id                TEXT PRIMARY KEY,
        hostname          TEXT NOT NULL,
        state             TEXT NOT NULL,
        driver            TEXT NOT NULL,
        cpu_millicores    INTEGER NOT NULL,
        memory_mib        INTEGER NOT NULL,
        max_tasks         INTEGER NOT NULL,
        labels            TEXT NOT NULL,
        registered_at     BIGINT NOT NULL,
        last_heartbeat_at BIGINT NOT NULL
    );
    "#,
    // 2: the images each node holds.
    r#"
    ALTER TABLE nodes ADD COLUMN images TEXT NOT NULL DEFAULT '[]';
    "#,
    // 3: per-project queues, so every project gets into each scheduling batch.
    r#"
    CREATE INDEX tasks_queue_by_project ON tasks (project, priority DESC, id) WHERE state = 'queued';
    "#,
    // 4: tenants: projects, API tokens (hashes only), secrets, the audit log.
    r#"
    CREATE TABLE projects (
        name       TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        limits     TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id         TEXT PRIMARY KEY,
        project    TEXT NOT NULL,
        name       TEXT NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE INDEX api_tokens_by_project ON api_tokens (project);
    CREATE TABLE secrets (
        project    TEXT NOT NULL,
        name       TEXT NOT NULL,
        value      BLOB NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE audit_log (
        seq     INTEGER PRIMARY KEY,
        at      BIGINT NOT NULL,
        actor   TEXT NOT NULL,
        project TEXT,
        action  TEXT NOT NULL,
        target  TEXT NOT NULL,
        detail  TEXT
    );
    CREATE INDEX audit_log_by_project ON audit_log (project, seq);
    "#,
    // 5: placement shapes, so the scheduler can skip tasks of a shape that
    // fits nowhere without reading them (the queue index covers the shape).
    // Shapes of existing tasks are filled in by `backfill`.
    r#"
    ALTER TABLE tasks ADD COLUMN shape BIGINT NOT NULL DEFAULT 0;
    DROP INDEX tasks_queue_by_project;
    CREATE INDEX tasks_queue_by_project ON tasks (project, priority DESC, id, shape) WHERE state = 'queued';
    "#,
    // 6: a per-project sequence for audit entries, so a project's cursor
    // reveals nothing of other projects' activity.
    r#"
    ALTER TABLE audit_log ADD COLUMN project_seq BIGINT;
    UPDATE audit_log SET project_seq =
        (SELECT COUNT(*) FROM audit_log earlier WHERE earlier.project = audit_log.project AND earlier.seq <= audit_log.seq)
        WHERE project IS NOT NULL;
    CREATE UNIQUE INDEX audit_log_by_project_seq ON audit_log (project, project_seq);
    "#,
    // 7: the leader's lease and the servers (one server uses SQLite, but
    // the store's contract is the same as PostgreSQL's).
    r#"
    CREATE TABLE leadership (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        holder     TEXT NOT NULL,
        epoch      BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE servers (
        id           TEXT PRIMARY KEY,
        url          TEXT NOT NULL,
        role         TEXT NOT NULL,
        started_at   BIGINT NOT NULL,
        last_seen_at BIGINT NOT NULL
    );
    "#,
    // 8: the first queue index: every query of the queue goes by project
    // (`tasks_queue_by_project`), and keeping it up cost every create and
    // every placement a write.
    r#"
    DROP INDEX tasks_queue;
    "#,
    // 9: where each attempt ran: its container, and whether a warm one.
    r#"
    ALTER TABLE attempts ADD COLUMN container TEXT;
    ALTER TABLE attempts ADD COLUMN warm INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10: codes (named, versioned task templates) and schedules.
    r#"
    CREATE TABLE codes (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        latest INTEGER NOT NULL,
        live INTEGER NOT NULL,
        max_concurrency INTEGER,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE code_revisions (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at BIGINT NOT NULL,
        rolled_back_from INTEGER,
        spec TEXT NOT NULL,
        PRIMARY KEY (project, name, revision)
    );
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        state TEXT NOT NULL,
        next_at BIGINT,
        fired INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        last_task TEXT,
        last_fired_at BIGINT
    );
    CREATE INDEX schedules_due ON schedules (next_at) WHERE state = 'active';
    CREATE INDEX schedules_by_project ON schedules (project, created_at);
    "#,
    // 11: code packages (zips, by SHA-256 per project) and tasks' progress.
    r#"
    CREATE TABLE packages (
        project TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        data BLOB NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, digest)
    );
    ALTER TABLE tasks ADD COLUMN progress_percent INTEGER;
    ALTER TABLE tasks ADD COLUMN progress_message TEXT;
    "#,
    // 12: webhooks: one delivery per task that names one, and its tries.
    r#"
    CREATE TABLE webhook_deliveries (
        task_id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at BIGINT,
        created_at BIGINT NOT NULL,
        delivered_at BIGINT
    );
    CREATE INDEX webhook_pending ON webhook_deliveries (next_at) WHERE state = 'pending';
    CREATE TABLE webhook_attempts (
        task_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        at BIGINT NOT NULL,
        status INTEGER,
        latency_ms BIGINT NOT NULL,
        error TEXT,
        PRIMARY KEY (task_id, number)
    );
    "#,
    // 13: the event stream: each row the events of one write, in commit
    // order (the single writer), ids never reused (AUTOINCREMENT), so a
    // reader resuming after an id misses nothing even after pruning.
    r#"
    CREATE TABLE events (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        at   BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    "#,
    // 14: what each attempt used, and attempts by end time (usage reports).
    r#"
    ALTER TABLE attempts ADD COLUMN cpu_ms BIGINT;
    ALTER TABLE attempts ADD COLUMN peak_memory_bytes BIGINT;
    CREATE INDEX attempts_finished ON attempts (finished_at);
    "#,
    // 15: events are pruned in id order (their times grow with their ids),
    // so the index on their time, one more write per event row, goes.
    r#"
    DROP INDEX events_at;
    "#,
    // 16: provisioned machines (the record as JSON, state apart for
    // compare-and-set), and the cluster's identity.
    r#"
    CREATE TABLE machines (
        id     TEXT PRIMARY KEY,
        state  TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE cluster_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 17: projects' policies (volume drivers, networks, egress, devices)
    // and named volumes (the record as JSON; the engine name unique, so
    // two projects never share an engine volume; the node a node-scoped
    // volume lives on apart, for compare-and-set).
    r#"
    ALTER TABLE projects ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE volumes (
        project     TEXT NOT NULL,
        name        TEXT NOT NULL,
        engine_name TEXT NOT NULL UNIQUE,
        node_id     TEXT,
        record      TEXT NOT NULL,
        PRIMARY KEY (project, name)
    );
    "#,
    // 18: the image each attempt ran, exactly (a registry digest or the
    // engine's image id).
    r#"
    ALTER TABLE attempts ADD COLUMN image_digest TEXT;
    "#,
    // 19: placement shapes keyed by the cluster's secret (HMAC-SHA-256, so
    // no tenant can make its shape collide with another's); the key is
    // made here and the shapes of unfinished tasks computed again.
    r#"
    CREATE TABLE IF NOT EXISTS cluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    "#,
    // 20: the credential each node id is bound to (the SHA-256 of the
    // node's own secret, from its first registration).
    r#"
    CREATE TABLE node_credentials (node_id TEXT PRIMARY KEY, credential TEXT NOT NULL);
    "#,
    // 21: schedules' slots whose task could not be made, and why.
    r#"
    ALTER TABLE schedules ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE schedules ADD COLUMN reason TEXT;
    "#,
    // 22: workflows: arrays (the spec once, children in `tasks` with an
    // empty spec), dependencies (a waiting task counts its unmet ones;
    // waiting tasks sit apart from the queue's index), idempotency keys.
    r#"
    CREATE TABLE arrays (
        id              TEXT PRIMARY KEY,
        project         TEXT NOT NULL,
        spec            TEXT NOT NULL,
        payload         BLOB,
        payload_bytes   INTEGER NOT NULL,
        size            INTEGER NOT NULL,
        children        INTEGER NOT NULL,
        parallelism     INTEGER,
        fail_fast       INTEGER NOT NULL,
        state           TEXT NOT NULL,
        waiting_on      INTEGER NOT NULL,
        admitted        INTEGER NOT NULL,
        remaining       INTEGER NOT NULL,
        succeeded       INTEGER NOT NULL DEFAULT 0,
        failed          INTEGER NOT NULL DEFAULT 0,
        cancelled       INTEGER NOT NULL DEFAULT 0,
        stopping        INTEGER NOT NULL DEFAULT 0,
        reason          TEXT,
        retry_of        TEXT,
        created_at      BIGINT NOT NULL,
        finished_at     BIGINT
    );
    CREATE INDEX arrays_by_project ON arrays (project, id);
    ALTER TABLE tasks ADD COLUMN array_id TEXT;
    ALTER TABLE tasks ADD COLUMN array_index INTEGER;
    ALTER TABLE tasks ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tasks_by_array ON tasks (array_id, array_index) WHERE array_id IS NOT NULL;
    CREATE INDEX tasks_waiting ON tasks (array_id, waiting_on, array_index) WHERE state = 'waiting';
    CREATE TABLE task_deps (
        task_id TEXT NOT NULL,
        dep_id  TEXT NOT NULL,
        cond    TEXT NOT NULL,
        PRIMARY KEY (task_id, dep_id)
    );
    CREATE INDEX task_deps_by_dep ON task_deps (dep_id, task_id);
    CREATE TABLE idempotency_keys (
        project    TEXT NOT NULL,
        key        TEXT NOT NULL,
        request    TEXT NOT NULL,
        status     INTEGER NOT NULL,
        response   TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
    "#,
    // 23: a task's retry rules by outcome (JSON, NULL for none), read
    // with its lifecycle context.
    r#"
    ALTER TABLE tasks ADD COLUMN retry_rules TEXT;
    "#,
    // 24: what each attempt wrote to its result file (at most 64 KiB).
    r#"
    ALTER TABLE attempts ADD COLUMN result BLOB;
    "#,
    // 25: an array's children made as the queue reaches them: how many
    // exist as rows (`made`), the first child's id (child k's id is the
    // first's plus k), the indices of a retry of some (comma-separated;
    // NULL: 0..children), and the shape its children are placed by.
    // Arrays from before made every child at once.
    r#"
    ALTER TABLE arrays ADD COLUMN made INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE arrays ADD COLUMN first_child TEXT;
    ALTER TABLE arrays ADD COLUMN indices TEXT;
    ALTER TABLE arrays ADD COLUMN shape INTEGER;
    UPDATE arrays SET made = children;
    "#,
    // 26: every node state change with the node's capacity and labels at
    // the time, kept when the node is removed (a replay's inventory);
    // the nodes there now start it.
    r#"
    CREATE TABLE node_history (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id        TEXT NOT NULL,
        state          TEXT NOT NULL,
        at             BIGINT NOT NULL,
        cpu_millicores INTEGER NOT NULL,
        memory_mib     INTEGER NOT NULL,
        max_tasks      INTEGER NOT NULL,
        labels         TEXT NOT NULL
    );
    CREATE INDEX node_history_at ON node_history (at);
    INSERT INTO node_history (node_id, state, at, cpu_millicores, memory_mib, max_tasks, labels)
        SELECT id, 'ready', registered_at, cpu_millicores, memory_mib, max_tasks, labels FROM nodes;
    INSERT INTO node_history (node_id, state, at, cpu_millicores, memory_mib, max_tasks, labels)
        SELECT id, state, last_heartbeat_at, cpu_millicores, memory_mib, max_tasks, labels FROM nodes WHERE state <> 'ready';
    "#,
    // 27: every autoscaled machine's life (asked, joined, gone), kept
    // after the machine is destroyed (a replay's machine-hours; machines
    // made before this version are not in it).
    r#"
    CREATE TABLE machine_history (
        machine_id TEXT PRIMARY KEY,
        pool       TEXT NOT NULL,
        asked      BIGINT NOT NULL,
        joined     BIGINT,
        gone       BIGINT
    );
    CREATE INDEX machine_history_asked ON machine_history (asked);
    "#,
    // 28: usage of tasks that retention removed, summed per project and
    // hour (usage reports add it to what the attempts still kept say).
    r#"
    CREATE TABLE usage_hours (
        project        TEXT NOT NULL,
        hour           BIGINT NOT NULL,
        tasks          BIGINT NOT NULL,
        attempts       BIGINT NOT NULL,
        cpu_ms         BIGINT NOT NULL,
        memory_byte_ms DOUBLE PRECISION NOT NULL,
        wall_ms        BIGINT NOT NULL,
        PRIMARY KEY (project, hour)
    );
    "#,
];

/// Data changes a migration needs that SQL alone cannot make.
fn backfill(version: i64, tx: &rusqlite::Transaction<'_>) -> Result<(), crate::StoreError> {
    // (Version 5 added shapes; version 19 computes them all again, keyed.)
    if version == 19 {
        let secret = crate::new_secret()?;
        let key = crate::shape_key_from(&super::machines::cluster_value(tx, crate::SHAPE_KEY, &secret)?)?;
        let mut read = tx.prepare("SELECT id, spec FROM tasks WHERE state IN ('queued', 'scheduled', 'running')")?;
        let rows: Vec<(String, String)> = read.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut write = tx.prepare("UPDATE tasks SET shape = ?2 WHERE id = ?1")?;
        for (id, spec) in rows {
            // A spec that no longer decodes keeps its shape; the scheduler reports it.
            if let Ok(spec) = serde_json::from_str::<shepherd_core::TaskSpec>(&spec) {
                write.execute(rusqlite::params![id, spec.placement_shape(&key)])?;
            }
        }
    }
    Ok(())
}

/// The schema version this build knows.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to date. Returns the version it ends at (higher
/// than [`VERSION`] if a newer shepherd migrated the database: the caller
/// refuses it).
pub fn migrate(conn: &mut Connection) -> Result<i64, crate::StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")?;
    let current: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| row.get(0))?;
    if current > VERSION {
        return Ok(current);
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        backfill(version, &tx)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![version, shepherd_core::Timestamp::now().millis()],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied store migration");
    }
    Ok(VERSION)
}

//! PostgreSQL migrations: the same tables as SQLite's, in PostgreSQL's
//! types. Each runs once, in order, in one transaction under an advisory
//! lock, so servers starting together never race. Never edit a shipped
//! migration: add one.

use super::sql::error;
use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: everything of SQLite's schema version 6.
    r#"
    CREATE TABLE tasks (
        id               TEXT COLLATE "C" PRIMARY KEY,
        project          TEXT NOT NULL,
        state            TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        image            TEXT NOT NULL,
        cpu_millicores   BIGINT NOT NULL,
        memory_mib       BIGINT NOT NULL,
        constraints      TEXT,
        spec             TEXT NOT NULL,
        payload          BYTEA,
        payload_bytes    BIGINT NOT NULL,
        created_at       BIGINT NOT NULL,
        scheduled_at     BIGINT,
        started_at       BIGINT,
        finished_at      BIGINT,
        node_id          TEXT,
        exit_code        INTEGER,
        reason           TEXT,
        attempt          BIGINT NOT NULL,
        charged_attempts BIGINT NOT NULL,
        max_attempts     BIGINT NOT NULL,
        backoff_seconds  BIGINT NOT NULL,
        cancel_requested BOOLEAN NOT NULL,
        not_before       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL,
        shape            BIGINT NOT NULL
    );
    CREATE INDEX tasks_queue_by_project ON tasks (project, priority DESC, id, shape) WHERE state = 'queued';
    CREATE INDEX tasks_active ON tasks (node_id) WHERE state IN ('scheduled', 'running');
    CREATE INDEX tasks_by_state ON tasks (state, id);
    CREATE INDEX tasks_by_project ON tasks (project, id);
    CREATE TABLE task_labels (
        task_id TEXT COLLATE "C" NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (task_id, key)
    );
    CREATE INDEX task_labels_by_value ON task_labels (key, value, task_id);
    CREATE TABLE attempts (
        task_id      TEXT COLLATE "C" NOT NULL,
        number       BIGINT NOT NULL,
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
        seq     BIGSERIAL PRIMARY KEY,
        task_id TEXT COLLATE "C" NOT NULL,
        attempt BIGINT NOT NULL,
        stream  SMALLINT NOT NULL,
        data    BYTEA NOT NULL
    );
    CREATE INDEX task_logs_by_task ON task_logs (task_id, seq);
    CREATE TABLE nodes (
        id                TEXT PRIMARY KEY,
        hostname          TEXT NOT NULL,
        state             TEXT NOT NULL,
        driver            TEXT NOT NULL,
        cpu_millicores    BIGINT NOT NULL,
        memory_mib        BIGINT NOT NULL,
        max_tasks         BIGINT NOT NULL,
        labels            TEXT NOT NULL,
        registered_at     BIGINT NOT NULL,
        last_heartbeat_at BIGINT NOT NULL,
        images            TEXT NOT NULL DEFAULT '[]'
    );
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
        value      BYTEA NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE audit_log (
        seq         BIGSERIAL PRIMARY KEY,
        at          BIGINT NOT NULL,
        actor       TEXT NOT NULL,
        project     TEXT,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL,
        detail      TEXT,
        project_seq BIGINT
    );
    CREATE UNIQUE INDEX audit_log_by_project_seq ON audit_log (project, project_seq);
    -- Each project's last audit number: concurrent writers take the next one atomically.
    CREATE TABLE audit_counters (
        project TEXT PRIMARY KEY,
        last    BIGINT NOT NULL
    );
    "#,
    // 2: the leader's lease and the servers sharing the database.
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
    // 3: where each attempt ran: its container, and whether a warm one.
    r#"
    ALTER TABLE attempts ADD COLUMN container TEXT;
    ALTER TABLE attempts ADD COLUMN warm BOOLEAN NOT NULL DEFAULT FALSE;
    "#,
    // 4: codes (named, versioned task templates) and schedules.
    r#"
    CREATE TABLE codes (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        latest BIGINT NOT NULL,
        live BOOLEAN NOT NULL,
        max_concurrency BIGINT,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE code_revisions (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        revision BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        rolled_back_from BIGINT,
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
        fired BIGINT NOT NULL DEFAULT 0,
        skipped BIGINT NOT NULL DEFAULT 0,
        last_task TEXT,
        last_fired_at BIGINT
    );
    CREATE INDEX schedules_due ON schedules (next_at) WHERE state = 'active';
    CREATE INDEX schedules_by_project ON schedules (project, created_at);
    "#,
    // 5: code packages (zips, by SHA-256 per project) and tasks' progress.
    r#"
    CREATE TABLE packages (
        project TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        data BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, digest)
    );
    ALTER TABLE tasks ADD COLUMN progress_percent BIGINT;
    ALTER TABLE tasks ADD COLUMN progress_message TEXT;
    "#,
    // 6: webhooks: one delivery per task that names one, and its tries.
    r#"
    CREATE TABLE webhook_deliveries (
        task_id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_at BIGINT,
        created_at BIGINT NOT NULL,
        delivered_at BIGINT
    );
    CREATE INDEX webhook_pending ON webhook_deliveries (next_at) WHERE state = 'pending';
    CREATE TABLE webhook_attempts (
        task_id TEXT NOT NULL,
        number BIGINT NOT NULL,
        at BIGINT NOT NULL,
        status BIGINT,
        latency_ms BIGINT NOT NULL,
        error TEXT,
        PRIMARY KEY (task_id, number)
    );
    "#,
    // 7: the event stream: each row the events of one write, with the id of
    // the transaction that wrote it (read in (xid, id) order below the
    // oldest running transaction, so commit order never skips a row).
    r#"
    CREATE TABLE events (
        id   BIGSERIAL PRIMARY KEY,
        xid  BIGINT NOT NULL,
        at   BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_order ON events (xid, id);
    CREATE INDEX events_at ON events (at);
    "#,
    // 8: what each attempt used, and attempts by end time (usage reports).
    r#"
    ALTER TABLE attempts ADD COLUMN cpu_ms BIGINT;
    ALTER TABLE attempts ADD COLUMN peak_memory_bytes BIGINT;
    CREATE INDEX attempts_finished ON attempts (finished_at);
    "#,
    // 9: provisioned machines (the record as JSON, state apart for
    // compare-and-set), and the cluster's identity.
    r#"
    CREATE TABLE machines (
        id     TEXT COLLATE "C" PRIMARY KEY,
        state  TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE cluster_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 10: projects' policies and named volumes (see the SQLite schema, 17).
    r#"
    ALTER TABLE projects ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE volumes (
        project     TEXT COLLATE "C" NOT NULL,
        name        TEXT COLLATE "C" NOT NULL,
        engine_name TEXT NOT NULL UNIQUE,
        node_id     TEXT,
        record      TEXT NOT NULL,
        PRIMARY KEY (project, name)
    );
    "#,
    // 11: the image each attempt ran (see the SQLite schema, 18).
    r#"
    ALTER TABLE attempts ADD COLUMN image_digest TEXT;
    "#,
    // 12: placement shapes keyed by the cluster's secret (see the SQLite
    // schema, 19): the key is made and unfinished tasks' shapes computed
    // again by `backfill`.
    r#"
    SELECT 1;
    "#,
    // 13: the credential each node id is bound to (see the SQLite schema, 20).
    r#"
    CREATE TABLE node_credentials (node_id TEXT COLLATE "C" PRIMARY KEY, credential TEXT NOT NULL);
    "#,
    // 14: schedules' failed slots and why (see the SQLite schema, 21).
    r#"
    ALTER TABLE schedules ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE schedules ADD COLUMN reason TEXT;
    "#,
    // 15: workflows (see the SQLite schema, 22): arrays (the spec once,
    // children in `tasks` with an empty spec), dependencies (a waiting
    // task counts its unmet ones; waiting tasks sit apart from the
    // queue's index), idempotency keys.
    r#"
    CREATE TABLE arrays (
        id              TEXT COLLATE "C" PRIMARY KEY,
        project         TEXT NOT NULL,
        spec            TEXT NOT NULL,
        payload         BYTEA,
        payload_bytes   BIGINT NOT NULL,
        size            BIGINT NOT NULL,
        children        BIGINT NOT NULL,
        parallelism     BIGINT,
        fail_fast       BOOLEAN NOT NULL,
        state           TEXT NOT NULL,
        waiting_on      BIGINT NOT NULL,
        admitted        BIGINT NOT NULL,
        remaining       BIGINT NOT NULL,
        succeeded       BIGINT NOT NULL DEFAULT 0,
        failed          BIGINT NOT NULL DEFAULT 0,
        cancelled       BIGINT NOT NULL DEFAULT 0,
        stopping        BOOLEAN NOT NULL DEFAULT false,
        reason          TEXT,
        retry_of        TEXT,
        created_at      BIGINT NOT NULL,
        finished_at     BIGINT
    );
    CREATE INDEX arrays_by_project ON arrays (project, id);
    ALTER TABLE tasks ADD COLUMN array_id TEXT COLLATE "C";
    ALTER TABLE tasks ADD COLUMN array_index BIGINT;
    ALTER TABLE tasks ADD COLUMN waiting_on BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX tasks_by_array ON tasks (array_id, array_index) WHERE array_id IS NOT NULL;
    CREATE INDEX tasks_waiting ON tasks (array_id, waiting_on, array_index) WHERE state = 'waiting';
    CREATE TABLE task_deps (
        task_id TEXT COLLATE "C" NOT NULL,
        dep_id  TEXT COLLATE "C" NOT NULL,
        cond    TEXT NOT NULL,
        PRIMARY KEY (task_id, dep_id)
    );
    CREATE INDEX task_deps_by_dep ON task_deps (dep_id, task_id);
    CREATE TABLE idempotency_keys (
        project    TEXT COLLATE "C" NOT NULL,
        key        TEXT COLLATE "C" NOT NULL,
        request    TEXT NOT NULL,
        status     INTEGER NOT NULL,
        response   TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (project, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
    "#,
    // 16: a task's retry rules by outcome (JSON, NULL for none), read
    // with its lifecycle context.
    r#"
    ALTER TABLE tasks ADD COLUMN retry_rules TEXT;
    "#,
    // 17: what each attempt wrote to its result file (at most 64 KiB).
    r#"
    ALTER TABLE attempts ADD COLUMN result BYTEA;
    "#,
    // 18: every node state change with the node's capacity and labels at
    // the time, kept when the node is removed (a replay's inventory);
    // the nodes there now start it.
    r#"
    CREATE TABLE node_history (
        seq            BIGSERIAL PRIMARY KEY,
        node_id        TEXT NOT NULL,
        state          TEXT NOT NULL,
        at             BIGINT NOT NULL,
        cpu_millicores BIGINT NOT NULL,
        memory_mib     BIGINT NOT NULL,
        max_tasks      BIGINT NOT NULL,
        labels         TEXT NOT NULL
    );
    CREATE INDEX node_history_at ON node_history (at);
    INSERT INTO node_history (node_id, state, at, cpu_millicores, memory_mib, max_tasks, labels)
        SELECT id, 'ready', registered_at, cpu_millicores, memory_mib, max_tasks, labels FROM nodes;
    INSERT INTO node_history (node_id, state, at, cpu_millicores, memory_mib, max_tasks, labels)
        SELECT id, state, last_heartbeat_at, cpu_millicores, memory_mib, max_tasks, labels FROM nodes WHERE state <> 'ready';
    "#,
    // 19: every autoscaled machine's life (asked, joined, gone), kept
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
    // 20: usage of tasks that retention removed, summed per project and
    // hour (usage reports add it to what the attempts still kept say).
    r#"
    CREATE TABLE usage_hours (
        project        TEXT COLLATE "C" NOT NULL,
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
async fn backfill(version: i64, tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    if version == 12 {
        let secret = crate::new_secret()?;
        tx.execute("INSERT INTO cluster_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&crate::SHAPE_KEY, &secret])
            .await
            .map_err(error)?;
        let row = tx.query_one("SELECT value FROM cluster_meta WHERE key = $1", &[&crate::SHAPE_KEY]).await.map_err(error)?;
        let key = crate::shape_key_from(row.get(0))?;
        let rows = tx.query("SELECT id, spec FROM tasks WHERE state IN ('queued', 'scheduled', 'running')", &[]).await.map_err(error)?;
        let (mut ids, mut shapes) = (Vec::new(), Vec::new());
        for row in rows {
            let (id, spec): (String, String) = (row.get(0), row.get(1));
            if let Ok(spec) = serde_json::from_str::<shepherd_core::TaskSpec>(&spec) {
                ids.push(id);
                shapes.push(spec.placement_shape(&key));
            }
        }
        tx.execute("UPDATE tasks SET shape = s FROM UNNEST($1::text[], $2::bigint[]) AS u(i, s) WHERE id = i", &[&ids, &shapes])
            .await
            .map_err(error)?;
    }
    Ok(())
}

/// The schema version this build knows.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to date; refuses a database a newer shepherd migrated.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(error)?;
    // One migrating server at a time; the lock ends with the transaction.
    tx.execute("SELECT pg_advisory_xact_lock(7253911)", &[]).await.map_err(error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await
        .map_err(error)?;
    let current: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(error)?.get(0);
    if current > VERSION {
        return Err(StoreError::NewerSchema { found: current, known: VERSION });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(error)?;
        backfill(version, &tx).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &shepherd_core::Timestamp::now().millis()],
        )
        .await
        .map_err(error)?;
        tracing::info!(version, "applied store migration (postgres)");
    }
    tx.commit().await.map_err(error)?;
    Ok(VERSION)
}

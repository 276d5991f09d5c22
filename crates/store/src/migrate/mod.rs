//! Moving a cluster from the embedded SQLite store onto PostgreSQL
//! (`shepherd store migrate --from sqlite:PATH --to postgres://…`).
//!
//! The copy is table by table, in batches in SQLite's row order. Each batch
//! is written in one PostgreSQL transaction together with how far the copy
//! has come (`store_migration`), so an interrupted copy resumes after the
//! last batch committed and never writes a row twice. The columns copied
//! are the target's, each converted to its PostgreSQL type (`values.rs`).
//! At the end every table is verified: the source's rows are read again in
//! pages, the target's rows with the same keys are read by key, and both
//! sides' counts and SHA-256 checksums must match.
//!
//! Before copying, the source is brought to this version's schema and
//! every array's children are made as rows (SQLite makes them as the queue
//! reaches them; PostgreSQL holds them all from the start): the source stays
//! a valid store that `shepherd up` can open again.
//!
//! Not copied: the lease and the servers' table (each server of the new
//! cluster takes its own), the schema's migrations (the target has its own)
//! and this copy's own progress. Event stream cursors do not carry over:
//! the event rows do, under numbers the target continues from, but a
//! client that follows the stream starts again from the end.

mod values;

use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio_postgres::types::ToSql;
pub use values::{PgType, Value};

/// Every table of both stores, in the order they are filled (nothing is
/// enforced by foreign keys; this is the order things refer back), and
/// what the copy does with it.
pub const TABLES: &[(&str, Treatment)] = &[
    ("cluster_meta", Treatment::Rows),
    ("projects", Treatment::Rows),
    ("api_tokens", Treatment::Rows),
    ("secrets", Treatment::Rows),
    ("codes", Treatment::Rows),
    ("code_revisions", Treatment::Rows),
    ("packages", Treatment::Rows),
    ("volumes", Treatment::Rows),
    ("schedules", Treatment::Rows),
    ("nodes", Treatment::Rows),
    ("node_credentials", Treatment::Rows),
    ("node_history", Treatment::Rows),
    ("machines", Treatment::Rows),
    ("machine_history", Treatment::Rows),
    ("arrays", Treatment::Rows),
    ("tasks", Treatment::Rows),
    ("task_deps", Treatment::Rows),
    ("task_labels", Treatment::Rows),
    ("attempts", Treatment::Rows),
    ("task_logs", Treatment::Rows),
    ("webhook_deliveries", Treatment::Rows),
    ("webhook_attempts", Treatment::Rows),
    ("idempotency_keys", Treatment::Rows),
    ("audit_log", Treatment::Rows),
    ("events", Treatment::Rows),
    ("usage_hours", Treatment::Rows),
    ("audit_counters", Treatment::Derived),
    ("leadership", Treatment::Skip),
    ("servers", Treatment::Skip),
    ("schema_migrations", Treatment::Skip),
    (PROGRESS, Treatment::Skip),
];

/// What the copy does with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Every row, verified.
    Rows,
    /// Made on the target from what was copied (PostgreSQL only).
    Derived,
    /// Not copied: per server, or the schema's own.
    Skip,
}

/// The target's table of the copy's progress.
const PROGRESS: &str = "store_migration";

/// Tables whose key is a number PostgreSQL hands out: its sequence goes on
/// from the highest copied (or ever used, by SQLite's AUTOINCREMENT).
const SEQUENCES: &[(&str, &str)] = &[("task_logs", "seq"), ("node_history", "seq"), ("events", "id"), ("audit_log", "seq")];

/// How to migrate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows per batch (and per PostgreSQL transaction).
    pub batch: usize,
    /// Copy into a target that already holds another cluster's data: rows
    /// whose key is there already are left as the target has them.
    pub append: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { batch: 5_000, append: false }
    }
}

/// How far the copy of one table is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub table: String,
    pub copied: u64,
    pub total: u64,
    /// Whether the table was done in an earlier, interrupted run.
    pub resumed: bool,
}

/// One table's verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub table: String,
    pub source_rows: u64,
    /// Rows of the target with the source's keys.
    pub target_rows: u64,
    /// SHA-256 of the source's rows, and of the target's with the same keys.
    pub source_checksum: String,
    pub target_checksum: String,
    /// Rows whose key the target held already (with `append`), left as they were.
    pub kept: u64,
}

impl Verified {
    /// Whether both sides hold the same rows.
    pub fn matches(&self) -> bool {
        self.source_rows == self.target_rows + self.kept && (self.kept > 0 || self.source_checksum == self.target_checksum)
    }
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the target already holds a cluster's data (table `{table}` has {rows} rows); migrate into an empty database, or pass --append to add to it")]
    NotEmpty { table: String, rows: i64 },
    #[error("the target holds a copy begun from another source (cluster {other}, this one is {this}); finish it from that source, or use an empty database")]
    OtherSource { other: String, this: String },
    #[error("table `{0}` is in the source but this shepherd does not know how to copy it")]
    UnknownTable(String),
    #[error("column `{table}.{column}` of type {ty} is in the target only and has no default")]
    UnknownColumn { table: String, column: String, ty: String },
    #[error("cannot append: {rows} rows of `{table}` in the target have numbers the source's rows have too (they would be lost); migrate into an empty database")]
    NumberedCollision { table: String, rows: i64 },
    #[error("verification failed for {0}")]
    Mismatch(String),
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(Box::new(e))
}

/// The SQLite database file of `path`: the file itself, or a data
/// directory's `shepherd.db`.
pub fn sqlite_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("shepherd.db")
    } else {
        path.to_path_buf()
    }
}

/// Copies the SQLite store at `source` (its file) into the PostgreSQL
/// database at `target`; `progress` hears of every batch. Returns each
/// table's verification (all matched, or the error says which did not).
pub async fn migrate(
    source: &Path,
    target: &str,
    options: &Options,
    mut progress: impl FnMut(&Progress),
) -> Result<Vec<Verified>, MigrateError> {
    if !source.is_file() {
        return Err(StoreError::Invalid { field: "from".into(), message: format!("no SQLite store at {}", source.display()) }.into());
    }
    // The source at this version's schema, every array's children made as rows.
    {
        let store = crate::SqliteStore::open(source, crate::SqliteOptions::default())?;
        store.make_every_child().await?;
        store.close_writer();
    }
    // The target's schema, by the PostgreSQL store itself.
    drop(crate::PgStore::connect(target, 2).await?);
    let (mut client, connection) = tokio_postgres::connect(target, tokio_postgres::NoTls).await.map_err(pg)?;
    let driver = tokio::spawn(connection);
    let result = copy_all(source, &mut client, options, &mut progress).await;
    drop(client);
    driver.abort();
    result
}

async fn copy_all(
    source: &Path,
    client: &mut tokio_postgres::Client,
    options: &Options,
    progress: &mut impl FnMut(&Progress),
) -> Result<Vec<Verified>, MigrateError> {
    let sqlite = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(StoreError::from)?;
    let cluster: String = sqlite
        .query_row("SELECT value FROM cluster_meta WHERE key = 'cluster_id'", [], |r| r.get(0))
        .unwrap_or_else(|_| "unknown".to_string());
    check_tables(&sqlite, client).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PROGRESS} (table_name TEXT PRIMARY KEY, source TEXT NOT NULL, last_rowid BIGINT NOT NULL, rows BIGINT NOT NULL, done BOOLEAN NOT NULL)"
        ))
        .await
        .map_err(pg)?;
    let begun: Vec<(String, String)> = client
        .query(&format!("SELECT table_name, source FROM {PROGRESS}"), &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some((_, other)) = begun.iter().find(|(_, s)| *s != cluster) {
        return Err(MigrateError::OtherSource { other: other.clone(), this: cluster });
    }
    if begun.is_empty() && !options.append {
        refuse_if_not_empty(client).await?;
    }
    if begun.is_empty() && options.append {
        refuse_numbered_collisions(&sqlite, client).await?;
    }
    let mut verified = Vec::new();
    for (table, how) in TABLES {
        if *how != Treatment::Rows {
            continue;
        }
        let plan = Plan::of(&sqlite, client, table).await?;
        copy_table(&sqlite, client, &plan, &cluster, options, progress).await?;
    }
    finish(&sqlite, client).await?;
    for (table, how) in TABLES {
        if *how == Treatment::Rows {
            let plan = Plan::of(&sqlite, client, table).await?;
            verified.push(verify(&sqlite, client, &plan, options).await?);
        }
    }
    let failed: Vec<String> = verified.iter().filter(|v| !v.matches()).map(|v| v.table.clone()).collect();
    if !failed.is_empty() {
        return Err(MigrateError::Mismatch(failed.join(", ")));
    }
    Ok(verified)
}

/// Every table of the source is one this copy knows.
async fn check_tables(sqlite: &Connection, client: &tokio_postgres::Client) -> Result<(), MigrateError> {
    let mut stmt =
        sqlite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").map_err(StoreError::from)?;
    let names: Vec<String> =
        stmt.query_map([], |r| r.get(0)).map_err(StoreError::from)?.collect::<Result<_, _>>().map_err(StoreError::from)?;
    for name in names {
        if !TABLES.iter().any(|(t, _)| *t == name) {
            return Err(MigrateError::UnknownTable(name));
        }
    }
    let target: Vec<String> = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in target {
        if !TABLES.iter().any(|(t, _)| *t == name) {
            return Err(MigrateError::UnknownTable(name));
        }
    }
    Ok(())
}

/// Refuses a target that holds any cluster's data (its own migrations'
/// rows aside: the schema's versions and its new cluster secrets).
async fn refuse_if_not_empty(client: &tokio_postgres::Client) -> Result<(), MigrateError> {
    for (table, how) in TABLES {
        if *how != Treatment::Rows || *table == "cluster_meta" {
            continue;
        }
        let rows: i64 = client.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[]).await.map_err(pg)?.get(0);
        if rows > 0 {
            return Err(MigrateError::NotEmpty { table: table.to_string(), rows });
        }
    }
    Ok(())
}

/// Appending keeps every number the source gave its logs, events, audit
/// lines and node history: refused if the target used any of them already.
async fn refuse_numbered_collisions(sqlite: &Connection, client: &tokio_postgres::Client) -> Result<(), MigrateError> {
    for (table, column) in SEQUENCES {
        let range: (Option<i64>, Option<i64>) = sqlite
            .query_row(&format!("SELECT MIN({column}), MAX({column}) FROM {table}"), [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(StoreError::from)?;
        let (Some(low), Some(high)) = range else { continue };
        let rows: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM {table} WHERE {column} BETWEEN $1 AND $2"), &[&low, &high])
            .await
            .map_err(pg)?
            .get(0);
        if rows > 0 {
            return Err(MigrateError::NumberedCollision { table: table.to_string(), rows });
        }
    }
    Ok(())
}

/// How one table is copied: its columns, their types, its key.
struct Plan {
    table: String,
    /// Columns read from the source, with the target's type.
    columns: Vec<(String, PgType)>,
    /// Columns the target has and the source does not, with the value each gets.
    fixed: Vec<(String, PgType, Value)>,
    /// The primary key's columns (indexes into `columns`).
    key: Vec<usize>,
}

impl Plan {
    async fn of(sqlite: &Connection, client: &tokio_postgres::Client, table: &str) -> Result<Plan, MigrateError> {
        let source: Vec<String> = {
            let mut stmt = sqlite.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).map_err(StoreError::from)?;
            let names = stmt.query_map([], |r| r.get(0)).map_err(StoreError::from)?;
            names.collect::<Result<_, _>>().map_err(StoreError::from)?
        };
        let rows = client
            .query(
                "SELECT column_name::text, data_type::text, is_nullable = 'YES', column_default IS NOT NULL \
                 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name::text = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .map_err(pg)?;
        let (mut columns, mut fixed) = (Vec::new(), Vec::new());
        for row in rows {
            let (name, ty, nullable, default): (String, String, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
            let pg_type = PgType::from_name(&ty).ok_or_else(|| MigrateError::UnknownColumn {
                table: table.into(),
                column: name.clone(),
                ty: ty.clone(),
            })?;
            if source.contains(&name) {
                columns.push((name, pg_type));
            } else if table == "events" && name == "xid" {
                // Rows of transactions long committed: below every snapshot's horizon.
                fixed.push((name, pg_type, Value::Int(1)));
            } else if !nullable && !default {
                return Err(MigrateError::UnknownColumn { table: table.into(), column: name, ty });
            }
        }
        let key_names: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&table],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let key: Vec<usize> = key_names.iter().filter_map(|k| columns.iter().position(|(c, _)| c == k)).collect();
        if key.is_empty() || key.len() != key_names.len() {
            return Err(
                StoreError::Corrupt(format!("table {table}: its primary key ({key_names:?}) is not among the copied columns")).into()
            );
        }
        Ok(Plan { table: table.to_string(), columns, fixed, key })
    }

    fn select(&self) -> String {
        let columns: Vec<&str> = self.columns.iter().map(|(c, _)| c.as_str()).collect();
        format!("SELECT rowid, {} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2", columns.join(", "), self.table)
    }
}

/// The directory of the source's database (its package files are there).
fn source_dir(sqlite: &Connection) -> PathBuf {
    sqlite.path().map(Path::new).and_then(Path::parent).unwrap_or(Path::new(".")).to_path_buf()
}

/// A batch of the source's rows after `after` (rowid), converted; the last rowid.
fn read_batch(sqlite: &Connection, plan: &Plan, dir: &Path, after: i64, limit: usize) -> Result<(Vec<Vec<Value>>, i64), StoreError> {
    let mut stmt = sqlite.prepare_cached(&plan.select())?;
    let mut rows = stmt.query(rusqlite::params![after, limit as i64])?;
    let (mut out, mut last) = (Vec::new(), after);
    while let Some(row) = rows.next()? {
        last = row.get(0)?;
        let mut values = Vec::with_capacity(plan.columns.len());
        for (i, (name, ty)) in plan.columns.iter().enumerate() {
            values.push(Value::from_sqlite(row.get_ref(i + 1)?, *ty, &format!("{}.{name}", plan.table))?);
        }
        if plan.table == "packages" {
            package_bytes(plan, &mut values, dir)?;
        }
        out.push(values);
    }
    Ok((out, last))
}

/// A package's zip: SQLite keeps it in a file beside the database
/// (`package-zips/DIGEST`), PostgreSQL in the row.
fn package_bytes(plan: &Plan, values: &mut [Value], dir: &Path) -> Result<(), StoreError> {
    let at = |name: &str| plan.columns.iter().position(|(c, _)| c == name);
    let (Some(digest), Some(size), Some(data)) = (at("digest"), at("size"), at("data")) else { return Ok(()) };
    let (Value::Text(digest), Value::Int(size)) = (&values[digest], &values[size]) else { return Ok(()) };
    let inline = matches!(&values[data], Value::Bytes(b) if b.len() as i64 == *size);
    if inline || *size == 0 {
        return Ok(());
    }
    // The digest names the file (as the SQLite store writes it): hex, never a path.
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::Corrupt(format!("package digest `{digest}` is not hex")));
    }
    let bytes = std::fs::read(dir.join("package-zips").join(digest.as_str()))?;
    if bytes.len() as i64 != *size {
        return Err(StoreError::Corrupt(format!("package {digest}: the file holds {} bytes, the row says {size}", bytes.len())));
    }
    values[data] = Value::Bytes(bytes);
    Ok(())
}

async fn copy_table(
    sqlite: &Connection,
    client: &mut tokio_postgres::Client,
    plan: &Plan,
    cluster: &str,
    options: &Options,
    progress: &mut impl FnMut(&Progress),
) -> Result<(), MigrateError> {
    let table = &plan.table;
    let total: i64 = sqlite.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).map_err(StoreError::from)?;
    let state = client
        .query_opt(&format!("SELECT last_rowid, rows, done FROM {PROGRESS} WHERE table_name = $1"), &[table])
        .await
        .map_err(pg)?
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)));
    let (mut after, mut copied) = match state {
        Some((_, rows, true)) => {
            progress(&Progress { table: table.clone(), copied: rows as u64, total: total as u64, resumed: true });
            return Ok(());
        }
        Some((last, rows, false)) => (last, rows),
        None => (0, 0),
    };
    let dir = source_dir(sqlite);
    let width = plan.columns.len() + plan.fixed.len();
    // PostgreSQL binds at most 65,535 parameters a statement.
    let limit = options.batch.clamp(1, 65_535 / width.max(1));
    let names: Vec<&str> = plan.columns.iter().map(|(c, _)| c.as_str()).chain(plan.fixed.iter().map(|(c, ..)| c.as_str())).collect();
    let conflict = if table == "cluster_meta" && !options.append {
        // The target's migrations made their own cluster secrets: the source's win.
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    } else {
        " ON CONFLICT DO NOTHING"
    };
    loop {
        let (rows, last) = read_batch(sqlite, plan, &dir, after, limit)?;
        let done = rows.len() < limit;
        let tx = client.transaction().await.map_err(pg)?;
        if !rows.is_empty() {
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(rows.len() * width);
            let mut tuples = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut marks = Vec::with_capacity(width);
                for (value, (name, ty)) in row.iter().zip(&plan.columns) {
                    params.push(value.param(*ty, name)?);
                    marks.push(format!("${}", params.len()));
                }
                for (name, ty, value) in &plan.fixed {
                    params.push(value.param(*ty, name)?);
                    marks.push(format!("${}", params.len()));
                }
                tuples.push(format!("({})", marks.join(", ")));
            }
            let sql = format!("INSERT INTO {table} ({}) VALUES {}{conflict}", names.join(", "), tuples.join(", "));
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            tx.execute(&sql, &refs).await.map_err(pg)?;
        }
        copied += rows.len() as i64;
        tx.execute(
            &format!(
                "INSERT INTO {PROGRESS} (table_name, source, last_rowid, rows, done) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (table_name) DO UPDATE SET last_rowid = $3, rows = $4, done = $5"
            ),
            &[table, &cluster, &last, &copied, &done],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        after = last;
        progress(&Progress { table: table.clone(), copied: copied as u64, total: total as u64, resumed: false });
        if done {
            return Ok(());
        }
    }
}

/// What follows the rows: sequences past every number used, and each
/// project's audit counter.
async fn finish(sqlite: &Connection, client: &tokio_postgres::Client) -> Result<(), MigrateError> {
    let used: HashMap<String, i64> = {
        let mut stmt = sqlite.prepare("SELECT name, seq FROM sqlite_sequence").map_err(StoreError::from)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(StoreError::from)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::from)?
    };
    for (table, column) in SEQUENCES {
        let ever = used.get(*table).copied().unwrap_or(0);
        client
            .execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                     GREATEST((SELECT COALESCE(MAX({column}), 0) FROM {table}), $1::bigint, 1))"
                ),
                &[&ever],
            )
            .await
            .map_err(pg)?;
    }
    client
        .execute(
            "INSERT INTO audit_counters (project, last) SELECT project, MAX(project_seq) FROM audit_log \
             WHERE project IS NOT NULL AND project_seq IS NOT NULL GROUP BY project \
             ON CONFLICT (project) DO UPDATE SET last = GREATEST(audit_counters.last, excluded.last)",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Reads the source again in pages and the target's rows with the same
/// keys; counts and checksums both.
async fn verify(sqlite: &Connection, client: &tokio_postgres::Client, plan: &Plan, options: &Options) -> Result<Verified, MigrateError> {
    let dir = source_dir(sqlite);
    let mut source_sum = ring::digest::Context::new(&ring::digest::SHA256);
    let mut target_sum = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut source_rows, mut target_rows, mut kept) = (0u64, 0u64, 0u64);
    let columns: Vec<&str> = plan.columns.iter().map(|(c, _)| c.as_str()).collect();
    let keys: Vec<(&str, PgType)> = plan.key.iter().map(|&i| (plan.columns[i].0.as_str(), plan.columns[i].1)).collect();
    let unnest: Vec<String> = keys.iter().enumerate().map(|(i, (_, ty))| format!("${}::{}", i + 1, ty.array())).collect();
    let on: Vec<String> = keys.iter().map(|(k, _)| format!("t.{k} = k.{k}")).collect();
    let sql = format!(
        "SELECT {} FROM {} t JOIN unnest({}) AS k({}) ON {}",
        columns.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", "),
        plan.table,
        unnest.join(", "),
        keys.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        on.join(" AND ")
    );
    let mut after = 0;
    loop {
        let (rows, last) = read_batch(sqlite, plan, &dir, after, options.batch.max(1))?;
        if rows.is_empty() {
            break;
        }
        after = last;
        let params: Vec<Box<dyn ToSql + Sync + Send>> =
            keys.iter().enumerate().map(|(i, (_, ty))| key_array(&rows, plan.key[i], *ty)).collect::<Result<_, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let found = client.query(&sql, &refs).await.map_err(pg)?;
        let mut by_key: HashMap<Vec<u8>, Vec<Value>> = HashMap::with_capacity(found.len());
        for row in &found {
            let values: Vec<Value> =
                plan.columns.iter().enumerate().map(|(i, (_, ty))| Value::from_pg(row, i, *ty)).collect::<Result<_, _>>()?;
            by_key.insert(key_bytes(&values, &plan.key), values);
        }
        for row in &rows {
            source_rows += 1;
            row.iter().for_each(|v| v.hash_into(&mut source_sum));
            match by_key.get(&key_bytes(row, &plan.key)) {
                Some(target) if options.append && target != row => kept += 1,
                Some(target) => {
                    target_rows += 1;
                    target.iter().for_each(|v| v.hash_into(&mut target_sum));
                }
                None => {}
            }
        }
    }
    let hex = |d: ring::digest::Digest| d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(Verified {
        table: plan.table.clone(),
        source_rows,
        target_rows,
        source_checksum: hex(source_sum.finish()),
        target_checksum: hex(target_sum.finish()),
        kept,
    })
}

/// The key column `i` of every row, as one array parameter.
fn key_array(rows: &[Vec<Value>], i: usize, ty: PgType) -> Result<Box<dyn ToSql + Sync + Send>, StoreError> {
    let bad = || StoreError::Corrupt("a key column of an unexpected type".into());
    Ok(match ty {
        PgType::Text => Box::new(
            rows.iter().map(|r| if let Value::Text(t) = &r[i] { Ok(t.clone()) } else { Err(bad()) }).collect::<Result<Vec<_>, _>>()?,
        ),
        PgType::BigInt => {
            Box::new(rows.iter().map(|r| if let Value::Int(v) = r[i] { Ok(v) } else { Err(bad()) }).collect::<Result<Vec<i64>, _>>()?)
        }
        PgType::Int => Box::new(
            rows.iter()
                .map(|r| if let Value::Int(v) = r[i] { i32::try_from(v).map_err(|_| bad()) } else { Err(bad()) })
                .collect::<Result<Vec<i32>, _>>()?,
        ),
        _ => return Err(bad()),
    })
}

/// A row's key, as bytes to look it up by.
fn key_bytes(row: &[Value], key: &[usize]) -> Vec<u8> {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    key.iter().for_each(|&i| row[i].hash_into(&mut d));
    d.finish().as_ref().to_vec()
}

//! Ingest: durable tasks accepted per second through the API (single
//! creates and batches), against the raw SQLite insert rate of the same rows
//! into the same schema, measured in the same run.

use anyhow::{bail, Context, Result};
use shepherd_core::{validate, Limits, NewTask, TaskId, TaskSpec, Timestamp};
use shepherd_store::sqlite::{create_schema, open_connection, shape_key, writer::insert_tasks};
use shepherd_store::Synchronous;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Tasks submitted one per request.
    #[arg(long, default_value_t = 20_000)]
    singles: usize,
    /// Requests in flight for single creates.
    #[arg(long, default_value_t = 64)]
    single_concurrency: usize,
    /// Tasks submitted in batches.
    #[arg(long, default_value_t = 100_000)]
    batched: usize,
    /// Tasks per batch request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Batch requests in flight.
    #[arg(long, default_value_t = 2)]
    batch_concurrency: usize,
    /// SQLite durability for both sides: full or normal.
    #[arg(long, default_value = "full")]
    sync: String,
    /// The shepherd binary (default: next to this one).
    #[arg(long)]
    shepherd: Option<PathBuf>,
    /// Run against PostgreSQL: a server's URL (postgres://USER@HOST:PORT/postgres).
    /// The baseline and the API each get a fresh database on it.
    #[arg(long)]
    postgres: Option<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn spec() -> TaskSpec {
    let mut spec = TaskSpec::new("busybox", vec!["sh".into(), "-c".into(), "echo hello from shepherd".into()]);
    spec.labels.insert("bench".into(), "ingest".into());
    spec
}

/// Raw baseline: the same rows, the same schema and pragmas, inserted with
/// prepared statements in transactions of `batch` rows, no API in between.
fn raw_insert_rate(dir: &Path, total: usize, batch: usize, sync: Synchronous) -> Result<f64> {
    let mut conn = open_connection(&dir.join("raw.db"), sync, false)?;
    create_schema(&mut conn)?;
    let key = shape_key(&conn)?;
    let mut ids = ulid::Generator::new();
    let now = Timestamp::now();
    let tasks: Vec<NewTask> =
        (0..total).map(|_| validate(spec(), &Limits::default(), TaskId::generate(&mut ids, now), now)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in tasks.chunks(batch) {
        let tx = conn.transaction()?;
        insert_tasks(&tx, chunk, &key)?;
        tx.commit()?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A fresh database on the PostgreSQL server at `url`; its URL.
pub async fn fresh_database(url: &str, name: &str) -> Result<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting to --postgres")?;
    tokio::spawn(connection);
    let name = format!("{name}_{}", std::process::id());
    client.execute(&format!("DROP DATABASE IF EXISTS {name}"), &[]).await?;
    client.execute(&format!("CREATE DATABASE {name}"), &[]).await?;
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Raw baseline on PostgreSQL: the same rows, the same schema and the same
/// insert statement, straight into the store (`PgStore::create_tasks`, no
/// API, no audit line) in transactions of `batch` rows.
async fn raw_postgres_rate(url: &str, total: usize, batch: usize) -> Result<f64> {
    use shepherd_store::Store;
    let db = fresh_database(url, "shepherd_bench_raw").await?;
    let store = shepherd_store::PgStore::connect(&db, 4).await?;
    let mut ids = ulid::Generator::new();
    let now = Timestamp::now();
    let tasks: Vec<NewTask> =
        (0..total).map(|_| validate(spec(), &Limits::default(), TaskId::generate(&mut ids, now), now)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in tasks.chunks(batch) {
        store.create_tasks(chunk.to_vec()).await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Raw single-row baseline on PostgreSQL: one task per transaction, the
/// store's own insert statements, `concurrency` at once over a pool the
/// size of a server's (16), no API, no group commit, no audit line.
async fn raw_postgres_single_rate(url: &str, total: usize, concurrency: usize) -> Result<f64> {
    let db = fresh_database(url, "shepherd_bench_raw_single").await?;
    let store = Arc::new(shepherd_store::PgStore::connect(&db, 16).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (store, next) = (store.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ids = ulid::Generator::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let now = Timestamp::now();
                let task = validate(spec(), &Limits::default(), TaskId::generate(&mut ids, now), now)?;
                store.raw_insert(vec![task]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub struct ServerProcess(pub Child, pub String);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The join token benchmark servers and agents share.
pub const BENCH_JOIN_TOKEN: &str = "bench-join-token";

/// The admin token benchmark servers start with.
pub const BENCH_ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// An HTTP client that sends the benchmark's admin token.
pub fn bench_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = format!("Bearer {BENCH_ADMIN_TOKEN}").parse() {
        headers.insert("authorization", value);
    }
    reqwest::Client::builder().default_headers(headers).build().unwrap_or_default()
}

/// Starts `shepherd up` with `args` and a data directory; returns once it listens.
pub fn start_server(binary: &Path, data: &Path, args: &[&str]) -> Result<ServerProcess> {
    start_shepherd(binary, "up", data, args)
}

/// Starts `shepherd COMMAND` (`up` or `server`) with `args` and a data
/// directory on a free port; returns once it listens.
pub fn start_shepherd(binary: &Path, command: &str, data: &Path, args: &[&str]) -> Result<ServerProcess> {
    start_shepherd_on(binary, command, "127.0.0.1:0", data, args)
}

/// [`start_shepherd`] listening on `listen`.
pub fn start_shepherd_on(binary: &Path, command: &str, listen: &str, data: &Path, args: &[&str]) -> Result<ServerProcess> {
    let mut server = Command::new(binary);
    // The server dies with the benchmark, even one killed by a signal (a
    // server left behind would weigh on the next measurements).
    // SAFETY: only an async-signal-safe call (prctl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        server.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = server
        .args([command, "--listen", listen])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        // The server's log level: warnings, unless SHEPHERD_BENCH_SERVER_LOG says otherwise.
        .env("SHEPHERD_LOG", std::env::var("SHEPHERD_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
        .env("SHEPHERD_ADMIN_TOKEN", BENCH_ADMIN_TOKEN)
        .env("SHEPHERD_CONFIG", data.with_extension("cli.toml"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("shepherd: API listening on ") {
                    break url.to_string();
                }
            }
            _ => bail!("shepherd {command} exited before listening"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProcess(child, url))
}

/// Sends `requests` copies of `body` to `path`, `concurrency` at a time;
/// returns the seconds taken.
pub async fn drive(url: &str, path: &str, body: String, requests: usize, concurrency: usize) -> Result<f64> {
    let client = bench_client();
    let body = Arc::new(body);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, body, next) = (client.clone(), body.clone(), next.clone());
        let target = format!("{url}{path}");
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let response =
                    client.post(&target).header("content-type", "application/json").body(body.as_str().to_owned()).send().await?;
                if response.status().as_u16() != 201 {
                    bail!("server answered {}", response.status());
                }
                response.bytes().await?;
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(args: Args) -> Result<()> {
    let sync = match args.sync.as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => bail!("--sync {other}: use full or normal"),
    };
    let binary = crate::shepherd_binary(args.shepherd)?;
    let dir = tempfile::tempdir()?;
    println!(
        "ingest benchmark: sync={}, {} singles x{} in flight, {} in batches of {} x{} in flight",
        args.sync, args.singles, args.single_concurrency, args.batched, args.batch_size, args.batch_concurrency
    );

    let (raw, server) = match &args.postgres {
        None => {
            let raw = raw_insert_rate(dir.path(), args.batched, args.batch_size, sync)?;
            println!("raw SQLite insert (transactions of {}):   {raw:>10.0} rows/s", args.batch_size);
            (raw, start_server(&binary, &dir.path().join("api"), &["--no-agent", "--sync", &args.sync])?)
        }
        Some(url) => {
            let raw = raw_postgres_rate(url, args.batched, args.batch_size).await?;
            println!("raw PostgreSQL insert (transactions of {}): {raw:>8.0} rows/s", args.batch_size);
            let api = fresh_database(url, "shepherd_bench_api").await?;
            (raw, start_server(&binary, &dir.path().join("api"), &["--no-agent", "--store", &api])?)
        }
    };
    let one = serde_json::to_string(&spec())?;
    let single_secs = drive(&server.1, "/v1/tasks", one, args.singles, args.single_concurrency).await?;
    let single = args.singles as f64 / single_secs;
    println!("API single creates (x{} in flight):     {single:>10.0} tasks/s  ({:.2} of raw)", args.single_concurrency, single / raw);
    // On PostgreSQL, against the same rows inserted one per transaction.
    let raw_single = match &args.postgres {
        Some(url) => {
            let rate = raw_postgres_single_rate(url, args.singles, args.single_concurrency).await?;
            println!(
                "raw PostgreSQL single-row inserts (x{}): {rate:>8.0} rows/s  (API singles: {:.2} of it)",
                args.single_concurrency,
                single / rate
            );
            Some(rate)
        }
        None => None,
    };

    let requests = args.batched / args.batch_size;
    let batch_body = serde_json::to_string(&serde_json::json!({ "tasks": vec![spec(); args.batch_size] }))?;
    let batch_secs = drive(&server.1, "/v1/tasks/batch", batch_body, requests, args.batch_concurrency).await?;
    let batched = (requests * args.batch_size) as f64 / batch_secs;
    println!(
        "API batches of {} (x{} in flight):    {batched:>10.0} tasks/s  ({:.2} of raw)",
        args.batch_size,
        args.batch_concurrency,
        batched / raw
    );

    // The same tasks made from a code (issue 15): the request names the code
    // and one env var; the server lays it over the code's template.
    let code = serde_json::json!({"name": "bench", "image": "busybox", "command": ["sh", "-c", "echo hello from shepherd"],
        "labels": {"bench": "ingest"}});
    let pushed = bench_client().post(format!("{}/v1/codes", server.1)).json(&code).send().await?;
    if pushed.status().as_u16() != 201 {
        bail!("pushing the code: {}", pushed.status());
    }
    let from_code = serde_json::json!({"code": "bench", "env": {"RUN": "1"}});
    let code_single_secs = drive(&server.1, "/v1/tasks", from_code.to_string(), args.singles, args.single_concurrency).await?;
    let code_single = args.singles as f64 / code_single_secs;
    println!("  from a code, single creates:          {code_single:>10.0} tasks/s  ({:.2} of plain singles)", code_single / single);
    let code_batch_body = serde_json::to_string(&serde_json::json!({ "tasks": vec![from_code; args.batch_size] }))?;
    let code_batch_secs = drive(&server.1, "/v1/tasks/batch", code_batch_body, requests, args.batch_concurrency).await?;
    let code_batched = (requests * args.batch_size) as f64 / code_batch_secs;
    println!("  from a code, batches:                 {code_batched:>10.0} tasks/s  ({:.2} of plain batches)", code_batched / batched);

    let health: serde_json::Value = bench_client().get(format!("{}/v1/health", server.1)).send().await?.json().await?;
    let stored = health["tasks"]["queued"].as_u64().unwrap_or(0) as usize;
    let expected = 2 * (args.singles + requests * args.batch_size);
    if stored != expected {
        bail!("server holds {stored} queued tasks, expected {expected}");
    }
    println!("all {stored} acknowledged tasks are stored");
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "store": if args.postgres.is_some() { "postgres" } else { "sqlite" },
            "sync": args.sync, "raw_rows_per_s": raw, "single_tasks_per_s": single, "batch_tasks_per_s": batched,
            "single_ratio": single / raw, "raw_single_rows_per_s": raw_single,
            "single_ratio_to_raw_single": raw_single.map(|r| single / r), "batch_ratio": batched / raw, "batch_size": args.batch_size,
            "code_single_tasks_per_s": code_single, "code_batch_tasks_per_s": code_batched,
            "code_single_ratio_to_plain": code_single / single, "code_batch_ratio_to_plain": code_batched / batched,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

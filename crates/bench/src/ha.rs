//! Several servers on one PostgreSQL: ingest through the API of one server
//! against two sharing the load (same clients per server, same database
//! server, measured in the same run), and failover: the time from
//! SIGKILLing the leader to the first placement by its successor.

use crate::cluster::{percentile, start_agent};
use crate::ingest::{bench_client, drive, fresh_database, spec, start_shepherd, start_shepherd_on, ServerProcess};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The PostgreSQL server (postgres://USER@HOST:PORT/postgres); every
    /// part gets a fresh database on it.
    #[arg(long)]
    postgres: String,
    /// Tasks submitted one per request, per server.
    #[arg(long, default_value_t = 10_000)]
    singles: usize,
    /// Single-create requests in flight, per server.
    #[arg(long, default_value_t = 64)]
    single_concurrency: usize,
    /// Tasks submitted in batches, per server.
    #[arg(long, default_value_t = 50_000)]
    batched: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Batch requests in flight, per server.
    #[arg(long, default_value_t = 2)]
    batch_concurrency: usize,
    /// Failover trials.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// The servers' --leader-lease in the failover part (seconds).
    #[arg(long, default_value_t = 5.0)]
    lease: f64,
    /// Skip the ingest part.
    #[arg(long)]
    failover_only: bool,
    #[arg(long)]
    shepherd: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn start_servers(binary: &Path, dir: &Path, store: &str, n: usize, extra: &[&str]) -> Result<Vec<ServerProcess>> {
    (0..n)
        .map(|i| {
            let mut args = vec!["--store", store, "--join-token", crate::ingest::BENCH_JOIN_TOKEN];
            args.extend_from_slice(extra);
            start_shepherd(binary, "server", &dir.join(format!("server{i}")), &args)
        })
        .collect()
}

/// Tasks per second (singles, batches) through `servers`, each driven by
/// the same clients as a lone server would be.
async fn ingest(servers: &[ServerProcess], args: &Args) -> Result<(f64, f64)> {
    let one = serde_json::to_string(&spec())?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for server in servers {
        let (url, body) = (server.1.clone(), one.clone());
        let (n, c) = (args.singles, args.single_concurrency);
        runs.push(tokio::spawn(async move { drive(&url, "/v1/tasks", body, n, c).await }));
    }
    for run in runs {
        run.await??;
    }
    let singles = (args.singles * servers.len()) as f64 / started.elapsed().as_secs_f64();

    let batch = serde_json::to_string(&serde_json::json!({ "tasks": vec![spec(); args.batch_size] }))?;
    let requests = args.batched / args.batch_size;
    let started = Instant::now();
    let mut runs = Vec::new();
    for server in servers {
        let (url, body) = (server.1.clone(), batch.clone());
        let c = args.batch_concurrency;
        runs.push(tokio::spawn(async move { drive(&url, "/v1/tasks/batch", body, requests, c).await }));
    }
    for run in runs {
        run.await??;
    }
    let batched = (requests * args.batch_size * servers.len()) as f64 / started.elapsed().as_secs_f64();

    let health: serde_json::Value = bench_client().get(format!("{}/v1/health", servers[0].1)).send().await?.json().await?;
    let stored = health["tasks"]["queued"].as_u64().unwrap_or(0) as usize;
    let expected = (args.singles + requests * args.batch_size) * servers.len();
    if stored != expected {
        bail!("the servers hold {stored} queued tasks, expected {expected}");
    }
    Ok((singles, batched))
}

async fn health(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let response = tokio::time::timeout(Duration::from_millis(500), client.get(format!("{url}/v1/health")).send()).await.ok()?.ok()?;
    response.json().await.ok()
}

/// The index of the one server that says it leads.
async fn leader(client: &reqwest::Client, servers: &[Option<ServerProcess>]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            if let Some(server) = server {
                if health(client, &server.1).await.is_some_and(|h| h["server"]["role"] == "leader") {
                    leaders.push(i);
                }
            }
        }
        if leaders.len() == 1 {
            return Ok(leaders[0]);
        }
        if Instant::now() > deadline {
            bail!("no single leader: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Failover trials: three servers, one agent; each trial SIGKILLs the
/// leader, submits a task to a survivor at once, and notes when the task
/// was placed (its `scheduled_at`, stamped by the new leader) after the kill.
async fn failover(binary: &Path, dir: &Path, args: &Args) -> Result<Vec<f64>> {
    let store = fresh_database(&args.postgres, "shepherd_bench_failover").await?;
    let lease = format!("{}s", args.lease);
    let mut servers: Vec<Option<ServerProcess>> =
        start_servers(binary, dir, &store, 3, &["--leader-lease", &lease])?.into_iter().map(Some).collect();
    let ports: Vec<String> = servers.iter().flatten().map(|s| s.1.clone()).collect();
    let _agent = start_agent(binary, &ports.join(","), &dir.join("agent"), "process")?;
    let client = bench_client();
    let task = serde_json::json!({"image": "busybox", "command": ["true"], "resources": {"cpu_millicores": 10, "memory_mib": 4}});
    let mut times = Vec::new();
    for trial in 0..args.trials {
        let killed = leader(&client, &servers).await?;
        let survivor = servers.iter().enumerate().find(|(i, s)| *i != killed && s.is_some()).map(|(i, _)| i).context("no survivor")?;
        let survivor_url = servers[survivor].as_ref().map(|s| s.1.clone()).context("no survivor")?;
        // Wait for a lease renewal to pass, so that trials do not all kill at the same phase.
        tokio::time::sleep(Duration::from_millis(317 * (trial as u64 % 5))).await;
        let killed_at = unix_millis();
        servers[killed] = None; // SIGKILL (ServerProcess drops with kill)
        let created: serde_json::Value = client.post(format!("{survivor_url}/v1/tasks")).json(&task).send().await?.json().await?;
        let id = created["id"].as_str().context("no task id")?.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let placed_at = loop {
            let task: serde_json::Value = client.get(format!("{survivor_url}/v1/tasks/{id}")).send().await?.json().await?;
            if let Some(at) = task["scheduled_at"].as_str() {
                break chrono_millis(at)?;
            }
            if Instant::now() > deadline {
                bail!("trial {trial}: the task was never placed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let seconds = (placed_at - killed_at) as f64 / 1000.0;
        println!("  trial {:>2}: leader {killed} killed, placed by a new leader after {seconds:.2} s", trial + 1);
        times.push(seconds);
        // Bring the killed server back on its port, as a follower.
        let port = ports[killed].rsplit(':').next().unwrap_or("0").to_string();
        let listen = format!("127.0.0.1:{port}");
        let args = ["--store", store.as_str(), "--join-token", crate::ingest::BENCH_JOIN_TOKEN, "--leader-lease", lease.as_str()];
        servers[killed] = Some(start_shepherd_on(binary, "server", &listen, &dir.join(format!("server{killed}")), &args)?);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

/// Milliseconds since the epoch of an RFC 3339 time as the API writes it.
fn chrono_millis(at: &str) -> Result<i64> {
    let at: shepherd_core::Timestamp =
        serde_json::from_value(serde_json::Value::String(at.to_string())).with_context(|| format!("bad time {at}"))?;
    Ok(at.millis())
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd.clone())?;
    let dir = tempfile::tempdir()?;
    let mut report = serde_json::Map::new();
    if !args.failover_only {
        println!(
            "ingest through several servers on one PostgreSQL: per server {} singles x{} in flight, {} in batches of {} x{} in flight",
            args.singles, args.single_concurrency, args.batched, args.batch_size, args.batch_concurrency
        );
        let mut rates = Vec::new();
        for n in [1, 2] {
            let store = fresh_database(&args.postgres, &format!("shepherd_bench_ha{n}")).await?;
            let servers = start_servers(&binary, &dir.path().join(format!("ingest{n}")), &store, n, &[])?;
            let (singles, batched) = ingest(&servers, &args).await?;
            println!("  {n} server(s): singles {singles:>8.0} tasks/s   batches {batched:>8.0} tasks/s");
            rates.push((singles, batched));
        }
        let (s1, b1) = rates[0];
        let (s2, b2) = rates[1];
        println!("  two servers vs one: singles {:.2}x   batches {:.2}x", s2 / s1, b2 / b1);
        report.insert(
            "ingest".into(),
            serde_json::json!({
                "one": {"singles": s1, "batches": b1}, "two": {"singles": s2, "batches": b2},
                "ratio": {"singles": s2 / s1, "batches": b2 / b1},
            }),
        );
    }
    println!(
        "failover: 3 servers, --leader-lease {}s, {} trials (SIGKILL the leader → first placement by the next)",
        args.lease, args.trials
    );
    let times = failover(&binary, &dir.path().join("failover"), &args).await?;
    let (p50, p99, max) = (percentile(&times, 50.0), percentile(&times, 99.0), times.last().copied().unwrap_or(f64::NAN));
    println!("  failover: p50 {p50:.2} s   p99 {p99:.2} s   max {max:.2} s   (goal: < lease + 1 s = {:.1} s)", args.lease + 1.0);
    report.insert(
        "failover".into(),
        serde_json::json!({"lease_s": args.lease, "trials": times.len(), "p50_s": p50, "p99_s": p99, "max_s": max}),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::Value::Object(report))? + "\n")?;
    }
    Ok(())
}

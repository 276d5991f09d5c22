//! Retention: what removing a large backlog of finished tasks costs the
//! clients creating tasks meanwhile. A store is seeded with finished tasks
//! (each with an attempt and a line of output) in a project `old`; a
//! server (`up --no-agent`) starts on it; creators run with no removal
//! (before), while retention removes `old`'s tasks (during), and once it
//! is done (after), in the same run: closed-loop single creates (the most
//! the server takes) and creates paced at `--rate` (latency at a steady
//! load).

use crate::ingest::{bench_client, spec, start_server};
use anyhow::{bail, Context, Result};
use shepherd_core::{validate, Limits, NewTask, TaskId, Timestamp};
use shepherd_store::sqlite::{create_schema, open_connection, shape_key, writer::insert_tasks};
use shepherd_store::Synchronous;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Finished tasks seeded in project `old`, then removed.
    #[arg(long, default_value_t = 1_000_000)]
    finished: usize,
    /// Paced creators' rate (tasks per second, one per request).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Closed-loop creators' requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// The server's `--retention-share`.
    #[arg(long, default_value_t = 0.1)]
    share: f64,
    /// Also export what is removed (`--retention-export`).
    #[arg(long)]
    export: bool,
    /// The shepherd binary (default: next to this one).
    #[arg(long)]
    shepherd: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Seeds `count` tasks in project `old` that finished two days ago, each
/// with one attempt (with usage) and one line of output.
fn seed(data: &Path, count: usize) -> Result<()> {
    std::fs::create_dir_all(data)?;
    let mut conn = open_connection(&data.join("shepherd.db"), Synchronous::Normal, false)?;
    create_schema(&mut conn)?;
    let key = shape_key(&conn)?;
    let long_ago = Timestamp(Timestamp::now().millis() - 2 * 24 * 3_600_000);
    let mut ids = ulid::Generator::new();
    let mut spec = spec();
    spec.project = "old".into();
    let started = Instant::now();
    let mut made = 0;
    while made < count {
        let n = (count - made).min(20_000);
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| validate(spec.clone(), &Limits::default(), TaskId::generate(&mut ids, long_ago), long_ago))
            .collect::<Result<_, _>>()?;
        let tx = conn.transaction()?;
        insert_tasks(&tx, &tasks, &key)?;
        tx.commit()?;
        made += n;
        eprint!("\rseeding: {made} of {count} finished tasks");
    }
    let at = long_ago.millis();
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO attempts (task_id, number, node_id, scheduled_at, started_at, finished_at, outcome, exit_code, cpu_ms, peak_memory_bytes) \
         SELECT id, 1, 'gone', ?1, ?1, ?1 + 1000, 'succeeded', 0, 10, 1048576 FROM tasks WHERE project = 'old'",
        [at],
    )?;
    tx.execute(
        "INSERT INTO task_logs (task_id, attempt, stream, data) SELECT id, 1, 1, X'68656c6c6f0a' FROM tasks WHERE project = 'old'",
        [],
    )?;
    tx.execute(
        "UPDATE tasks SET state = 'succeeded', scheduled_at = ?1, started_at = ?1, finished_at = ?1 + 1000, node_id = 'gone', \
         exit_code = 0, attempt = 1, charged_attempts = 1 WHERE project = 'old'",
        [at],
    )?;
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    eprintln!("\rseeded {count} finished tasks in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Closed loop: `concurrency` clients create tasks one per request for
/// `seconds`; tasks per second.
async fn closed_loop(url: &str, concurrency: usize, seconds: f64) -> Result<f64> {
    let client = bench_client();
    let body = Arc::new(serde_json::to_string(&spec())?);
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, body, done) = (client.clone(), body.clone(), done.clone());
        let target = format!("{url}/v1/tasks");
        workers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let response =
                    client.post(&target).header("content-type", "application/json").body(body.as_str().to_owned()).send().await?;
                if response.status().as_u16() != 201 {
                    bail!("server answered {}", response.status());
                }
                response.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Paced: one create every 1/`rate` s for `seconds`; (tasks per second
/// acknowledged, p50 and p99 latency in ms).
async fn paced(url: &str, rate: f64, seconds: f64) -> Result<(f64, f64, f64)> {
    let client = bench_client();
    let body = Arc::new(serde_json::to_string(&spec())?);
    let total = (rate * seconds) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut requests = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let (client, body, failed) = (client.clone(), body.clone(), failed.clone());
        let target = format!("{url}/v1/tasks");
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            match client.post(&target).header("content-type", "application/json").body(body.as_str().to_owned()).send().await {
                Ok(r) if r.status().as_u16() == 201 => {}
                _ => failed.store(true, Ordering::Relaxed),
            }
            sent.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for request in requests {
        latencies.push(request.await?);
    }
    let took = started.elapsed().as_secs_f64();
    if failed.load(Ordering::Relaxed) {
        bail!("a paced create was refused");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok((total as f64 / took, at(0.5), at(0.99)))
}

/// How many of `old`'s tasks retention removed so far (from `/metrics`).
async fn removed(url: &str) -> Result<u64> {
    let text = bench_client().get(format!("{url}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("shepherd_retention_removed_tasks_total{project=\"old\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// One phase's figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Phase {
    closed_loop: f64,
    paced: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn phase(name: &str, url: &str, args: &Args) -> Result<Phase> {
    let closed_loop = closed_loop(url, args.concurrency, args.seconds).await?;
    let (paced, p50_ms, p99_ms) = paced(url, args.rate, args.seconds).await?;
    println!(
        "{name:<28} closed loop x{}: {closed_loop:>7.0} tasks/s   paced at {:.0}/s: {paced:>6.0} tasks/s, p50 {p50_ms:>6.1} ms, p99 {p99_ms:>6.1} ms",
        args.concurrency, args.rate
    );
    Ok(Phase { closed_loop, paced, p50_ms, p99_ms })
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd.clone())?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    println!(
        "retention benchmark: {} finished tasks removed (share {}) while tasks are created (closed loop x{}, paced at {}/s, {} s each){}",
        args.finished,
        args.share,
        args.concurrency,
        args.rate,
        args.seconds,
        if args.export { ", exported first" } else { "" }
    );
    seed(&data, args.finished)?;
    let export = dir.path().join("export");
    let share = args.share.to_string();
    let mut server_args = vec!["--no-agent", "--retention-interval", "1s", "--retention-share", &share];
    if args.export {
        server_args.extend(["--retention-export", export.to_str().context("export path")?]);
    }
    let server = start_server(&binary, &data, &server_args)?;
    let url = server.1.clone();
    let client = bench_client();
    let made = client.post(format!("{url}/v1/projects")).json(&serde_json::json!({"name": "old"})).send().await?;
    if made.status().as_u16() != 201 {
        bail!("creating project old: {}", made.status());
    }

    let before = phase("before (nothing to remove)", &url, &args).await?;
    let policy = serde_json::json!({ "retention_seconds": 24 * 3600 });
    let set = client.put(format!("{url}/v1/projects/old/policy")).json(&policy).send().await?;
    if set.status().as_u16() != 200 {
        bail!("setting old's retention: {}", set.status());
    }
    let removal_began = Instant::now();
    while removed(&url).await? == 0 {
        if removal_began.elapsed() > Duration::from_secs(30) {
            bail!("retention did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = phase("during removal", &url, &args).await?;
    let at_end_of_during = removed(&url).await?;
    if at_end_of_during >= args.finished as u64 {
        println!("  (removal ended before the measurement did: seed more with --finished)");
    }
    let mut last = Instant::now();
    loop {
        let gone = removed(&url).await?;
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("  removed {gone} of {} ({:.0} tasks/s)", args.finished, gone as f64 / removal_began.elapsed().as_secs_f64());
            last = Instant::now();
        }
        if gone >= args.finished as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let removal_secs = removal_began.elapsed().as_secs_f64();
    println!(
        "removed {} finished tasks in {removal_secs:.1} s ({:.0} tasks/s, creators running for part of it)",
        args.finished,
        args.finished as f64 / removal_secs
    );
    let after = phase("after (all removed)", &url, &args).await?;
    let baseline = (before.closed_loop + after.closed_loop) / 2.0;
    let cost = 1.0 - during.closed_loop / baseline;
    println!(
        "closed-loop creators during removal: {:.2} of before/after ({:.1}% slower); paced: {:.0} of {:.0}/s acknowledged",
        during.closed_loop / baseline,
        cost * 100.0,
        during.paced,
        args.rate
    );
    if args.export {
        let lines: usize = walk_lines(&export.join("old"))?;
        println!("exported {lines} tasks to {}", export.display());
        if lines < args.finished {
            bail!("only {lines} of {} removed tasks were exported", args.finished);
        }
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "finished": args.finished, "rate": args.rate, "concurrency": args.concurrency, "seconds": args.seconds,
            "export": args.export, "share": args.share, "before": before, "during": during, "after": after,
            "removal_seconds": removal_secs, "closed_loop_ratio": during.closed_loop / baseline,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

/// Lines in the files of `dir`.
fn walk_lines(dir: &Path) -> Result<usize> {
    let mut lines = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let text = std::fs::read_to_string(entry?.path())?;
        lines += text.lines().count();
    }
    Ok(lines)
}

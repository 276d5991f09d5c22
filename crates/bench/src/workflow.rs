//! Workflows: what arrays and dependencies cost and save, each against a
//! baseline in the same run.
//!
//! - Creation: one array of N children in one request against the same N
//!   tasks as batches of 1,000 (the fastest plain path), through the API of
//!   a `shepherd server` (no agents: nothing runs), rounds alternating.
//! - Release: from a dependency's end to its dependents being placeable,
//!   in the store (the exit's transaction releases them), against the same
//!   exit with no dependents.
//! - Fairness: another project's queue wait while a 100,000-child array
//!   floods the cluster, against the same load without the flood, on
//!   simulated nodes.

use crate::ingest::{bench_client, drive, start_shepherd, BENCH_JOIN_TOKEN};
use anyhow::{bail, Context, Result};
use shepherd_core::{validate, Dependency, DependencyTarget, Event, Limits, TaskId, TaskSpec, TaskState, Timestamp};
use shepherd_store::{Entry, Store, Submission};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Children of the array (and tasks of the batches) in the creation measure.
    #[arg(long, default_value_t = 100_000)]
    size: u32,
    /// Alternating rounds of each creation side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Dependents of one task in the release measure.
    #[arg(long, default_value_t = 10_000)]
    dependents: usize,
    /// Repetitions of the release measure (for p50/p99).
    #[arg(long, default_value_t = 20)]
    releases: usize,
    /// Simulated nodes for the fairness measure (0: skip it).
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// The other project's tasks in the fairness measure.
    #[arg(long, default_value_t = 2_000)]
    other_tasks: usize,
    /// The shepherd binary (default: next to this one).
    #[arg(long)]
    shepherd: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn spec(project: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("busybox", vec!["sh".into(), "-c".into(), "echo hello from shepherd".into()]);
    spec.project = project.into();
    spec.resources = shepherd_core::Resources { cpu_millicores: 100, memory_mib: 64 };
    spec
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Seconds to create `size` tasks as one array, and as batches of 1,000.
async fn creation(binary: &std::path::Path, size: u32, rounds: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut arrays, mut batches) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let dir = tempfile::tempdir()?;
            let server = start_shepherd(binary, "server", &dir.path().join("data"), &["--join-token", BENCH_JOIN_TOKEN])?;
            let mut body = spec("default");
            if side == 0 {
                body.array = Some(shepherd_core::ArraySpec { size, parallelism: None, failure_policy: Default::default() });
                let started = Instant::now();
                let answer = bench_client().post(format!("{}/v1/tasks", server.1)).json(&body).send().await?;
                if answer.status().as_u16() != 201 {
                    bail!("the array was refused: {}", answer.text().await?);
                }
                arrays.push(started.elapsed().as_secs_f64());
            } else {
                let batch = 1000usize;
                let requests = (size as usize).div_ceil(batch);
                let text = serde_json::to_string(&serde_json::json!({ "tasks": vec![&body; batch] }))?;
                batches.push(drive(&server.1, "/v1/tasks/batch", text, requests, 2).await?);
            }
        }
    }
    Ok((arrays, batches))
}

/// Milliseconds of the transaction that ends a task with `dependents`
/// waiting on it (which releases them all), `releases` times.
async fn release(store: &dyn Store, dependents: usize, releases: usize) -> Result<Vec<f64>> {
    let mut ids = ulid::Generator::new();
    let mut out = Vec::new();
    for _ in 0..releases {
        let now = Timestamp::now();
        let root = validate(spec("p"), &Limits::default(), TaskId::generate(&mut ids, now), now)?;
        let root_id = root.id;
        store.submit(Submission { entries: vec![Entry::Task(root)], ..Default::default() }).await?;
        let mut made = Vec::new();
        for _ in 0..dependents {
            let mut s = spec("p");
            s.depends_on = vec![Dependency { task: DependencyTarget::Id(root_id.to_string()), on: Default::default() }];
            made.push(Entry::Task(validate(s, &Limits::default(), TaskId::generate(&mut ids, now), now)?));
        }
        let last = made.last().map(Entry::id);
        for chunk in made.chunks(10_000) {
            store.submit(Submission { entries: chunk.to_vec(), batch: true, ..Default::default() }).await?;
        }
        let now = Timestamp::now();
        store.apply(vec![(root_id, Event::Schedule { node_id: "n".into() })], now).await?;
        store.apply(vec![(root_id, Event::Start { attempt: 1, at: None, runtime: None })], now).await?;
        let started = Instant::now();
        let exit = Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None };
        store.apply(vec![(root_id, exit)], Timestamp::now()).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(last) = last {
            let state = store.get_task(last).await?.map(|t| t.state);
            if dependents > 0 && state != Some(TaskState::Queued) {
                bail!("a dependent is {state:?} after its dependency ended");
            }
        }
        // Clear the queue for the next round: cancel what was released.
        let page = store.queued_tasks(Timestamp::now(), shepherd_store::QueueQuery { limit: 100_000, ..Default::default() }).await?;
        let cancels: Vec<_> = page.tasks.iter().map(|t| (t.id, Event::Cancel)).collect();
        for chunk in cancels.chunks(5000) {
            store.apply(chunk.to_vec(), Timestamp::now()).await?;
        }
    }
    Ok(out)
}

/// The other project's queue waits (ms, sorted) with or without a flood.
async fn fairness(binary: &std::path::Path, nodes: usize, other: usize, flood: u32) -> Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let server = start_shepherd(binary, "server", &dir.path().join("data"), &["--join-token", BENCH_JOIN_TOKEN])?;
    let _sim = SimProcess(
        Command::new(binary)
            .args(["nodesim", "--join", &server.1, "--join-token", BENCH_JOIN_TOKEN])
            .args(["--nodes", &nodes.to_string(), "--max-tasks", "16", "--cpu", "64000", "--memory", "262144", "--run-ms", "200..400"])
            .env("SHEPHERD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting shepherd nodesim")?,
    );
    let client = bench_client();
    let started = Instant::now();
    loop {
        let list: serde_json::Value = client.get(format!("{}/v1/nodes", server.1)).send().await?.json().await?;
        if list["nodes"].as_array().map_or(0, |n| n.len()) >= nodes {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("nodes did not join");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for project in ["flood", "other"] {
        client.post(format!("{}/v1/projects", server.1)).json(&serde_json::json!({"name": project})).send().await?;
    }
    if flood > 0 {
        let mut body = spec("flood");
        body.array = Some(shepherd_core::ArraySpec { size: flood, parallelism: None, failure_policy: Default::default() });
        let answer = client.post(format!("{}/v1/tasks", server.1)).json(&body).send().await?;
        if answer.status().as_u16() != 201 {
            bail!("the flood was refused: {}", answer.text().await?);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The other project: a steady trickle, well under half the cluster.
    let mut ids = Vec::new();
    for _ in 0..other / 50 {
        let text = serde_json::json!({ "tasks": vec![spec("other"); 50] });
        let answer: serde_json::Value = client.post(format!("{}/v1/tasks/batch", server.1)).json(&text).send().await?.json().await?;
        ids.extend(answer["ids"].as_array().cloned().unwrap_or_default().into_iter().filter_map(|v| v.as_str().map(str::to_string)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut waits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    for id in &ids {
        loop {
            let task: serde_json::Value = client.get(format!("{}/v1/tasks/{id}", server.1)).send().await?.json().await?;
            if let (Some(created), Some(start)) = (task["created_at"].as_str(), task["scheduled_at"].as_str()) {
                let ms = |t: &str| {
                    humantime::parse_rfc3339(t).map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as f64)
                };
                waits.push(ms(start)? - ms(created)?);
                break;
            }
            if Instant::now() > deadline {
                bail!("task {id} of the other project was not placed in 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    waits.sort_by(f64::total_cmp);
    Ok(waits)
}

struct SimProcess(std::process::Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd.clone())?;
    println!("workflow benchmark: creation of {} tasks, {} rounds each side, alternating", args.size, args.rounds);
    let (arrays, batches) = creation(&binary, args.size, args.rounds).await?;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (a, b) = (best(&arrays), best(&batches));
    println!("  one array:           {:>8.3} s best ({:>9.0} tasks/s)  rounds {arrays:.3?}", a, f64::from(args.size) / a);
    println!("  batches of 1,000:    {:>8.3} s best ({:>9.0} tasks/s)  rounds {batches:.3?}", b, f64::from(args.size) / b);
    println!("  array vs batches:    {:.1}x faster", b / a);

    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(shepherd_store::SqliteStore::open(dir.path().join("s.db"), Default::default())?);
    let mut with = release(store.as_ref(), args.dependents, args.releases).await?;
    let mut without = release(store.as_ref(), 0, args.releases).await?;
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    println!("release of {} dependents (SQLite, the exit's own transaction), {} runs:", args.dependents, args.releases);
    println!("  with dependents:     p50 {:.1} ms, p99 {:.1} ms", percentile(&with, 0.5), percentile(&with, 0.99));
    println!("  baseline (none):     p50 {:.1} ms, p99 {:.1} ms", percentile(&without, 0.5), percentile(&without, 0.99));

    let mut fair = serde_json::Value::Null;
    if args.nodes > 0 {
        let calm = fairness(&binary, args.nodes, args.other_tasks, 0).await?;
        let flooded = fairness(&binary, args.nodes, args.other_tasks, 100_000).await?;
        println!("another project's queue wait, {} simulated nodes, {} of its tasks:", args.nodes, args.other_tasks);
        println!("  alone:                          p50 {:.0} ms, p99 {:.0} ms", percentile(&calm, 0.5), percentile(&calm, 0.99));
        println!("  beside a 100,000-child array:   p50 {:.0} ms, p99 {:.0} ms", percentile(&flooded, 0.5), percentile(&flooded, 0.99));
        fair = serde_json::json!({"alone_p50_ms": percentile(&calm, 0.5), "alone_p99_ms": percentile(&calm, 0.99),
            "flood_p50_ms": percentile(&flooded, 0.5), "flood_p99_ms": percentile(&flooded, 0.99)});
    }
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "size": args.size, "array_seconds": arrays, "batch_seconds": batches, "array_vs_batches": b / a,
            "dependents": args.dependents, "release_ms": with, "release_baseline_ms": without, "fairness": fair,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

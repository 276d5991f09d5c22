//! Docker: 1,000 tasks of `true` through Shepherd with the docker driver,
//! against the same number of create+start+wait+remove cycles done directly
//! on the engine API with the same container settings and the same
//! concurrency, in the same run (raw, Shepherd, raw again). Also
//! submit→start latency on an idle cluster, one task at a time.

use crate::ingest::start_server;
use anyhow::{bail, Context, Result};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;
use shepherd_agent::{AttemptSpec, DockerConfig, DockerDriver};
use shepherd_core::{PullPolicy, Resources, Task, TaskId};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Tasks (and raw cycles) per measurement.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Containers in flight: raw workers, and Shepherd's --max-tasks.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Tasks submitted one at a time for the latency measurement.
    #[arg(long, default_value_t = 100)]
    latency_samples: usize,
    /// The image (built by scripts/build-test-image.sh).
    #[arg(long, default_value = "busybox:latest")]
    image: String,
    /// The shepherd binary (default: next to this one).
    #[arg(long)]
    shepherd: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A `true` attempt in `image` with default resources, for raw engine baselines.
pub fn attempt_spec(image: &str) -> AttemptSpec {
    AttemptSpec {
        task_id: TaskId(ulid::Ulid::new()),
        attempt: 1,
        node_id: "bench-raw".into(),
        image: image.into(),
        command: vec!["true".into()],
        env: Default::default(),
        resources: Resources::default(),
        workdir: None,
        user: None,
        network: "none".into(),
        pull_policy: PullPolicy::Never,
        work_dir: std::env::temp_dir(),
        payload_file: None,
        project: "default".into(),
        secrets_dir: None,
        reuse: None,
        warm_key: None,
    }
}

/// `cycles` create+start+wait+remove cycles, `concurrency` at a time.
async fn raw_cycles(driver: Arc<DockerDriver>, image: &str, cycles: usize, concurrency: usize) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (driver, next, image) = (driver.clone(), next.clone(), image.to_string());
        workers.push(tokio::spawn(async move {
            let docker = driver.engine();
            while next.fetch_add(1, Ordering::Relaxed) < cycles {
                let spec = attempt_spec(&image);
                let name = format!("shepherd-bench-{}", spec.task_id.to_string().to_lowercase());
                let options = CreateContainerOptionsBuilder::default().name(&name).build();
                docker.create_container(Some(options), driver.container_body(&spec)).await?;
                docker.start_container(&name, None).await?;
                match docker.wait_container(&name, None).next().await {
                    Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => bail!("wait stream closed"),
                }
                docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await?;
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(cycles as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd)?;
    let driver = Arc::new(DockerDriver::connect(DockerConfig::new("bench-raw")).await.map_err(anyhow::Error::msg)?);
    println!("docker benchmark: {} tasks of `true`, {} in flight, image {}", args.tasks, args.concurrency, args.image);
    let raw_before = raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?;
    println!("raw engine create+start+wait+remove (before): {raw_before:>7.1} /s");

    let dir = tempfile::tempdir()?;
    let concurrency = args.concurrency.to_string();
    let server = start_server(&binary, &dir.path().join("docker"), &["--driver", "docker", "--max-tasks", &concurrency])?;
    let client = crate::ingest::bench_client();
    let task = serde_json::json!({"image": args.image, "command": ["true"], "pull_policy": "never"});
    let batch = serde_json::json!({ "tasks": vec![task.clone(); args.tasks] });
    let started = Instant::now();
    let response = client.post(format!("{}/v1/tasks/batch", server.1)).json(&batch).send().await?;
    if response.status().as_u16() != 201 {
        bail!("batch refused: {}", response.text().await?);
    }
    loop {
        let health: serde_json::Value = client.get(format!("{}/v1/health", server.1)).send().await?.json().await?;
        let done: u64 = ["succeeded", "failed", "timed_out", "cancelled"].iter().map(|s| health["tasks"][s].as_u64().unwrap_or(0)).sum();
        if done as usize >= args.tasks {
            if health["tasks"]["succeeded"].as_u64().unwrap_or(0) as usize != args.tasks {
                bail!("not every task succeeded: {health}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shepherd_rate = args.tasks as f64 / started.elapsed().as_secs_f64();
    println!("shepherd, docker driver:                      {shepherd_rate:>7.1} tasks/s");

    let mut latencies = Vec::new();
    for _ in 0..args.latency_samples {
        let created: Task = client.post(format!("{}/v1/tasks", server.1)).json(&task).send().await?.json().await?;
        let done: Task = client.get(format!("{}/v1/tasks/{}/wait?timeout_seconds=60", server.1, created.id)).send().await?.json().await?;
        let started_at = done.started_at.context("task never started")?;
        latencies.push((started_at.millis() - done.created_at.millis()) as f64);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!("submit→start latency, one task at a time:     p50 {p50:.0} ms, p99 {p99:.0} ms");
    drop(server);

    let raw_after = raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?;
    println!("raw engine create+start+wait+remove (after):  {raw_after:>7.1} /s");
    let raw = (raw_before + raw_after) / 2.0;
    println!("ratio shepherd / raw engine:                  {:>7.2}", shepherd_rate / raw);
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "tasks": args.tasks, "concurrency": args.concurrency,
            "raw_before_per_s": raw_before, "raw_after_per_s": raw_after, "shepherd_tasks_per_s": shepherd_rate,
            "ratio": shepherd_rate / raw, "submit_to_start_ms": {"p50": p50, "p99": p99, "samples": latencies.len()},
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

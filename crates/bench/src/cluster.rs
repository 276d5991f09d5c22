//! Submit→container-start latency on a server with three agents (separate
//! processes, docker driver), one task at a time, against a direct
//! create+start on the engine measured in the same run: the overhead
//! Shepherd adds.

use crate::ingest::start_server;
use anyhow::{bail, Context, Result};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;
use shepherd_agent::{DockerConfig, DockerDriver};
use shepherd_core::Task;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Tasks (and direct starts) measured, one at a time.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    #[arg(long, default_value = "busybox:latest")]
    image: String,
    #[arg(long)]
    shepherd: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGINT lets the agent stop cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Starts `shepherd agent` joining `join` (one URL or several, comma
/// separated) with `driver`; returns once it registered.
pub fn start_agent(binary: &std::path::Path, join: &str, data: &std::path::Path, driver: &str) -> Result<Agent> {
    let mut child = Command::new(binary)
        .args(["agent", "--join", join, "--join-token", crate::ingest::BENCH_JOIN_TOKEN, "--driver", driver, "--data-dir"])
        .arg(data)
        .env("SHEPHERD_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting an agent")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("shepherd agent: node") => {}
        other => bail!("agent did not start: {other:?}"),
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Agent(child))
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

async fn direct_starts(driver: &DockerDriver, image: &str, samples: usize) -> Result<Vec<f64>> {
    let docker = driver.engine();
    let mut times = Vec::new();
    for _ in 0..samples {
        let spec = crate::docker::attempt_spec(image);
        let name = format!("shepherd-bench-{}", spec.task_id.to_string().to_lowercase());
        let started = Instant::now();
        docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), driver.container_body(&spec)).await?;
        docker.start_container(&name, None).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = docker.wait_container(&name, None).next().await;
        docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd)?;
    let dir = tempfile::tempdir()?;
    let server = start_server(&binary, &dir.path().join("server"), &["--no-agent", "--join-token", crate::ingest::BENCH_JOIN_TOKEN])?;
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(start_agent(&binary, &server.1, &dir.path().join(format!("agent{i}")), "docker")?);
    }
    let client = crate::ingest::bench_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: serde_json::Value = client.get(format!("{}/v1/nodes", server.1)).send().await?.json().await?;
        if nodes["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "ready").count()) == 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!("agents did not join");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let driver = DockerDriver::connect(DockerConfig::new("bench-direct")).await.map_err(anyhow::Error::msg)?;
    println!("cluster latency benchmark: server + 3 agents (docker driver), {} tasks one at a time", args.samples);
    // Interleaved, one direct start then one Shepherd task, so that drift in
    // the engine's speed over the run weighs on both sides alike.
    let task = serde_json::json!({"image": args.image, "command": ["true"], "pull_policy": "never"});
    let mut shepherd = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..args.samples {
        direct.extend(direct_starts(&driver, &args.image, 1).await?);
        let created: Task = client.post(format!("{}/v1/tasks", server.1)).json(&task).send().await?.json().await?;
        let done: Task = client.get(format!("{}/v1/tasks/{}/wait?timeout_seconds=60", server.1, created.id)).send().await?.json().await?;
        let started = done.started_at.context("task never started")?;
        shepherd.push((started.millis() - done.created_at.millis()) as f64);
    }
    shepherd.sort_by(|a, b| a.total_cmp(b));
    direct.sort_by(|a, b| a.total_cmp(b));
    let (s50, s99) = (percentile(&shepherd, 50.0), percentile(&shepherd, 99.0));
    let (d50, d99) = (percentile(&direct, 50.0), percentile(&direct, 99.0));
    println!("direct create+start on the engine:    p50 {d50:6.1} ms   p99 {d99:6.1} ms");
    println!("shepherd submit→container start:      p50 {s50:6.1} ms   p99 {s99:6.1} ms");
    println!("overhead Shepherd adds:               p50 {:6.1} ms   p99 {:6.1} ms", s50 - d50, s99 - d99);
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "samples": args.samples, "direct_ms": {"p50": d50, "p99": d99}, "shepherd_ms": {"p50": s50, "p99": s99},
            "overhead_ms": {"p50": s50 - d50, "p99": s99 - d99},
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    drop(agents);
    Ok(())
}

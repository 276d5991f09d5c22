//! Docker: tasks of `true` through Shepherd with the docker driver, cold
//! (a container per task) and warm (`reuse`: runner containers kept between
//! tasks), against the same number of create+start+wait+remove cycles done
//! directly on the engine API with the same container settings and the same
//! concurrency, and against Docker Swarm mode's replicated jobs on the same
//! engine, all in one run (raw, cold, warm, raw again, Swarm). Also
//! submit→start latency on an idle cluster, one task at a time, cold and
//! warm, and where a warm task's time goes (driver-level: run, wait, reset).

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
    /// The static shepherd-runner for warm containers (default:
    /// $SHEPHERD_RUNNER_STATIC, else the workspace's static build).
    #[arg(long)]
    runner: Option<PathBuf>,
    /// Warm containers per key (the server's --warm-max).
    #[arg(long, default_value_t = 4)]
    warm_max: usize,
    /// Skip Docker Swarm mode (it needs `docker swarm init` on this engine).
    #[arg(long)]
    no_swarm: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Cold only, paired: this many rounds, each raw cycles and Shepherd
    /// tasks back to back (the order alternating), `--tasks` of each per
    /// round, on one running server; the ratio of each round and their
    /// median. The engine's own rate drifts by ±10% from minute to
    /// minute here; pairs taken a minute apart see the same engine.
    #[arg(long)]
    paired_rounds: Option<usize>,
}

/// `tasks` tasks of `task` through a running server, in one batch: tasks/s.
async fn shepherd_round(client: &reqwest::Client, url: &str, task: &serde_json::Value, tasks: usize) -> Result<f64> {
    let before: serde_json::Value = client.get(format!("{url}/v1/health")).send().await?.json().await?;
    let done_before = before["tasks"]["succeeded"].as_u64().unwrap_or(0);
    let batch = serde_json::json!({ "tasks": vec![task.clone(); tasks] });
    let started = Instant::now();
    let response = client.post(format!("{url}/v1/tasks/batch")).json(&batch).send().await?;
    if response.status().as_u16() != 201 {
        bail!("batch refused: {}", response.text().await?);
    }
    loop {
        let health: serde_json::Value = client.get(format!("{url}/v1/health")).send().await?.json().await?;
        let failed: u64 = ["failed", "timed_out", "cancelled"].iter().map(|s| health["tasks"][s].as_u64().unwrap_or(0)).sum();
        if failed > 0 {
            bail!("tasks did not succeed: {health}");
        }
        if health["tasks"]["succeeded"].as_u64().unwrap_or(0) >= done_before + tasks as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(tasks as f64 / started.elapsed().as_secs_f64())
}

/// The paired cold measurement (`--paired-rounds`).
async fn paired(args: &Args, binary: &std::path::Path, driver: Arc<DockerDriver>, rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let concurrency = args.concurrency.to_string();
    let server = start_server(binary, &dir.path().join("cold"), &["--driver", "docker", "--max-tasks", &concurrency, "--warm-max", "0"])?;
    let client = crate::ingest::bench_client();
    let task = serde_json::json!({"image": args.image, "command": ["true"], "pull_policy": "never"});
    println!(
        "paired cold rounds: {rounds} × ({} raw cycles, {} tasks), {} in flight, image {}",
        args.tasks, args.tasks, args.concurrency, args.image
    );
    let before = engine_calls(&client, &server.1).await?;
    let (mut ratios, mut raw_total, mut cold_total) = (Vec::new(), 0.0, 0.0);
    for round in 0..rounds {
        // Alternating which goes first, so a drift within a round favours neither.
        let (raw, cold) = if round % 2 == 0 {
            let raw = raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?;
            (raw, shepherd_round(&client, &server.1, &task, args.tasks).await?)
        } else {
            let cold = shepherd_round(&client, &server.1, &task, args.tasks).await?;
            (raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?, cold)
        };
        println!("  round {:>2}: raw {raw:>5.1} /s, shepherd cold {cold:>5.1} tasks/s, ratio {:.3}", round + 1, cold / raw);
        ratios.push(cold / raw);
        raw_total += raw;
        cold_total += cold;
    }
    let after = engine_calls(&client, &server.1).await?;
    let tasks = (rounds * args.tasks) as f64;
    for (call, (count, seconds)) in &after {
        let (count0, seconds0) = before.get(call).copied().unwrap_or_default();
        let (n, s) = (count - count0, seconds - seconds0);
        if n > 0.0 {
            println!("  engine call {call:<14} {:>5.2} per task, {:>7.1} ms each", n / tasks, 1000.0 * s / n);
        }
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&sorted, 50.0);
    println!(
        "ratio cold / raw engine: median of rounds {median:.3} (from {:.3} to {:.3}); of the means {:.3}",
        sorted[0],
        sorted[sorted.len() - 1],
        cold_total / raw_total
    );
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "paired_rounds": rounds, "tasks_per_round": args.tasks, "concurrency": args.concurrency,
            "ratios": ratios, "median_ratio": median, "ratio_of_means": cold_total / raw_total,
            "raw_mean_per_s": raw_total / rounds as f64, "cold_mean_per_s": cold_total / rounds as f64,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    let mut server = server;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
    let _ = server.0.wait();
    Ok(())
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
        out_dir: None,
        inputs_dir: None,
        reuse: None,
        warm_key: None,
        package_dir: None,
        scratch: None,
        volumes: Vec::new(),
        networks: Vec::new(),
        gpus: 0,
        devices: Vec::new(),
        gpu_ids: Vec::new(),
        registry_auth: None,
        pull_timeout: std::time::Duration::from_secs(600),
        progress: None,
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

/// One Shepherd measurement: throughput of `tasks` copies of `task`
/// submitted in one batch, then submit→start latency one task at a time.
struct Measured {
    rate: f64,
    p50: f64,
    p99: f64,
    samples: usize,
    /// Attempts that ran in a reused container.
    warm: usize,
    /// Engine calls during the throughput phase, per task, by call:
    /// (call, calls per task, mean ms per call).
    engine_calls: Vec<(String, f64, f64)>,
}

/// The node's engine calls so far, from `/metrics`: call → (count, seconds).
async fn engine_calls(client: &reqwest::Client, url: &str) -> Result<std::collections::BTreeMap<String, (f64, f64)>> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    let mut calls: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for line in text.lines() {
        for (suffix, count) in [("_count{call=\"", true), ("_sum{call=\"", false)] {
            let Some(rest) = line.strip_prefix(&format!("shepherd_engine_call_seconds{suffix}")) else { continue };
            let Some((call, value)) = rest.split_once("\"} ") else { continue };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let entry = calls.entry(call.to_string()).or_default();
            if count {
                entry.0 = value;
            } else {
                entry.1 = value;
            }
        }
    }
    Ok(calls)
}

async fn measure_shepherd(
    binary: &std::path::Path,
    data: &std::path::Path,
    server_args: &[&str],
    task: &serde_json::Value,
    args: &Args,
) -> Result<Measured> {
    let server = start_server(binary, data, server_args)?;
    let client = crate::ingest::bench_client();
    let batch = serde_json::json!({ "tasks": vec![task.clone(); args.tasks] });
    let started = Instant::now();
    let response = client.post(format!("{}/v1/tasks/batch", server.1)).json(&batch).send().await?;
    if response.status().as_u16() != 201 {
        bail!("batch refused: {}", response.text().await?);
    }
    let created: serde_json::Value = response.json().await?;
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
    let rate = args.tasks as f64 / started.elapsed().as_secs_f64();
    let engine_calls = engine_calls(&client, &server.1)
        .await?
        .into_iter()
        .map(|(call, (count, seconds))| (call, count / args.tasks as f64, if count > 0.0 { 1000.0 * seconds / count } else { 0.0 }))
        .collect();
    let mut warm = 0;
    for id in created["ids"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(|i| i.as_str()) {
        let task: Task = client.get(format!("{}/v1/tasks/{id}", server.1)).send().await?.json().await?;
        warm += task.attempts.iter().filter(|a| a.runtime.as_ref().is_some_and(|r| r.warm)).count();
    }
    let mut latencies = Vec::new();
    for _ in 0..args.latency_samples {
        let created: Task = client.post(format!("{}/v1/tasks", server.1)).json(task).send().await?.json().await?;
        let done: Task = client.get(format!("{}/v1/tasks/{}/wait?timeout_seconds=60", server.1, created.id)).send().await?.json().await?;
        let started_at = done.started_at.context("task never started")?;
        latencies.push((started_at.millis() - done.created_at.millis()) as f64);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    // A clean stop removes the idle warm containers.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut server = server;
    while Instant::now() < deadline && server.0.try_wait()?.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Measured { rate, p50, p99, samples: latencies.len(), warm, engine_calls })
}

/// Where a warm task's time goes, at the driver: handing the task to an
/// idle container's runner (Run → Started), waiting for its exit, and the
/// reset that makes the container ready for the next. Median ms of each
/// (the means are dominated by a few slow cycles when the engine is busy
/// cleaning up after the other measurements), over `cycles` tasks one after
/// another in one container.
async fn warm_breakdown(runner: &std::path::Path, image: &str, cycles: usize) -> Result<(f64, f64, f64)> {
    use shepherd_agent::{AttemptHandle, Driver};
    let config = DockerConfig {
        warm: Some(shepherd_agent::driver::warm::WarmConfig { runner: runner.to_path_buf(), max_per_key: 1, max_per_project: 1 }),
        ..DockerConfig::new("bench-warm")
    };
    let driver = DockerDriver::connect(config).await.map_err(anyhow::Error::msg)?;
    let (mut start, mut wait, mut reset) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=cycles {
        let mut spec = attempt_spec(image);
        spec.reuse = Some(shepherd_core::ReusePolicy::default());
        spec.warm_key = shepherd_core::shape::WarmKey::of(&shepherd_core::TaskSpec {
            reuse: spec.reuse,
            ..shepherd_core::TaskSpec::new(image, vec!["true".into()])
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let t0 = Instant::now();
        let mut handle: Box<dyn AttemptHandle> = driver.start(&spec, tx).await?;
        let t1 = Instant::now();
        let status = handle.wait().await?;
        let t2 = Instant::now();
        handle.remove().await?;
        let t3 = Instant::now();
        if status.code != 0 || handle.runtime().is_none_or(|r| r.warm != (i > 0)) {
            bail!("warm cycle {i} went wrong: {status:?} {:?}", handle.runtime());
        }
        // The first makes the container: not counted.
        if i > 0 {
            start.push((t1 - t0).as_secs_f64() * 1000.0);
            wait.push((t2 - t1).as_secs_f64() * 1000.0);
            reset.push((t3 - t2).as_secs_f64() * 1000.0);
        }
    }
    driver.shutdown().await;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, 50.0)
    };
    Ok((median(start), median(wait), median(reset)))
}

/// `tasks` replicated-job tasks of `true` in Docker Swarm mode on the local
/// engine, `concurrency` at a time: tasks per second from `service create`
/// to the last completion. Joins a swarm if the engine is in none, and
/// leaves it afterwards.
async fn swarm_jobs(image: &str, tasks: usize, concurrency: usize) -> Result<f64> {
    use std::process::Command;
    let docker = |args: &[&str]| -> Result<String> {
        let out = Command::new("docker").args(args).output().context("running docker")?;
        if !out.status.success() {
            bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    let joined = state.trim() != "active";
    if joined {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    }
    let name = "shepherd-bench-swarm-job";
    let _ = docker(&["service", "rm", name]);
    let result = async {
        let started = Instant::now();
        let (replicas, concurrent) = (tasks.to_string(), concurrency.to_string());
        docker(&[
            "service",
            "create",
            "--detach",
            "--quiet",
            "--name",
            name,
            "--mode",
            "replicated-job",
            "--replicas",
            &replicas,
            "--max-concurrent",
            &concurrent,
            "--restart-condition",
            "none",
            "--no-resolve-image",
            image,
            "true",
        ])?;
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let states = docker(&["service", "ps", name, "--no-trunc", "--format", "{{.CurrentState}}"])?;
            let complete = states.lines().filter(|l| l.starts_with("Complete")).count();
            if complete >= tasks {
                break;
            }
            if Instant::now() > deadline {
                bail!("swarm job: {complete} of {tasks} complete after an hour");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(tasks as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    let _ = docker(&["service", "rm", name]);
    if joined {
        let _ = docker(&["swarm", "leave", "--force"]);
    }
    result
}

/// The static runner: `--runner`, $SHEPHERD_RUNNER_STATIC, or the workspace's static build.
fn runner_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = explicit.or_else(|| std::env::var_os("SHEPHERD_RUNNER_STATIC").map(PathBuf::from)).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/x86_64-unknown-linux-gnu/release/shepherd-runner"))
    });
    path.canonicalize().with_context(|| format!("no static shepherd-runner at {} (bench/docker.sh builds it)", path.display()))
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd.clone())?;
    let runner = runner_path(args.runner.clone())?;
    let driver = Arc::new(DockerDriver::connect(DockerConfig::new("bench-raw")).await.map_err(anyhow::Error::msg)?);
    if let Some(rounds) = args.paired_rounds.filter(|r| *r > 0) {
        return paired(&args, &binary, driver, rounds).await;
    }
    println!("docker benchmark: {} tasks of `true`, {} in flight, image {}", args.tasks, args.concurrency, args.image);
    let raw_before = raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?;
    println!("raw engine create+start+wait+remove (before): {raw_before:>7.1} /s");

    let dir = tempfile::tempdir()?;
    let concurrency = args.concurrency.to_string();
    let cold_task = serde_json::json!({"image": args.image, "command": ["true"], "pull_policy": "never"});
    let cold = measure_shepherd(
        &binary,
        &dir.path().join("cold"),
        &["--driver", "docker", "--max-tasks", &concurrency, "--warm-max", "0"],
        &cold_task,
        &args,
    )
    .await?;
    println!("shepherd cold (a container per task):         {:>7.1} tasks/s", cold.rate);
    println!("  submit→start, one at a time:                p50 {:.0} ms, p99 {:.0} ms", cold.p50, cold.p99);
    for (call, per_task, mean_ms) in &cold.engine_calls {
        println!("  engine call {call:<14} {per_task:>5.2} per task, {mean_ms:>7.1} ms each");
    }

    let mut warm_task = cold_task.clone();
    warm_task["reuse"] = serde_json::json!({ "idle_seconds": 60 });
    let (runner_arg, warm_max) = (runner.display().to_string(), args.warm_max.to_string());
    let warm_args = ["--driver", "docker", "--max-tasks", &concurrency, "--runner", &runner_arg, "--warm-max", &warm_max];
    let warm = measure_shepherd(&binary, &dir.path().join("warm"), &warm_args, &warm_task, &args).await?;
    println!(
        "shepherd warm (reuse, {} containers):         {:>7.1} tasks/s ({} of {} ran warm)",
        args.warm_max, warm.rate, warm.warm, args.tasks
    );
    println!("  submit→start, one at a time:                p50 {:.1} ms, p99 {:.1} ms", warm.p50, warm.p99);

    let (run_ms, wait_ms, reset_ms) = warm_breakdown(&runner, &args.image, 200).await?;
    println!("  one warm task at the driver (median of 200): run→started {run_ms:.2} ms, wait {wait_ms:.2} ms, reset {reset_ms:.2} ms");

    let raw_after = raw_cycles(driver.clone(), &args.image, args.tasks, args.concurrency).await?;
    println!("raw engine create+start+wait+remove (after):  {raw_after:>7.1} /s");
    let raw = (raw_before + raw_after) / 2.0;
    let swarm = if args.no_swarm { None } else { Some(swarm_jobs(&args.image, args.tasks, args.concurrency).await?) };
    if let Some(swarm) = swarm {
        println!("docker swarm mode, replicated job:            {swarm:>7.1} tasks/s");
    }
    println!("ratio cold / raw engine:                      {:>7.2}", cold.rate / raw);
    println!("ratio warm / raw engine:                      {:>7.2}", warm.rate / raw);
    if let Some(swarm) = swarm {
        println!("ratio warm / swarm:                           {:>7.2}", warm.rate / swarm);
    }
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "tasks": args.tasks, "concurrency": args.concurrency, "warm_max": args.warm_max,
            "raw_before_per_s": raw_before, "raw_after_per_s": raw_after,
            "cold_tasks_per_s": cold.rate, "warm_tasks_per_s": warm.rate, "warm_attempts": warm.warm, "swarm_tasks_per_s": swarm,
            "ratio_cold_raw": cold.rate / raw, "ratio_warm_raw": warm.rate / raw,
            "cold_submit_to_start_ms": {"p50": cold.p50, "p99": cold.p99, "samples": cold.samples},
            "cold_engine_calls": cold.engine_calls.iter().map(|(call, per_task, ms)| serde_json::json!({"call": call, "per_task": per_task, "mean_ms": ms})).collect::<Vec<_>>(),
            "warm_submit_to_start_ms": {"p50": warm.p50, "p99": warm.p99, "samples": warm.samples},
            "warm_driver_ms": {"run_to_started": run_ms, "wait": wait_ms, "reset": reset_ms},
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

//! Scheduling at scale, end to end: a real `shepherd server` (SQLite) with
//! N simulated nodes joined over the real agent protocol (`shepherd
//! nodesim`, a separate process), tasks submitted in batches faster than
//! the server takes them; the figure is tasks started per second (queued →
//! scheduled → pushed → start reported and accepted). Also: what the
//! server's CPU does with N idle nodes heartbeating, submit→start latency
//! at half the ceiling, and the server's memory.
//!
//! Every process shares this machine's cores; both processes' CPU is
//! reported so that it shows which one was measured.

use crate::ingest::{bench_client, start_shepherd, ServerProcess, BENCH_JOIN_TOKEN};
use crate::stages::{Breakdown, Scrape};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use shepherd_core::{Resources, TaskSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Node counts to measure with nothing running.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 5000, 10000])]
    nodes: Vec<usize>,
    /// Tasks already running, measured at the largest node count.
    #[arg(long, value_delimiter = ',', default_values_t = [10000, 100000])]
    running: Vec<usize>,
    /// Tasks submitted per measurement.
    #[arg(long, default_value_t = 40_000)]
    tasks: usize,
    /// Tasks per batch request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batch requests in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Simulated run time of the measured tasks (ms, or MIN..MAX).
    #[arg(long, default_value = "100..500")]
    run_ms: String,
    /// Attempts per simulated node at once.
    #[arg(long, default_value_t = 128)]
    max_tasks: u32,
    /// Nodes for the latency measurement (at half the ceiling measured with them).
    #[arg(long, default_value_t = 5000)]
    latency_nodes: usize,
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Seconds of idle heartbeating measured per node count.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// A label every simulated node carries (repeatable): KEY=VALUE.
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    node_labels: Vec<String>,
    /// Extra arguments for `shepherd server` (repeatable), e.g. `--server-arg=--sync=normal`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[arg(long)]
    shepherd: Option<PathBuf>,
    /// Another shepherd binary (the previous version) whose server is
    /// measured the same way, just before this one, at each node count up
    /// to --baseline-max-nodes (the simulator is always this version's).
    #[arg(long)]
    baseline: Option<PathBuf>,
    #[arg(long, default_value_t = 5000)]
    baseline_max_nodes: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// A plot of tasks started over time, one line per measurement.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
struct Measure {
    /// Which server: "this" or "baseline".
    server: String,
    nodes: usize,
    running: usize,
    tasks: usize,
    seconds_to_join: f64,
    /// Tasks started per second, first submission to last start.
    started_per_second: f64,
    /// Cores used while measuring.
    server_cores: f64,
    sim_cores: f64,
    /// Cores the server used with every node idle and heartbeating.
    idle_server_cores: f64,
    server_rss_mib: f64,
    /// (seconds, tasks started) samples.
    timeline: Vec<(f64, u64)>,
    /// Where the time went, stage by stage (servers that count stages).
    stages: Option<crate::stages::Breakdown>,
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    nodes: usize,
    rate: f64,
    tasks: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn task_spec(run_ms: Option<u64>, phase: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
    spec.resources = Resources { cpu_millicores: 100, memory_mib: 64 };
    spec.labels.insert("phase".into(), phase.into());
    if let Some(ms) = run_ms {
        spec.labels.insert(shepherd_agent::sim::RUN_MS_LABEL.into(), ms.to_string());
    }
    spec
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(binary: &Path, url: &str, nodes: usize, args: &Args, stats: &Path) -> Result<Sim> {
    let child = Command::new(binary)
        .args(["nodesim", "--join", url, "--join-token", BENCH_JOIN_TOKEN])
        .args(["--nodes", &nodes.to_string(), "--max-tasks", &args.max_tasks.to_string()])
        .args(["--cpu", "64000", "--memory", "262144", "--run-ms", &args.run_ms])
        .args(args.node_labels.iter().flat_map(|l| ["--label", l.as_str()]))
        .arg("--stats")
        .arg(stats)
        .env("SHEPHERD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting shepherd nodesim")?;
    Ok(Sim(child))
}

/// Starts accepted so far, from the simulator's stats file.
fn starts(stats: &Path) -> u64 {
    std::fs::read_to_string(stats)
        .ok()
        .and_then(|t| serde_json::from_str::<shepherd_agent::sim::SimReport>(&t).ok())
        .map_or(0, |r| r.starts_accepted)
}

async fn wait_for_nodes(url: &str, nodes: usize) -> Result<f64> {
    let client = bench_client();
    let started = Instant::now();
    loop {
        let list: serde_json::Value = client.get(format!("{url}/v1/nodes")).send().await?.json().await?;
        let ready = list["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "ready").count());
        if ready >= nodes {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {ready} of {nodes} nodes joined in 10 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Submits `total` tasks in batches, `in_flight` requests at a time.
async fn submit(url: &str, spec: &TaskSpec, total: usize, batch: usize, in_flight: usize) -> Result<()> {
    let requests = total.div_ceil(batch);
    let body = serde_json::to_string(&serde_json::json!({ "tasks": vec![spec; batch] }))?;
    crate::ingest::drive(url, "/v1/tasks/batch", body, requests, in_flight).await?;
    Ok(())
}

/// Waits until the simulator has `target` starts accepted; the timeline.
async fn follow(stats: &Path, target: u64, from: Instant, limit: Duration) -> Result<Vec<(f64, u64)>> {
    let mut timeline = Vec::new();
    loop {
        let n = starts(stats);
        timeline.push((from.elapsed().as_secs_f64(), n));
        if n >= target {
            return Ok(timeline);
        }
        if from.elapsed() > limit {
            bail!("{n} of {target} starts after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn measure(
    binary: &Path,
    server_binary: &Path,
    args: &Args,
    nodes: usize,
    running: usize,
) -> Result<(Measure, ServerProcess, Sim, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut server_args = vec!["--join-token", BENCH_JOIN_TOKEN, "--max-connections", "60000", "--node-timeout", "60s"];
    server_args.extend(args.server_args.iter().map(String::as_str));
    let server = start_shepherd(server_binary, "server", &dir.path().join("server"), &server_args)?;
    let pid = server.0.id();
    let stats = dir.path().join("sim.json");
    let sim = start_sim(binary, &server.1, nodes, args, &stats)?;
    let seconds_to_join = wait_for_nodes(&server.1, nodes).await?;
    eprintln!("  {nodes} nodes joined in {seconds_to_join:.1}s");
    // Idle: every node heartbeating, nothing to place.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_server_cores = (cpu_seconds(pid) - before) / args.idle_seconds as f64;
    eprintln!("  idle: server {:.1}% of a core", idle_server_cores * 100.0);
    if running > 0 {
        let started = Instant::now();
        submit(&server.1, &task_spec(Some(3_600_000), "running"), running, args.batch, args.in_flight).await?;
        follow(&stats, running as u64, started, Duration::from_secs(900)).await?;
        eprintln!("  {running} long tasks running after {:.1}s", started.elapsed().as_secs_f64());
    }
    let base = starts(&stats);
    let client = bench_client();
    let scraped = Scrape::take(&client, &server.1).await.unwrap_or_default();
    let (server_before, sim_before) = (cpu_seconds(pid), cpu_seconds(sim.0.id()));
    let started = Instant::now();
    let spec = task_spec(None, "measure");
    let url = server.1.clone();
    let (total, batch, in_flight) = (args.tasks, args.batch, args.in_flight);
    let submitter = tokio::spawn(async move { submit(&url, &spec, total, batch, in_flight).await });
    let timeline = follow(&stats, base + args.tasks as u64, started, Duration::from_secs(900)).await?;
    submitter.await??;
    let seconds = timeline.last().map_or(1.0, |(t, _)| *t);
    let server_cores = (cpu_seconds(pid) - server_before) / seconds;
    let stages = Breakdown::between(&scraped, &Scrape::take(&client, &server.1).await.unwrap_or_default(), seconds);
    let sim_cores = (cpu_seconds(sim.0.id()) - sim_before) / seconds;
    let measure = Measure {
        server: if server_binary == binary { "this".into() } else { "baseline".into() },
        nodes,
        running,
        tasks: args.tasks,
        seconds_to_join,
        started_per_second: args.tasks as f64 / seconds,
        server_cores,
        sim_cores,
        idle_server_cores,
        server_rss_mib: rss_mib(pid),
        timeline: timeline.into_iter().map(|(t, n)| (t, n - base.min(n))).collect(),
        stages,
    };
    eprintln!(
        "  {:.0} tasks/s started; server {:.2} cores, simulator {:.2} cores, server RSS {:.0} MiB",
        measure.started_per_second, server_cores, sim_cores, measure.server_rss_mib
    );
    if let Some(stages) = &measure.stages {
        eprint!("{}", stages.render());
    }
    Ok((measure, server, sim, dir))
}

/// Submit→start at a steady `rate`: created_at to the attempt's start, read
/// from the server's database once the run is over.
async fn latency(url: &str, db: &Path, stats: &Path, rate: f64, seconds: u64) -> Result<Latency> {
    let base = starts(stats);
    let batch = ((rate / 10.0).round() as usize).max(1);
    let body = serde_json::to_string(&serde_json::json!({ "tasks": vec![task_spec(None, "latency"); batch] }))?;
    let client = bench_client();
    let every = Duration::from_secs_f64(batch as f64 / rate);
    let mut tick = tokio::time::interval(every);
    let ends = Instant::now() + Duration::from_secs(seconds);
    let mut sent = 0;
    while Instant::now() < ends {
        tick.tick().await;
        let response =
            client.post(format!("{url}/v1/tasks/batch")).header("content-type", "application/json").body(body.clone()).send().await?;
        if !response.status().is_success() {
            bail!("batch refused: {}", response.status());
        }
        sent += batch;
    }
    follow(stats, base + sent as u64, Instant::now(), Duration::from_secs(120)).await?;
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT a.started_at - t.created_at FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.number = 1 \
         JOIN task_labels l ON l.task_id = t.id AND l.key = 'phase' AND l.value = 'latency' WHERE a.started_at IS NOT NULL",
    )?;
    let mut waits: Vec<f64> = stmt.query_map([], |row| row.get::<_, i64>(0))?.filter_map(|r| r.ok()).map(|ms| ms as f64).collect();
    waits.sort_by(f64::total_cmp);
    if waits.is_empty() {
        bail!("no latency samples");
    }
    Ok(Latency {
        nodes: 0,
        rate,
        tasks: waits.len(),
        p50_ms: crate::cluster::percentile(&waits, 50.0),
        p99_ms: crate::cluster::percentile(&waits, 99.0),
        max_ms: waits.last().copied().unwrap_or(0.0),
    })
}

/// Lines of tasks started over time, one per measurement.
fn plot(measures: &[Measure]) -> String {
    let (w, h, left, bottom) = (760.0, 420.0, 70.0, 50.0);
    let max_t = measures.iter().flat_map(|m| m.timeline.iter().map(|p| p.0)).fold(1.0, f64::max);
    let max_n = measures.iter().flat_map(|m| m.timeline.iter().map(|p| p.1 as f64)).fold(1.0, f64::max);
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
    let x = |t: f64| left + t / max_t * (w - left - 20.0);
    let y = |n: f64| h - bottom - n / max_n * (h - bottom - 30.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Tasks started over time (shepherd-bench scale)</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"30\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds since the first submission</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">tasks started</text>\n",
        w / 2.0,
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom,
        (w + left) / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=4 {
        let (t, n) = (max_t * i as f64 / 4.0, max_n * i as f64 / 4.0);
        svg += &format!("<text x=\"{:.0}\" y=\"{}\" text-anchor=\"middle\">{t:.0}</text>\n", x(t), h - bottom + 16.0);
        svg += &format!("<text x=\"{}\" y=\"{:.0}\" text-anchor=\"end\">{n:.0}</text>\n", left - 6.0, y(n) + 4.0);
    }
    for (i, m) in measures.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = m.timeline.iter().map(|(t, n)| format!("{:.1},{:.1}", x(*t), y(*n as f64))).collect();
        svg += &format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n", points.join(" "));
        let label = format!("{} nodes, {} running: {:.0}/s", m.nodes, m.running, m.started_per_second);
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{label}</text>\n",
            left + 16.0 + (w - left - 40.0) * 0.45,
            h - bottom - 20.0 - 16.0 * i as f64
        );
    }
    svg + "</svg>\n"
}

pub async fn run(args: Args) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd.clone())?;
    let mut measures = Vec::new();
    let mut latency_result = None;
    let largest = args.nodes.iter().copied().max().unwrap_or(0);
    let mut baselines = Vec::new();
    for &nodes in &args.nodes {
        if let Some(baseline) = args.baseline.as_ref().filter(|_| nodes <= args.baseline_max_nodes) {
            eprintln!("scale (baseline {}): {nodes} nodes, nothing running", baseline.display());
            baselines.push(measure(&binary, baseline, &args, nodes, 0).await?.0);
        }
        eprintln!("scale: {nodes} nodes, nothing running");
        let (measure, server, _sim, dir) = measure(&binary, &binary, &args, nodes, 0).await?;
        if nodes == args.latency_nodes {
            let rate = measure.started_per_second / 2.0;
            eprintln!("  latency at {rate:.0} tasks/s for {}s", args.latency_seconds);
            let db = dir.path().join("server").join("shepherd.db");
            let mut l = latency(&server.1, &db, &dir.path().join("sim.json"), rate, args.latency_seconds).await?;
            l.nodes = nodes;
            eprintln!("  submit→start p50 {:.0} ms, p99 {:.0} ms over {} tasks", l.p50_ms, l.p99_ms, l.tasks);
            latency_result = Some(l);
        }
        measures.push(measure);
    }
    for &running in args.running.iter().filter(|r| **r > 0) {
        eprintln!("scale: {largest} nodes, {running} running");
        let (measure, _server, _sim, _dir) = measure(&binary, &binary, &args, largest, running).await?;
        measures.push(measure);
    }
    println!("| nodes | running | tasks/s started | server cores | simulator cores | idle server (heartbeats) | server RSS |");
    println!("|---|---|---|---|---|---|---|");
    for m in &measures {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1}% of a core | {:.0} MiB |",
            m.nodes,
            m.running,
            m.started_per_second,
            m.server_cores,
            m.sim_cores,
            m.idle_server_cores * 100.0,
            m.server_rss_mib
        );
    }
    if !baselines.is_empty() {
        println!("\n| nodes | baseline tasks/s | this version tasks/s | ratio |");
        println!("|---|---|---|---|");
        for b in &baselines {
            if let Some(m) = measures.iter().find(|m| m.nodes == b.nodes && m.running == 0) {
                println!(
                    "| {} | {:.0} | {:.0} | {:.2}× |",
                    b.nodes,
                    b.started_per_second,
                    m.started_per_second,
                    m.started_per_second / b.started_per_second
                );
            }
        }
    }
    if let Some(l) = &latency_result {
        println!(
            "\nsubmit→start at {:.0} tasks/s on {} nodes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} tasks)",
            l.rate, l.nodes, l.p50_ms, l.p99_ms, l.max_ms, l.tasks
        );
    }
    if let Some(path) = &args.json {
        let record = serde_json::json!({ "measures": measures, "baselines": baselines, "latency": latency_result });
        std::fs::write(path, serde_json::to_string_pretty(&record)?)?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, plot(&measures))?;
    }
    Ok(())
}

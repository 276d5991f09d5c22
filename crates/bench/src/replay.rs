//! `replay`: how long `shepherd simulate --history` takes on a long, large
//! history (issue 31: a week of 10 million tasks on 5,000 nodes should
//! replay in minutes). A synthetic history (three projects, arrivals over
//! the span with a daily swing, exponential run times for about 60% of the
//! CPU on average, or `--load`) is written as JSON Lines, then replayed from the file
//! as the CLI does. Baseline in the same run: reading and checking every
//! line of the same file without replaying it (the floor any replay pays).
//! Peak memory is reported: the replay streams, so it must not grow with
//! the history.

use anyhow::{Context, Result};
use serde_json::json;
use shepherd_core::history::*;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Tasks in the history.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Nodes (16 cores, 64 GiB each, three zones).
    #[arg(long, default_value_t = 5000)]
    nodes: u32,
    /// Days the history spans.
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// CPU the tasks ask for, on average, as a share of the cluster's
    /// (0.6: uncontended; above 1, with the daily swing, the queue grows
    /// through each day's peak and drains after: a contended week).
    #[arg(long, default_value_t = 0.6)]
    load: f64,
    /// Where the history file goes (default: a temporary file, removed after).
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

fn write_history(path: &std::path::Path, args: &Args) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let span_ms = (args.days * 86_400_000.0) as i64;
    let header = HistoryRecord::Header(HistoryHeader { version: VERSION, from: 0, to: span_ms, projects: Vec::new() });
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    for i in 0..args.nodes {
        let labels = [("zone".to_string(), format!("z{}", i % 3))].into();
        let node = NodeRecord {
            node: format!("n{i:05}"),
            at: -1,
            state: NodeHistoryState::Ready,
            cpu: 16_000,
            memory: 65_536,
            gpus: 0,
            max_tasks: 0,
            labels,
        };
        writeln!(out, "{}", serde_json::to_string(&HistoryRecord::Node(node))?)?;
    }
    // Mean run time for `load` of the cores on average.
    let cores = f64::from(args.nodes) * 16.0;
    let mean_ms = args.load * cores * span_ms as f64 / args.tasks as f64;
    let mut state = 42u64;
    let mut unit = move || {
        state = shepherd_sched::rng::mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let step = span_ms as f64 / args.tasks as f64;
    let mut last_at = 0i64;
    for k in 0..args.tasks {
        // A daily swing of ±50% around the mean rate: the k-th arrival is
        // where the rate's integral, t + (1 - cos ωt) / 2ω, reaches k steps.
        let omega = 2.0 * std::f64::consts::PI / 86_400_000.0;
        let target = k as f64 * step;
        let mut t = target;
        for _ in 0..8 {
            let f = t + (1.0 - (omega * t).cos()) / (2.0 * omega) - target;
            t -= f / (1.0 + 0.5 * (omega * t).sin());
        }
        let at = (t.clamp(0.0, span_ms as f64) as i64).max(last_at);
        last_at = at;
        let run = ((-mean_ms * (1.0 - unit()).max(1e-12).ln()) as i64).clamp(1_000, 24 * 3_600_000);
        let project = ["etl", "ml", "web"][(unit() * 3.0) as usize % 3];
        let node = format!("n{:05}", (unit() * f64::from(args.nodes)) as u32 % args.nodes);
        let task = json!({"kind": "task", "project": project, "at": at, "cpu": 1000, "memory": 2048,
            "attempts": [{"node": node, "placed": at + 50, "ended": at + 50 + run, "outcome": "succeeded"}]});
        writeln!(out, "{task}")?;
    }
    out.flush()?;
    Ok(())
}

fn lines(path: &std::path::Path) -> Result<impl Iterator<Item = Result<HistoryRecord, HistoryError>>> {
    let file = std::fs::File::open(path)?;
    Ok(shepherd_sim::read_history(std::io::BufReader::with_capacity(1 << 20, file)))
}

pub fn run(args: Args) -> Result<()> {
    let path =
        args.file.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("shepherd-replay-bench-{}.jsonl", std::process::id())));
    eprintln!("writing a history of {} tasks on {} nodes over {} days to {}", args.tasks, args.nodes, args.days, path.display());
    let started = Instant::now();
    write_history(&path, &args)?;
    let bytes = std::fs::metadata(&path)?.len();
    eprintln!("  written in {:.1} s ({:.0} MiB)", started.elapsed().as_secs_f64(), bytes as f64 / 1048576.0);
    // Baseline: read and check every line, nothing more.
    let started = Instant::now();
    let mut count = 0u64;
    for record in lines(&path)? {
        record.map_err(|e| anyhow::anyhow!(e.0))?;
        count += 1;
    }
    let read_seconds = started.elapsed().as_secs_f64();
    eprintln!("  read and checked {count} lines in {read_seconds:.1} s");
    let engine = shepherd_sched::Engine::default();
    let started = Instant::now();
    let report = shepherd_sim::replay(&engine, lines(&path)?, &shepherd_sim::ReplayConfig::default()).map_err(|e| anyhow::anyhow!(e.0))?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    println!(
        "replay of {} tasks on {} nodes over {} days: {:.1} s ({:.0} tasks/s); reading and checking the file alone: {:.1} s ({:.1}x of it); \
         peak memory {:.0} MiB for a {:.0} MiB file",
        args.tasks,
        args.nodes,
        args.days,
        replay_seconds,
        args.tasks as f64 / replay_seconds,
        read_seconds,
        replay_seconds / read_seconds.max(1e-9),
        rss,
        bytes as f64 / 1048576.0
    );
    println!(
        "  placed {}, mean CPU allocated: history {:.1}%, replay {:.1}%, decisions {}",
        report.replay.placed,
        report.real.mean_cpu_utilization * 100.0,
        report.replay.mean_cpu_utilization * 100.0,
        report.replay.decisions
    );
    if let Some(out) = &args.json {
        let value = json!({"tasks": args.tasks, "nodes": args.nodes, "days": args.days, "load": args.load, "file_bytes": bytes,
            "replay_seconds": replay_seconds, "read_seconds": read_seconds, "peak_rss_mib": rss,
            "placed": report.replay.placed, "decisions": report.replay.decisions,
            "real_mean_cpu": report.real.mean_cpu_utilization, "replay_mean_cpu": report.replay.mean_cpu_utilization});
        std::fs::write(out, serde_json::to_string_pretty(&value)?)?;
    }
    if args.file.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

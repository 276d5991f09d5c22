//! `shepherd nodesim` (hidden): joins many simulated nodes to a server over
//! the real agent protocol, for benchmarks and scale tests.

use crate::node::{stop_signal, JoinFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use shepherd_agent::sim::{Churn, Fleet, SimConfig};
use shepherd_core::Resources;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct NodesimArgs {
    #[command(flatten)]
    join: JoinFlags,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Node ids are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Each node's CPU in millicores.
    #[arg(long, default_value_t = 4000)]
    cpu: u32,
    /// Each node's memory in MiB.
    #[arg(long, default_value_t = 8192)]
    memory: u32,
    /// Attempts each node runs at once at most.
    #[arg(long, default_value_t = 64)]
    max_tasks: u32,
    /// A node label (repeatable): KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Simulated run time in milliseconds, or a range MIN..MAX drawn
    /// uniformly (a task's label nodesim.run_ms overrides it).
    #[arg(long, default_value = "100..500")]
    run_ms: String,
    /// Heartbeat interval of every node.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// A node's events wait this long to travel in one request.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// Freeze the first K nodes AFTER the whole fleet joined, for PAUSE, then reconnect: K@AFTER+PAUSE.
    #[arg(long, value_parser = Churn::parse)]
    churn: Option<Churn>,
    /// Write the fleet's counters here (JSON) four times a second and when
    /// stopped; with --record-exits, the last write lists every task whose
    /// exit the server accepted.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Keep every accepted exit's task id for --stats.
    #[arg(long)]
    record_exits: bool,
}

fn parse_run_ms(text: &str) -> Result<(u64, u64)> {
    let parse = |s: &str| s.trim().parse::<u64>().with_context(|| format!("--run-ms `{text}`: give MS or MIN..MAX"));
    match text.split_once("..") {
        Some((low, high)) => {
            let (low, high) = (parse(low)?, parse(high)?);
            if high < low {
                bail!("--run-ms `{text}`: MIN is above MAX");
            }
            Ok((low, high))
        }
        None => {
            let ms = parse(text)?;
            Ok((ms, ms))
        }
    }
}

pub async fn nodesim(args: NodesimArgs) -> Result<ExitCode> {
    let (servers, join_token) = args.join.resolve("nodesim")?;
    let [server] = &servers[..] else { bail!("--join: shepherd nodesim joins one server") };
    if args.nodes == 0 {
        bail!("--nodes: at least 1");
    }
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=') else { bail!("--label `{label}`: expected KEY=VALUE") };
        labels.insert(key.to_string(), value.to_string());
    }
    crate::host::raise_fd_limit();
    let config = SimConfig {
        server: server.trim_end_matches('/').to_string(),
        join_token,
        nodes: args.nodes,
        prefix: args.prefix.clone(),
        capacity: Resources { cpu_millicores: args.cpu, memory_mib: args.memory },
        max_tasks: args.max_tasks,
        labels,
        run_ms: parse_run_ms(&args.run_ms)?,
        heartbeat: args.heartbeat,
        report_every: args.report_every,
        churn: args.churn,
        registering: 64,
    };
    let fleet = Fleet::new(config, args.record_exits).context("setting up the HTTP client")?;
    let stats = fleet.stats();
    println!("shepherd nodesim: {} nodes joining {server}", args.nodes);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let progress = {
        let stats = stats.clone();
        let nodes = args.nodes;
        let path = args.stats.clone();
        tokio::spawn(async move {
            for tick in 1u64.. {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let mut r = stats.report(nodes);
                // The counters so far, for a benchmark to follow (written whole, then renamed).
                if let Some(path) = &path {
                    r.exited.clear();
                    let partial = path.with_extension("partial");
                    if let Ok(text) = serde_json::to_string(&r) {
                        if std::fs::write(&partial, text).is_ok() {
                            let _ = std::fs::rename(&partial, path);
                        }
                    }
                }
                if tick % 20 != 0 {
                    continue;
                }
                tracing::info!(
                    registrations = r.registrations,
                    assignments = r.assignments,
                    starts = r.starts_accepted,
                    exits = r.exits_accepted,
                    refused = r.refused,
                    errors = r.request_errors,
                    "fleet"
                );
            }
        })
    };
    fleet.run(stop_signal()).await;
    progress.abort();
    // Wait for the writer to stop: aborted between its write and its rename,
    // it would replace the final report (with its exits) by a partial one.
    let _ = progress.await;
    let report = stats.report(args.nodes);
    if let Some(path) = &args.stats {
        let text = serde_json::to_string(&report).context("encoding the stats")?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "shepherd nodesim: stopped; {} assignments, {} starts and {} exits accepted, {} refused",
        report.assignments, report.starts_accepted, report.exits_accepted, report.refused
    );
    Ok(ExitCode::SUCCESS)
}

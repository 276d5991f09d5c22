//! `shepherd simulate`: compare placement profiles offline on a workload,
//! or replay the cluster's own history (`--history FILE`, `--from-history`)
//! under other settings beside what really happened.

use anyhow::{bail, Context, Result};
use clap::Args;
use shepherd_sched::{Engine, SchedulerConfig};
use shepherd_sim::{
    generate, parse_workload, replay, report, simulate, svg, GeneratorConfig, Overlay, ReplayConfig, ReplayReport, SimConfig,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct SimulateArgs {
    /// Workload file: JSON Lines or CSV (see docs/scheduling.md). Default: generate one.
    #[arg(long, conflicts_with_all = ["history", "from_history"])]
    workload: Option<PathBuf>,
    /// Replay a history file (`shepherd history export`) beside what really happened.
    #[arg(long, conflicts_with = "from_history")]
    history: Option<PathBuf>,
    /// Replay the server's own history (admin; the window below) beside what really happened.
    #[arg(long)]
    from_history: bool,
    #[command(flatten)]
    window: crate::cmd_history::Window,
    /// A replay's changes to try (TOML): `remove_nodes = ["id"]`,
    /// `[scale_pools] gpu = 0.5`, `[[add_nodes]] count = 10, cpu = 16000, memory = 65536`,
    /// `[quotas.PROJECT] max_running = 20`, `[autoscale.POOL] max = 10, idle_seconds = 60`
    /// (the replay scales that pool itself; see docs/replay.md).
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// A replay places every task with this profile (default: each task's own, else its project's).
    #[arg(long)]
    profile: Option<String>,
    /// Tasks to generate when no workload is given.
    #[arg(long, default_value_t = 5000)]
    generate: usize,
    /// Generated arrivals are spread over this many seconds.
    #[arg(long, default_value_t = 300.0)]
    arrival_seconds: f64,
    /// Mean run time of generated tasks, seconds.
    #[arg(long, default_value_t = 60.0)]
    mean_duration: f64,
    /// Share of generated tasks with a region constraint.
    #[arg(long, default_value_t = 0.2)]
    constrained: f64,
    /// Simulated nodes (regions eu, us, ap; zones REGION-0..2).
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// CPU of each node, millicores.
    #[arg(long, default_value_t = 16_000)]
    node_cpu: u32,
    /// Memory of each node, MiB.
    #[arg(long, default_value_t = 65_536)]
    node_memory: u32,
    /// How many of the nodes have GPUs (the first ones).
    #[arg(long, default_value_t = 0)]
    gpu_nodes: usize,
    /// GPUs on each GPU node (tasks ask with `"gpus": N` in the workload).
    #[arg(long, default_value_t = 0)]
    node_gpus: u32,
    /// Profiles to compare, side by side.
    #[arg(long, value_delimiter = ',', default_value = "spread,binpack,random")]
    profiles: Vec<String>,
    /// Extra profiles (TOML), as for `shepherd up --scheduler-config`.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Virtual seconds between scheduling passes (default 1; 0.05 for a replay).
    #[arg(long)]
    tick: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the plot.
    #[arg(long, default_value = "simulation.svg")]
    plot: PathBuf,
    /// Also write the full results (with time series) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn simulate_cmd(client: impl FnOnce() -> Result<crate::client::Client>, args: SimulateArgs) -> Result<ExitCode> {
    if args.history.is_some() || args.from_history {
        return replay_cmd(client, args).await;
    }
    tokio::task::block_in_place(|| workload_cmd(args))
}

fn workload_cmd(args: SimulateArgs) -> Result<ExitCode> {
    let tick = args.tick.unwrap_or(1.0);
    // The same engine a server makes of the file, run-time plugins included.
    let loaded = match &args.scheduler_config {
        Some(path) => Some(shepherd_plugins::load_file(path).with_context(|| format!("scheduler config {}", path.display()))?),
        None => None,
    };
    let plugins = loaded.as_ref().map(|l| l.plugins.clone()).unwrap_or_default();
    let engine = match loaded {
        Some(loaded) => loaded.engine,
        None => Engine::new(&SchedulerConfig::default())?,
    };
    for profile in &args.profiles {
        if !engine.has_profile(profile) {
            bail!("--profiles: unknown profile `{profile}`; known: {}", engine.profile_names().join(", "));
        }
    }
    if args.nodes == 0 || tick.is_nan() || tick <= 0.0 {
        bail!("--nodes and --tick must be positive");
    }
    let workload = match &args.workload {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_workload(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => generate(&GeneratorConfig {
            tasks: args.generate,
            arrival_seconds: args.arrival_seconds,
            mean_duration: args.mean_duration,
            constrained: args.constrained,
            seed: args.seed,
        }),
    };
    let sim = SimConfig {
        nodes: args.nodes,
        node_cpu: args.node_cpu,
        node_memory: args.node_memory,
        tick_seconds: tick,
        seed: args.seed,
        gpu_nodes: args.gpu_nodes,
        node_gpus: args.node_gpus,
    };
    eprintln!("simulating {} tasks on {} nodes ({} m CPU, {} MiB each)", workload.len(), args.nodes, args.node_cpu, args.node_memory);
    let mut reports = Vec::new();
    for (i, profile) in args.profiles.iter().enumerate() {
        let started = std::time::Instant::now();
        eprint!("  [{}/{}] {profile} ... ", i + 1, args.profiles.len());
        let report = simulate(&engine, profile, &workload, &sim);
        eprintln!("done in {:.1}s (virtual makespan {:.0}s)", started.elapsed().as_secs_f64(), report.makespan_seconds);
        reports.push(report);
    }
    println!();
    print!("{}", report::table(&reports));
    if !plugins.is_empty() {
        println!("\n| plugin | kind | state | calls | nodes per call | µs per call | failures |\n|---|---|---|---|---|---|---|");
        for p in plugins.iter().map(|h| h.status()) {
            let per = |x: f64| if p.calls == 0 { 0.0 } else { x / p.calls as f64 };
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {}{} |",
                p.name,
                p.kind,
                p.state,
                p.calls,
                per(p.nodes as f64),
                per(p.seconds * 1e6),
                p.failures,
                p.last_error.map(|e| format!(" (last: {e})")).unwrap_or_default()
            );
        }
    }
    let title = format!("{} tasks on {} nodes, profiles {}", workload.len(), args.nodes, args.profiles.join(", "));
    std::fs::write(&args.plot, svg::plot(&reports, &title)).with_context(|| format!("writing {}", args.plot.display()))?;
    println!("\nplot: {}", args.plot.display());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?).with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine of `--scheduler-config` (or the default one).
fn engine_of(path: Option<&std::path::Path>) -> Result<Engine> {
    match path {
        Some(path) => Ok(shepherd_plugins::load_file(path).with_context(|| format!("scheduler config {}", path.display()))?.engine),
        None => Ok(Engine::new(&SchedulerConfig::default())?),
    }
}

/// `--history FILE` / `--from-history`: the replay beside the real run.
async fn replay_cmd(client: impl FnOnce() -> Result<crate::client::Client>, args: SimulateArgs) -> Result<ExitCode> {
    let engine = engine_of(args.scheduler_config.as_deref())?;
    if let Some(profile) = &args.profile {
        if !engine.has_profile(profile) {
            bail!("--profile: unknown profile `{profile}`; known: {}", engine.profile_names().join(", "));
        }
    }
    let tick = args.tick.unwrap_or(0.05);
    if tick.is_nan() || tick <= 0.0 {
        bail!("--tick must be positive");
    }
    let overlay: Overlay = match &args.overlay {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("overlay {}", path.display()))?
        }
        None => Overlay::default(),
    };
    // The server's history goes to a file first: the replay reads it as a stream.
    let (path, _keep) = match (&args.history, args.from_history) {
        (Some(path), _) => (path.clone(), None),
        (None, _) => {
            let path = std::env::temp_dir().join(format!(
                "shepherd-history-{}-{}.jsonl",
                std::process::id(),
                shepherd_core::Timestamp::now().millis()
            ));
            let keep = Removed(path.clone());
            let mut out =
                std::io::BufWriter::new(std::fs::File::create_new(&path).with_context(|| format!("creating {}", path.display()))?);
            let lines = crate::cmd_history::download(&client()?, &args.window, &mut out).await?;
            eprintln!("history: {lines} lines from the server");
            (path, Some(keep))
        }
    };
    let same_settings = args.scheduler_config.is_none() && args.overlay.is_none() && args.profile.is_none();
    let config = ReplayConfig { tick_seconds: tick, seed: args.seed, profile: args.profile.clone(), overlay, ..Default::default() };
    let report = tokio::task::block_in_place(|| -> Result<ReplayReport> {
        let file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let records = shepherd_sim::read_history(std::io::BufReader::with_capacity(1 << 20, file));
        replay(&engine, records, &config).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.0))
    })?;
    print!("{}", shepherd_sim::replay::table(&report, same_settings));
    let title = format!("replay of {} tasks on {} nodes beside what happened", report.real.tasks, report.replay_nodes);
    std::fs::write(&args.plot, svg::plot(&[report.real.clone(), report.replay.clone()], &title))
        .with_context(|| format!("writing {}", args.plot.display()))?;
    println!("\nplot: {}", args.plot.display());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A file removed when this goes out of scope.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

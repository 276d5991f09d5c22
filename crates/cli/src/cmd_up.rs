//! `shepherd up`: the all-in-one cluster in the foreground.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use shepherd_agent::{DockerConfig, DockerDriver, Driver, LogLimits, ProcessDriver};
use shepherd_core::{Limits, Resources};
use shepherd_server::{Cluster, ClusterConfig, LocalNodeConfig};
use shepherd_store::Synchronous;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverName {
    /// `docker` when a Docker Engine answers, else `process`.
    Auto,
    /// Every task a hardened container on the local Docker Engine.
    Docker,
    /// Commands run as host processes; the image is recorded only.
    Process,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SyncMode {
    /// fsync every commit: acknowledged tasks survive power loss.
    Full,
    /// fsync at checkpoints: acknowledged tasks survive a crash of the process, not of the machine.
    Normal,
}

#[derive(Args)]
pub struct UpArgs {
    /// Address the API listens on (port 0 picks a free one).
    #[arg(long, env = "SHEPHERD_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the SQLite database, node id and attempt directories live.
    #[arg(long, env = "SHEPHERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How the local agent runs tasks.
    #[arg(long, value_enum, default_value = "auto")]
    driver: DriverName,
    /// Placement profiles and per-project settings (TOML; see docs/scheduling.md).
    #[arg(long, env = "SHEPHERD_SCHEDULER_CONFIG")]
    scheduler_config: Option<PathBuf>,
    /// Most processes in one task's container (docker driver).
    #[arg(long, default_value_t = 256)]
    pids_limit: i64,
    /// CPU the local node offers, in millicores (default: all cores).
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory the local node offers, in MiB (default: all of it).
    #[arg(long)]
    memory: Option<u32>,
    /// Most tasks running at once on the local node.
    #[arg(long, default_value_t = 256)]
    max_tasks: u32,
    /// A label of the local node, KEY=VALUE (repeatable); constraints match node.labels.KEY.
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    node_labels: Vec<String>,
    /// Run the API and scheduler only, with no local agent (tasks stay queued).
    #[arg(long)]
    no_agent: bool,
    /// Durability of the embedded store.
    #[arg(long, value_enum, default_value = "full")]
    sync: SyncMode,
    /// Output kept from the start of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    log_head_bytes: usize,
    /// Output kept from the end of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    log_tail_bytes: usize,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: std::time::Duration,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share").into_os_string())) {
        Some(base) => PathBuf::from(base).join("shepherd"),
        None => PathBuf::from(".shepherd"),
    }
}

fn host_memory_mib() -> u32 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| (kib / 1024).min(u64::from(u32::MAX)) as u32)
        .unwrap_or(1024)
}

/// Picks the driver; says why.
async fn choose_driver(wanted: DriverName, node_id: &str, pids_limit: i64) -> Result<(Arc<dyn Driver>, String)> {
    let docker = || DockerDriver::connect(DockerConfig { node_id: node_id.to_string(), pids_limit, tmp_size_mib: 64 });
    match wanted {
        DriverName::Process => Ok((Arc::new(ProcessDriver), "chosen with --driver process: commands run on this host; the image is recorded only".into())),
        DriverName::Docker => match docker().await {
            Ok(driver) => Ok((Arc::new(driver), "chosen with --driver docker: every task a hardened container".into())),
            Err(e) => bail!("--driver docker: {e}"),
        },
        DriverName::Auto => match docker().await {
            Ok(driver) => Ok((Arc::new(driver), "a Docker Engine answered: every task a hardened container".into())),
            Err(e) => Ok((Arc::new(ProcessDriver), format!("no Docker Engine ({e}): commands run on this host; the image is recorded only"))),
        },
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

pub async fn up(args: UpArgs) -> Result<ExitCode> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut labels = BTreeMap::new();
    for label in &args.node_labels {
        let Some((key, value)) = label.split_once('=') else { bail!("--node-label `{label}`: use KEY=VALUE") };
        labels.insert(key.to_string(), value.to_string());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let capacity = Resources { cpu_millicores: args.cpu.unwrap_or(cores * 1000), memory_mib: args.memory.unwrap_or_else(host_memory_mib) };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let node_id = shepherd_server::local_node_id(&data_dir).context("reading the node id")?;
    let (driver, why) = choose_driver(args.driver, &node_id, args.pids_limit).await?;
    let scheduler = match &args.scheduler_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            shepherd_sched::SchedulerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => shepherd_sched::SchedulerConfig::default(),
    };
    let engine = Arc::new(shepherd_sched::Engine::new(&scheduler).with_context(|| "scheduler config")?);
    let profiles = engine.profile_names().join(", ");
    let config = ClusterConfig {
        engine,
        listen: args.listen,
        data_dir: data_dir.clone(),
        synchronous: match args.sync {
            SyncMode::Full => Synchronous::Full,
            SyncMode::Normal => Synchronous::Normal,
        },
        limits: Limits::default(),
        local_node: (!args.no_agent).then(|| LocalNodeConfig {
            capacity,
            max_tasks: args.max_tasks,
            labels,
            log_limits: LogLimits { head_bytes: args.log_head_bytes, tail_bytes: args.log_tail_bytes },
            stop_grace: args.stop_grace,
        }),
    };
    let cluster = Cluster::start(config, driver).await.context("cannot start the cluster")?;
    let url = format!("http://{}", cluster.addr());
    println!("shepherd: API listening on {url}");
    println!("  data:    {} (embedded SQLite)", data_dir.display());
    match (cluster.node_id(), cluster.driver()) {
        (Some(node), Some(driver)) => {
            println!("  node:    {node}, driver `{driver}`, {} millicores, {} MiB, up to {} tasks", capacity.cpu_millicores, capacity.memory_mib, args.max_tasks);
            println!("           ({why})");
        }
        _ => println!("  node:    none (--no-agent): tasks are accepted and stay queued"),
    }
    println!("  profiles: {profiles}");
    println!("  openapi: {url}/v1/openapi.json");
    println!();
    if args.listen.to_string() != super::client::DEFAULT_SERVER.trim_start_matches("http://") {
        println!("Point the CLI here:  export SHEPHERD_SERVER={url}");
    }
    println!("Submit a task:       shepherd run --wait busybox -- echo hello");
    println!("Stop with Ctrl-C; queued and running tasks resume on the next start.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    stop_signal().await;
    println!("shepherd: stopping");
    cluster.shutdown().await;
    println!("shepherd: stopped");
    Ok(ExitCode::SUCCESS)
}

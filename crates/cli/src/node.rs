//! What `up` and `agent` share: a node's flags, the driver it runs, its
//! data directory, the signals that stop it, and what a stop left behind.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use shepherd_agent::{DockerConfig, DockerDriver, Driver, ProcessDriver};
use shepherd_core::Resources;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverName {
    /// `docker` when a Docker Engine answers, else `process`.
    Auto,
    /// Every task a hardened container on the local Docker Engine.
    Docker,
    /// Commands run as host processes; the image is recorded only.
    Process,
}

/// Flags of a node (`up` and `agent`).
#[derive(Args)]
pub struct NodeFlags {
    /// How tasks run.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) driver: DriverName,
    /// Most processes in one task's container (docker driver); at least 1 (tasks cannot turn it off).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(i64).range(1..))]
    pub(crate) pids_limit: i64,
    /// CPU the node offers, in millicores (default: all cores).
    #[arg(long)]
    pub(crate) cpu: Option<u32>,
    /// Memory the node offers, in MiB (default: all of it).
    #[arg(long)]
    pub(crate) memory: Option<u32>,
    /// Most tasks running at once on the node.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tasks: u32,
    /// A label of the node, KEY=VALUE (repeatable); constraints match node.labels.KEY; `pool` sets its pool.
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub(crate) node_labels: Vec<String>,
    /// Dedicate this node to these projects (comma-separated): no other project's task lands here.
    #[arg(long, value_name = "PROJECT,...")]
    pub(crate) dedicated_to: Option<String>,
    /// Output kept from the start of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(crate) log_head_bytes: usize,
    /// Output kept from the end of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(crate) log_tail_bytes: usize,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) stop_grace: Duration,
    /// On Ctrl-C or SIGTERM, stop running task containers too (they run again
    /// on the next start) instead of leaving them running for adoption.
    #[arg(long)]
    pub(crate) stop_tasks: bool,
    /// Most warm containers per task key (tasks with `reuse`; docker driver);
    /// 0 runs every task cold.
    #[arg(long, default_value_t = 8)]
    pub(crate) warm_max: usize,
    /// Every start of an image that a project pulled with its registry
    /// login pulls it again with the starting task's own login, so the
    /// registry decides each time (like Kubernetes' AlwaysPullImages).
    /// Without it, such an image is still never run by another project
    /// until that project pulled it itself.
    #[arg(long)]
    pub(crate) verify_images: bool,
    /// Most warm containers of one project on this node, busy or idle,
    /// across its keys (its longest idle one makes room for a new key).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) warm_max_per_project: u64,
    /// A host device the node offers its tasks, HOST[:CONTAINER] under /dev
    /// (repeatable): a task asks for it by the host path's file name
    /// (`--device /dev/fuse` is `fuse`) in `devices`, if its project may.
    #[arg(long = "device", value_name = "HOST[:CONTAINER]", value_parser = parse_device)]
    pub(crate) devices: Vec<shepherd_agent::driver::devices::HostDevice>,
    /// GPUs the node offers (docker driver; NVIDIA's container toolkit on
    /// the host): granted to tasks by index through the engine's device
    /// requests, each GPU to one task at a time.
    #[arg(long, default_value_t = 0)]
    pub(crate) gpus: u32,
    /// Remove images this node pulled that no task used for
    /// --image-cleanup-unused once the engine's images take more than this
    /// (e.g. 20GiB, 512MiB; `off`: never). Images it did not pull, and
    /// images its attempts need, are never removed.
    #[arg(long, default_value = "20GiB", value_name = "SIZE|off", value_parser = parse_cleanup_size)]
    pub(crate) image_cleanup_above: CleanupAbove,
    /// How long no task of this node used a pulled image before the cleanup may remove it.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) image_cleanup_unused: Duration,
    /// How often the image cleanup looks (at least 1s).
    #[arg(long, default_value = "60s", value_parser = parse_cleanup_every)]
    pub(crate) image_cleanup_every: Duration,
    /// Let every attempt that misses its image pull it itself instead of
    /// waiting for one pull per image (benchmarks of the dedup only).
    #[arg(long, hide = true)]
    pub(crate) no_pull_dedup: bool,
    /// The statically linked `shepherd-runner` that warm containers run
    /// (default: $SHEPHERD_RUNNER, else `shepherd-runner` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub(crate) runner: Option<PathBuf>,
}

impl NodeFlags {
    /// How often the image cleanup runs, if it is on.
    pub(crate) fn image_cleanup_every(&self) -> Option<Duration> {
        self.image_cleanup_above.0.map(|_| self.image_cleanup_every)
    }
}

/// `--image-cleanup-every`: a duration of at least a second.
fn parse_cleanup_every(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if every < Duration::from_secs(1) {
        return Err(format!("`{text}`: at least 1s"));
    }
    Ok(every)
}

/// `--image-cleanup-above`: bytes, or `None` for `off`.
#[derive(Debug, Clone, Copy)]
pub struct CleanupAbove(pub Option<u64>);

/// `--image-cleanup-above`: a size in bytes (B, KiB, MiB, GiB, TiB, or
/// KB/MB/GB/TB as powers of 1000), or `off`.
fn parse_cleanup_size(text: &str) -> Result<CleanupAbove, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(CleanupAbove(None));
    }
    parse_size(text).map(|bytes| CleanupAbove(Some(bytes)))
}

/// A size in bytes: a number with an optional unit (B, KiB, MiB, GiB, TiB;
/// KB, MB, GB, TB as powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}`: give a size such as 512MiB or 20GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("`{text}`: too large"))
}

/// Whether `path` is an ELF executable without a program interpreter (a
/// static binary, which runs in images without a libc).
fn is_static_elf(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let read = |at: usize, len: usize| bytes.get(at..at + len);
    let u16_at = |at| read(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at| read(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at = |at| read(at, 8).and_then(|b| b.try_into().ok()).map(|b: [u8; 8]| u64::from_le_bytes(b) as usize);
    // 64-bit little-endian ELF only (the targets Shepherd builds for).
    if read(0, 6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|kind| kind != 3 /* PT_INTERP */))
}

/// How to build the static runner, for the messages that miss it.
const BUILD_RUNNER: &str =
    "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p shepherd-runner --target x86_64-unknown-linux-gnu";

/// Where the static runner may be: `--runner` or `$SHEPHERD_RUNNER` when
/// given (only there); else next to this binary, then where the static
/// build puts it beside a `target/release` binary
/// (`target/x86_64-unknown-linux-gnu/release/`).
fn runner_candidates(flags: &NodeFlags) -> (Vec<PathBuf>, bool) {
    if let Some(explicit) = flags.runner.clone().or_else(|| std::env::var_os("SHEPHERD_RUNNER").map(PathBuf::from)) {
        return (vec![explicit], true);
    }
    let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)) else { return (Vec::new(), false) };
    let mut candidates = vec![dir.join("shepherd-runner")];
    if let Some(target) = dir.parent() {
        candidates.push(target.join("x86_64-unknown-linux-gnu").join(dir.file_name().unwrap_or_default()).join("shepherd-runner"));
    }
    (candidates, false)
}

/// The warm-container settings of the docker driver (`None`: every task
/// cold, without a static runner) and what to say of them on the banner.
fn warm_config(flags: &NodeFlags) -> (Option<shepherd_agent::driver::warm::WarmConfig>, String) {
    if flags.warm_max == 0 {
        return (None, "off (--warm-max 0): tasks with reuse run cold".into());
    }
    let (candidates, explicit) = runner_candidates(flags);
    let mut dynamic = None;
    for candidate in &candidates {
        match candidate.canonicalize() {
            Ok(path) if is_static_elf(&path) => {
                let config = shepherd_agent::driver::warm::WarmConfig {
                    runner: path.clone(),
                    max_per_key: flags.warm_max,
                    max_per_project: flags.warm_max_per_project as usize,
                };
                return (Some(config), format!("on, up to {} per task key (runner {})", flags.warm_max, path.display()));
            }
            Ok(path) => dynamic = dynamic.or(Some(path)),
            Err(_) => {}
        }
    }
    let why = match (dynamic, explicit) {
        (Some(path), _) => format!("{} is not a static binary", path.display()),
        (None, true) => format!("no runner at {}", candidates.first().map(|p| p.display().to_string()).unwrap_or_default()),
        (None, false) => "no static shepherd-runner next to this binary".into(),
    };
    tracing::warn!("{why}: warm containers are off, tasks with reuse run cold");
    (None, format!("OFF: {why}, so tasks with reuse run cold; build it with\n           {BUILD_RUNNER}"))
}

/// `$XDG_DATA_HOME/shepherd`, else `~/.local/share/shepherd`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share").into_os_string()))
    {
        Some(base) => PathBuf::from(base).join("shepherd"),
        None => PathBuf::from(".shepherd"),
    }
}

pub fn host_memory_mib() -> u32 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| (kib / 1024).min(u64::from(u32::MAX)) as u32)
        .unwrap_or(1024)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// Picks the driver; says why.
pub async fn choose_driver(flags: &NodeFlags, node_id: &str, data_dir: &std::path::Path) -> Result<(Arc<dyn Driver>, String, String)> {
    let (warm, warm_note) = warm_config(flags);
    let image_cleanup = flags.image_cleanup_above.0.map(|above_bytes| shepherd_agent::driver::images::ImageCleanup {
        above_bytes,
        unused_for: flags.image_cleanup_unused,
        state_file: Some(data_dir.join("pulled-images.json")),
    });
    let docker = || {
        DockerDriver::connect(DockerConfig {
            pids_limit: flags.pids_limit,
            warm: warm.clone(),
            devices: flags.devices.clone(),
            gpus: flags.gpus,
            image_cleanup: image_cleanup.clone(),
            pull_dedup: !flags.no_pull_dedup,
            access_file: Some(data_dir.join("image-access.json")),
            verify_images: flags.verify_images,
            ..DockerConfig::new(node_id)
        })
    };
    let (driver, why): (Arc<dyn Driver>, String) = match flags.driver {
        DriverName::Process => {
            (Arc::new(ProcessDriver), "chosen with --driver process: commands run on this host; the image is recorded only".into())
        }
        DriverName::Docker => match docker().await {
            Ok(driver) => (Arc::new(driver), "chosen with --driver docker: every task a hardened container".into()),
            Err(e) => bail!("--driver docker: {e}"),
        },
        DriverName::Auto => match docker().await {
            Ok(driver) => (Arc::new(driver), "a Docker Engine answered: every task a hardened container".into()),
            Err(e) => (Arc::new(ProcessDriver), format!("no Docker Engine ({e}): commands run on this host; the image is recorded only")),
        },
    };
    Ok((driver, why, warm_note))
}

/// How a node (or a simulated fleet) joins: the servers and the join token.
#[derive(clap::Args)]
pub struct JoinFlags {
    /// The server to join, e.g. http://10.0.0.1:7070; several, comma-separated,
    /// for servers sharing a PostgreSQL store (the agent moves on when one is gone).
    #[arg(long, env = "SHEPHERD_JOIN")]
    pub join: String,
    /// The cluster's join token.
    #[arg(long, env = "SHEPHERD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
}

impl JoinFlags {
    /// The server URLs and the join token, checked; `command` names the
    /// command in the messages.
    pub fn resolve(&self, command: &str) -> Result<(Vec<String>, String)> {
        let Some(join_token) = read_token(&self.join_token, &self.join_token_file)? else {
            anyhow::bail!("shepherd {command} needs --join-token (or SHEPHERD_JOIN_TOKEN, or --join-token-file)");
        };
        let servers: Vec<String> = self.join.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if servers.is_empty() {
            anyhow::bail!("--join: give the server's URL, e.g. http://10.0.0.1:7070");
        }
        for server in &servers {
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                anyhow::bail!("--join `{server}`: use the server's URL, e.g. http://10.0.0.1:7070");
            }
        }
        Ok((servers, join_token))
    }
}

fn parse_device(text: &str) -> Result<shepherd_agent::driver::devices::HostDevice, String> {
    let device = shepherd_agent::driver::devices::HostDevice::parse(text)?;
    if !std::path::Path::new(&device.host).exists() {
        return Err(format!("{}: no such device on this host", device.host));
    }
    Ok(device)
}

pub fn read_token(token: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>> {
    Ok(match (token, file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
        }
        (None, None) => None,
    })
}

pub struct Node {
    pub(crate) capacity: Resources,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) why: String,
    /// Whether warm containers are on, and if not why (for the banner).
    pub(crate) warm: String,
}

pub async fn prepare_node(flags: &NodeFlags, node_id: &str, data_dir: &std::path::Path) -> Result<Node> {
    let mut labels = BTreeMap::new();
    for label in &flags.node_labels {
        let Some((key, value)) = label.split_once('=') else { bail!("--node-label `{label}`: use KEY=VALUE") };
        labels.insert(key.to_string(), value.to_string());
    }
    if let Some(projects) = &flags.dedicated_to {
        for project in projects.split(',') {
            if !shepherd_core::is_project_name(project) {
                bail!("--dedicated-to: `{project}` is not a project name");
            }
        }
        labels.insert(shepherd_sched::DEDICATED_LABEL.to_string(), projects.clone());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let capacity =
        Resources { cpu_millicores: flags.cpu.unwrap_or(cores * 1000), memory_mib: flags.memory.unwrap_or_else(host_memory_mib) };
    // What it offers beyond CPU and memory, as labels the scheduler reads.
    if flags.gpus > 0 {
        labels.insert(shepherd_sched::GPUS_LABEL.to_string(), flags.gpus.to_string());
    }
    if !flags.devices.is_empty() {
        let names: Vec<&str> = flags.devices.iter().map(|d| d.name.as_str()).collect();
        labels.insert(shepherd_sched::DEVICES_LABEL.to_string(), names.join(","));
    }
    let (driver, why, warm) = choose_driver(flags, node_id, data_dir).await?;
    if (flags.gpus > 0 || !flags.devices.is_empty()) && driver.name() != "docker" {
        bail!("--device and --gpus need the docker driver");
    }
    let warm = if driver.name() == "docker" { warm } else { "no (the docker driver runs them)".into() };
    Ok(Node { capacity, labels, driver, why, warm })
}

/// Says what a stop left running, and the two ways to deal with it.
pub fn left_running_note(left: usize, data_dir: &std::path::Path) {
    let tasks = if left == 1 { "1 task container".to_string() } else { format!("{left} task containers") };
    println!("  {tasks} left running: the next start with --data-dir {} adopts them.", data_dir.display());
    println!("  Not starting again? Remove them (and this node's networks) with:");
    println!("    shepherd node cleanup --data-dir {}", data_dir.display());
    println!("  (or stop them with the node next time: --stop-tasks)");
}

//! `shepherd up` (all-in-one), `shepherd server` (API and scheduler; agents
//! join over the network) and `shepherd agent --join` (a node).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use shepherd_agent::{Agent, AgentConfig, DockerConfig, DockerDriver, Driver, LogLimits, ProcessDriver};
use shepherd_core::{Limits, Resources};
use shepherd_server::{Cluster, ClusterConfig, LocalNodeConfig};
use shepherd_store::Synchronous;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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

#[derive(Clone, Copy, ValueEnum)]
pub enum SyncMode {
    /// fsync every commit: acknowledged tasks survive power loss.
    Full,
    /// fsync at checkpoints: acknowledged tasks survive a crash of the process, not of the machine.
    Normal,
}

/// Flags of a server (`up` and `server`).
#[derive(Args)]
pub struct ServerFlags {
    /// Address the API listens on (port 0 picks a free one).
    #[arg(long, env = "SHEPHERD_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the SQLite database, node id and attempt directories live.
    #[arg(long, env = "SHEPHERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Placement profiles and per-project settings (TOML; see docs/scheduling.md).
    #[arg(long, env = "SHEPHERD_SCHEDULER_CONFIG")]
    scheduler_config: Option<PathBuf>,
    /// Durability of the embedded store.
    #[arg(long, value_enum, default_value = "full")]
    sync: SyncMode,
    /// Agents on other hosts join with this secret (`shepherd agent --join`).
    #[arg(long, env = "SHEPHERD_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// A node silent this long is down; its tasks are retried elsewhere.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    node_timeout: Duration,
    /// Serve HTTPS: the certificate chain (PEM). Needs --tls-key.
    #[arg(long, env = "SHEPHERD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SHEPHERD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cluster's admin token (default: DATA_DIR/admin-token, made on first start).
    #[arg(long, env = "SHEPHERD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// Longest time an API request may take, body included (long polls and log follows excepted).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Most API connections open at once (agents included); more wait to be accepted.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Longest time a client may take to send a request's headers (and its TLS handshake).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// A keep-alive connection with no traffic this long is closed.
    #[arg(long, default_value = "90s", value_parser = positive_duration)]
    idle_timeout: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("`{text}`: {e} (use 10s, 2m)")),
    }
}

/// Flags of a node (`up` and `agent`).
#[derive(Args)]
pub struct NodeFlags {
    /// How tasks run.
    #[arg(long, value_enum, default_value = "auto")]
    driver: DriverName,
    /// Most processes in one task's container (docker driver); at least 1 (tasks cannot turn it off).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(i64).range(1..))]
    pids_limit: i64,
    /// CPU the node offers, in millicores (default: all cores).
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory the node offers, in MiB (default: all of it).
    #[arg(long)]
    memory: Option<u32>,
    /// Most tasks running at once on the node.
    #[arg(long, default_value_t = 256)]
    max_tasks: u32,
    /// A label of the node, KEY=VALUE (repeatable); constraints match node.labels.KEY; `pool` sets its pool.
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    node_labels: Vec<String>,
    /// Dedicate this node to these projects (comma-separated): no other project's task lands here.
    #[arg(long, value_name = "PROJECT,...")]
    dedicated_to: Option<String>,
    /// Output kept from the start of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    log_head_bytes: usize,
    /// Output kept from the end of each attempt, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    log_tail_bytes: usize,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// On Ctrl-C or SIGTERM, stop running task containers too (they run again
    /// on the next start) instead of leaving them running for adoption.
    #[arg(long)]
    stop_tasks: bool,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerFlags,
    #[command(flatten)]
    node: NodeFlags,
    /// Run the API and scheduler only, with no local agent (tasks wait for agents).
    #[arg(long)]
    no_agent: bool,
}

#[derive(Args)]
pub struct ServerArgs {
    #[command(flatten)]
    server: ServerFlags,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The server to join, e.g. http://10.0.0.1:7070.
    #[arg(long, env = "SHEPHERD_JOIN")]
    join: String,
    /// The cluster's join token.
    #[arg(long, env = "SHEPHERD_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// Where the node id and attempt directories live.
    #[arg(long, env = "SHEPHERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for an https:// server, besides the system's.
    #[arg(long, env = "SHEPHERD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(flatten)]
    node: NodeFlags,
}

/// `$XDG_DATA_HOME/shepherd`, else `~/.local/share/shepherd`.
pub fn default_data_dir() -> PathBuf {
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
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

/// The admin token: the flag, the file, or DATA_DIR/admin-token (made,
/// readable by its owner only, on first start). Returns it and where it is kept.
fn admin_token(server: &ServerFlags, data_dir: &std::path::Path) -> Result<(String, String)> {
    if let Some(token) = read_token(&server.admin_token, &server.admin_token_file)? {
        if token.len() < 16 {
            bail!("the admin token must be at least 16 characters");
        }
        let source = match &server.admin_token_file {
            Some(path) => path.display().to_string(),
            None => "--admin-token / SHEPHERD_ADMIN_TOKEN".into(),
        };
        return Ok((token, source));
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_string(), path.display().to_string())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = shepherd_server::auth::new_token().map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok((token, path.display().to_string()))
}

fn read_token(token: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>> {
    Ok(match (token, file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_string()),
        (None, None) => None,
    })
}

struct Node {
    capacity: Resources,
    labels: BTreeMap<String, String>,
    driver: Arc<dyn Driver>,
    why: String,
}

async fn prepare_node(flags: &NodeFlags, node_id: &str) -> Result<Node> {
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
    let capacity = Resources { cpu_millicores: flags.cpu.unwrap_or(cores * 1000), memory_mib: flags.memory.unwrap_or_else(host_memory_mib) };
    let (driver, why) = choose_driver(flags.driver, node_id, flags.pids_limit).await?;
    Ok(Node { capacity, labels, driver, why })
}

async fn run_cluster(server: ServerFlags, node: Option<&NodeFlags>, write_cli_config: bool) -> Result<ExitCode> {
    let data_dir = server.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::host::private_files();
    crate::host::raise_fd_limit();
    let _lock = crate::host::claim_data_dir(&data_dir)?;
    let scheduler = match &server.scheduler_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            shepherd_sched::SchedulerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => shepherd_sched::SchedulerConfig::default(),
    };
    let engine = Arc::new(shepherd_sched::Engine::new(&scheduler).with_context(|| "scheduler config")?);
    let profiles = engine.profile_names().join(", ");
    let join_token = read_token(&server.join_token, &server.join_token_file)?;
    let (admin_token, admin_token_source) = admin_token(&server, &data_dir)?;
    let mut local = None;
    let mut driver: Arc<dyn Driver> = Arc::new(ProcessDriver);
    if let Some(flags) = node {
        let node_id = shepherd_server::local_node_id(&data_dir).context("reading the node id")?;
        let prepared = prepare_node(flags, &node_id).await?;
        driver = prepared.driver.clone();
        local = Some((flags, prepared));
    }
    let config = ClusterConfig {
        engine,
        listen: server.listen,
        data_dir: data_dir.clone(),
        synchronous: match server.sync {
            SyncMode::Full => Synchronous::Full,
            SyncMode::Normal => Synchronous::Normal,
        },
        limits: Limits::default(),
        local_node: local.as_ref().map(|(flags, node)| LocalNodeConfig {
            capacity: node.capacity,
            max_tasks: flags.max_tasks,
            labels: node.labels.clone(),
            log_limits: LogLimits { head_bytes: flags.log_head_bytes, tail_bytes: flags.log_tail_bytes },
            stop_grace: flags.stop_grace,
            stop_on_shutdown: flags.stop_tasks,
        }),
        join_token: join_token.clone(),
        node_timeout: server.node_timeout,
        tls: match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(shepherd_server::tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        admin_token: admin_token.clone(),
        request_timeout: server.request_timeout,
        serve_limits: shepherd_server::serve::ServeLimits {
            max_connections: server.max_connections as usize,
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
        },
    };
    let cluster = Cluster::start(config, driver).await.context("cannot start the cluster")?;
    let scheme = if server.tls_cert.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", cluster.addr());
    let default_token = cluster.bootstrap_default_project().await.context("creating the default project")?;
    // The all-in-one cluster points the CLI at itself (before saying it
    // listens, so that whoever waits for that line finds the config); a
    // server leaves the user's CLI config alone and prints the token instead.
    let mut wrote_config = false;
    let mut project_line = None;
    if let Some(token) = &default_token {
        if write_cli_config {
            let config = crate::config::CliConfig {
                server: Some(url.clone()),
                token: Some(token.clone()),
                admin_token: Some(admin_token.clone()),
                tls_ca: None,
                data_dir: Some(std::fs::canonicalize(&data_dir).unwrap_or_else(|_| data_dir.clone())),
            };
            let written = crate::config::place_for(&data_dir).and_then(|(path, usual)| crate::config::save_at(&config, &path).map(|()| (path, usual)));
            match written {
                Ok((path, true)) => {
                    project_line = Some(format!("  project: `default` created; its token and the admin token are in the CLI config {}", path.display()));
                    wrote_config = true;
                }
                Ok((path, false)) => {
                    let usual = crate::config::path().map(|p| p.display().to_string()).unwrap_or_default();
                    project_line = Some(format!(
                        "  project: `default` created; the CLI config {usual} belongs to another cluster and is kept:\n           this cluster's tokens are in {} (export SHEPHERD_CONFIG={})",
                        path.display(),
                        path.display()
                    ));
                    wrote_config = true;
                }
                Err(e) => project_line = Some(format!("  project: `default` created; could not write the CLI config ({e:#})")),
            }
        }
        if !wrote_config {
            let why = project_line.take().map(|l| format!("{l}\n")).unwrap_or_default();
            project_line = Some(format!("{why}  project: `default` created; its token (shown once): {token}"));
        }
    }
    println!("shepherd: API listening on {url}");
    println!("  data:    {} (embedded SQLite)", data_dir.display());
    match (&local, cluster.node_id(), cluster.driver()) {
        (Some((flags, node)), Some(id), Some(driver)) => {
            println!("  node:    {id}, driver `{driver}`, {} millicores, {} MiB, up to {} tasks", node.capacity.cpu_millicores, node.capacity.memory_mib, flags.max_tasks);
            println!("           ({})", node.why);
        }
        _ => println!("  node:    none here: tasks wait for agents (shepherd agent --join {url})"),
    }
    match &join_token {
        Some(_) => println!("  agents:  join with `shepherd agent --join {url} --join-token …`"),
        None => println!("  agents:  none can join (no --join-token)"),
    }
    println!("  profiles: {profiles}");
    println!("  openapi: {url}/v1/openapi.json");
    println!("  admin:   token in {admin_token_source}");
    if let Some(line) = &project_line {
        println!("{line}");
    }
    println!();
    if !wrote_config && server.listen.to_string() != super::client::DEFAULT_SERVER.trim_start_matches("http://") {
        println!("Point the CLI here:  export SHEPHERD_SERVER={url}");
    }
    if !wrote_config && default_token.is_some() {
        println!("                     export SHEPHERD_TOKEN=<the token above>");
    }
    println!("Submit a task:       shepherd run --wait busybox -- echo hello");
    println!("Stop with Ctrl-C; queued and running tasks resume on the next start.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    stop_signal().await;
    println!("shepherd: stopping");
    let left = cluster.shutdown().await;
    println!("shepherd: stopped");
    if left > 0 {
        left_running_note(left, &data_dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Says what a stop left running, and the two ways to deal with it.
fn left_running_note(left: usize, data_dir: &std::path::Path) {
    let tasks = if left == 1 { "1 task container".to_string() } else { format!("{left} task containers") };
    println!("  {tasks} left running: the next start with --data-dir {} adopts them.", data_dir.display());
    println!("  Not starting again? Remove them (and this node's networks) with:");
    println!("    shepherd node cleanup --data-dir {}", data_dir.display());
    println!("  (or stop them with the node next time: --stop-tasks)");
}

pub async fn up(args: UpArgs) -> Result<ExitCode> {
    let node = (!args.no_agent).then_some(&args.node);
    run_cluster(args.server, node, true).await
}

pub async fn server(args: ServerArgs) -> Result<ExitCode> {
    if args.server.join_token.is_none() && args.server.join_token_file.is_none() {
        bail!("shepherd server needs --join-token (or SHEPHERD_JOIN_TOKEN, or --join-token-file) for its agents");
    }
    run_cluster(args.server, None, false).await
}

pub async fn agent(args: AgentArgs) -> Result<ExitCode> {
    let Some(join_token) = read_token(&args.join_token, &args.join_token_file)? else {
        bail!("shepherd agent needs --join-token (or SHEPHERD_JOIN_TOKEN, or --join-token-file)");
    };
    if !(args.join.starts_with("http://") || args.join.starts_with("https://")) {
        bail!("--join `{}`: use the server's URL, e.g. http://10.0.0.1:7070", args.join);
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::host::private_files();
    crate::host::raise_fd_limit();
    let _lock = crate::host::claim_data_dir(&data_dir)?;
    let node_id = shepherd_server::local_node_id(&data_dir).context("reading the node id")?;
    let node = prepare_node(&args.node, &node_id).await?;
    println!("shepherd agent: node {node_id} joining {} ({})", args.join, node.why);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let registration = shepherd_agent::remote::Registration {
        join_token: String::new(),
        node_id: node_id.clone(),
        hostname: hostname(),
        driver: node.driver.name().to_string(),
        capacity: node.capacity,
        max_tasks: args.node.max_tasks,
        labels: node.labels.clone(),
        images: node.driver.images().await,
    };
    let config = AgentConfig {
        node_id,
        work_dir: data_dir.join("attempts"),
        log_limits: LogLimits { head_bytes: args.node.log_head_bytes, tail_bytes: args.node.log_tail_bytes },
        stop_grace: args.node.stop_grace,
        stop_on_shutdown: args.node.stop_tasks,
    };
    let driver = node.driver.clone();
    let ca_pem = match &args.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let left = shepherd_agent::remote::run(
        shepherd_agent::remote::JoinConfig { server: args.join.clone(), join_token, registration, ca_pem },
        move |backend| Agent::new(config, backend, driver, Arc::new(tokio::sync::Notify::new())),
        stop_signal(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("shepherd agent: stopped");
    if left > 0 {
        left_running_note(left, &data_dir);
    }
    Ok(ExitCode::SUCCESS)
}

//! `shepherd up` (all-in-one: server, scheduler and a local agent) and
//! `shepherd server` (API and scheduler; agents join over the network).

use crate::node::{default_data_dir, left_running_note, prepare_node, read_token, stop_signal, NodeFlags};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use shepherd_agent::{Driver, LogLimits, ProcessDriver};
use shepherd_core::Limits;
use shepherd_server::{Cluster, ClusterConfig, LocalNodeConfig, StoreConfig};
use shepherd_store::Synchronous;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Placement profiles, run-time plugins (WebAssembly, HTTP extenders) and
    /// per-project settings (TOML; see docs/scheduling.md and docs/plugins.md).
    /// Reloaded when it or a plugin file changes, and on SIGHUP.
    #[arg(long, env = "SHEPHERD_SCHEDULER_CONFIG")]
    scheduler_config: Option<PathBuf>,
    /// Where state is kept: `sqlite` (DATA_DIR/shepherd.db, the default) or a
    /// PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE (servers may share it).
    #[arg(long, env = "SHEPHERD_STORE", default_value = "sqlite", value_parser = parse_store, hide_env_values = true)]
    store: StoreChoice,
    /// Durability of the embedded SQLite store.
    #[arg(long, value_enum, default_value = "full")]
    sync: SyncMode,
    /// A PostgreSQL store: most connections this server opens (requests past
    /// it wait; `shepherd_store_pool_wait_seconds` on /metrics shows how long).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    store_pool_size: u32,
    /// A PostgreSQL store: longest a statement may run before PostgreSQL
    /// cancels it (`0s`: no limit). Schema migrations at start are exempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    store_statement_timeout: Duration,
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
    /// Servers sharing a PostgreSQL store: the leader's lease. When the
    /// leader is gone, another takes over within this long.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    leader_lease: Duration,
    /// An IronWorker stack: the image that runs code packages uploaded for
    /// runtime NAME, e.g. `--stack sh=busybox --stack python=python:3.12`
    /// (repeatable).
    #[arg(long = "stack", value_name = "NAME=IMAGE", value_parser = parse_stack)]
    stacks: Vec<(String, String)>,
    /// Let webhooks call loopback, private and link-local addresses (by
    /// default only public ones: a tenant's webhook must not reach into
    /// the cluster's own network).
    #[arg(long)]
    webhook_allow_private: bool,
    /// Most output a joined node may store for one attempt (its head and
    /// tail together; output past it is refused and counted).
    #[arg(long, default_value_t = shepherd_server::DEFAULT_MAX_ATTEMPT_LOG_BYTES)]
    max_attempt_log_bytes: u64,
    /// Also serve `/metrics` on this address without a token, for a
    /// Prometheus scraper on a private network (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How long the event stream keeps events for clients that resume it
    /// (`Last-Event-ID`).
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    event_retention: Duration,
    /// How long finished tasks (with their attempts and output) are kept
    /// after they finish, where a project's policy says nothing
    /// (`project policy NAME --retention`); e.g. 30d. By default they are
    /// kept forever. Usage sums and audit lines stay.
    #[arg(long, value_name = "DURATION", value_parser = retention_duration)]
    task_retention: Option<Duration>,
    /// Write each task that retention removes to this directory first, one
    /// JSON line with its attempts and output, in PROJECT/YYYY-MM-DD.jsonl.
    #[arg(long, value_name = "DIR")]
    retention_export: Option<std::path::PathBuf>,
    /// How often the leader looks for finished tasks past their retention.
    #[arg(long, default_value = "1m", value_parser = positive_duration)]
    retention_interval: Duration,
    /// The most of the time removal may take (0.01 to 1): after each batch
    /// it rests so that the store's writer stays with the clients. Raise it
    /// where tasks finish faster than removal keeps up with.
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    retention_share: f64,
    /// Autoscaled pools and the provisioners that make their machines (a
    /// TOML file; see docs/provisioning.md). Only the leader acts on it.
    #[arg(long, value_name = "FILE", env = "SHEPHERD_AUTOSCALE_CONFIG")]
    autoscale_config: Option<std::path::PathBuf>,
}

fn parse_stack(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, image)) if !name.is_empty() && shepherd_core::reference::check_image_reference(image).is_ok() => {
            Ok((name.to_string(), image.to_string()))
        }
        _ => Err(format!("`{text}`: use NAME=IMAGE, e.g. sh=busybox")),
    }
}

/// `--store`: the embedded SQLite, or a PostgreSQL URL.
#[derive(Clone)]
pub enum StoreChoice {
    Sqlite,
    Postgres(String),
}

fn parse_store(text: &str) -> Result<StoreChoice, String> {
    if text == "sqlite" {
        Ok(StoreChoice::Sqlite)
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(StoreChoice::Postgres(text.to_string()))
    } else {
        Err("use `sqlite` or a PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE".into())
    }
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.01..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}`: a share of the time, 0.01 to 1")),
    }
}

fn retention_duration(text: &str) -> Result<Duration, String> {
    let d = positive_duration(text)?;
    if d.as_secs() == 0 || d.as_secs() > shepherd_core::MAX_RETENTION_SECONDS {
        return Err("must be 1s to 100 years".into());
    }
    Ok(Duration::from_secs(d.as_secs()))
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("`{text}`: {e} (use 10s, 2m)")),
    }
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
    let token = shepherd_server::service::auth::new_token().map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
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

async fn run_cluster(server: ServerFlags, node: Option<&NodeFlags>, write_cli_config: bool) -> Result<ExitCode> {
    let data_dir = server.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::host::private_files();
    crate::host::raise_fd_limit();
    let _lock = crate::host::claim_data_dir(&data_dir)?;
    // Profiles and run-time plugins; reloaded while the server runs when
    // the file changes, on SIGHUP or `POST /v1/plugins/reload`.
    let scheduling = Arc::new(match &server.scheduler_config {
        Some(path) => shepherd_plugins::Scheduling::from_file(path).with_context(|| format!("scheduler config {}", path.display()))?,
        None => shepherd_plugins::Scheduling::fixed(shepherd_sched::Engine::default()),
    });
    let profiles = scheduling.engine().get().profile_names().join(", ");
    let plugins: Vec<String> = scheduling.report().plugins.into_iter().map(|p| format!("{} ({})", p.name, p.kind)).collect();
    let join_token = read_token(&server.join_token, &server.join_token_file)?;
    let (admin_token, admin_token_source) = admin_token(&server, &data_dir)?;
    let mut local = None;
    let mut driver: Arc<dyn Driver> = Arc::new(ProcessDriver);
    if let Some(flags) = node {
        let node_id = shepherd_server::local_node_id(&data_dir).context("reading the node id")?;
        let prepared = prepare_node(flags, &node_id, &data_dir).await?;
        driver = prepared.driver.clone();
        local = Some((flags, prepared));
    }
    let config = ClusterConfig {
        scheduling,
        listen: server.listen,
        data_dir: data_dir.clone(),
        store: match &server.store {
            StoreChoice::Sqlite => StoreConfig::Sqlite {
                synchronous: match server.sync {
                    SyncMode::Full => Synchronous::Full,
                    SyncMode::Normal => Synchronous::Normal,
                },
            },
            StoreChoice::Postgres(url) => StoreConfig::Postgres {
                url: url.clone(),
                options: shepherd_store::postgres::PgOptions {
                    max_connections: server.store_pool_size as usize,
                    statement_timeout: Some(server.store_statement_timeout).filter(|t| !t.is_zero()),
                },
            },
        },
        limits: Limits::default(),
        local_node: local.as_ref().map(|(flags, node)| LocalNodeConfig {
            capacity: node.capacity,
            max_tasks: flags.max_tasks,
            labels: node.labels.clone(),
            log_limits: LogLimits { head_bytes: flags.log_head_bytes, tail_bytes: flags.log_tail_bytes },
            stop_grace: flags.stop_grace,
            stop_on_shutdown: flags.stop_tasks,
            image_cleanup_every: flags.image_cleanup_every(),
        }),
        join_token: join_token.clone(),
        node_timeout: server.node_timeout,
        tls: match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(shepherd_server::http::tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        admin_token: admin_token.clone(),
        request_timeout: server.request_timeout,
        leader_lease: server.leader_lease,
        stacks: server.stacks.iter().cloned().collect(),
        webhook_allow_private: server.webhook_allow_private,
        max_attempt_log_bytes: server.max_attempt_log_bytes,
        metrics_listen: server.metrics_listen,
        event_retention: server.event_retention,
        retention: shepherd_server::loops::retention::RetentionConfig {
            default: server.task_retention,
            export: server.retention_export.clone(),
            every: server.retention_interval,
            share: server.retention_share,
        },
        autoscale: match &server.autoscale_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("--autoscale-config {}", path.display()))?;
                Some(
                    shepherd_server::loops::autoscale::config::AutoscaleConfig::parse(&text)
                        .with_context(|| format!("--autoscale-config {}", path.display()))?,
                )
            }
            None => None,
        },
        serve_limits: shepherd_server::http::serve::ServeLimits {
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
            let written = crate::config::place_for(&data_dir)
                .and_then(|(path, usual)| crate::config::save_at(&config, &path).map(|()| (path, usual)));
            match written {
                Ok((path, true)) => {
                    project_line = Some(format!(
                        "  project: `default` created; its token and the admin token are in the CLI config {}",
                        path.display()
                    ));
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
    match &server.store {
        StoreChoice::Sqlite => println!("  data:    {} (embedded SQLite)", data_dir.display()),
        StoreChoice::Postgres(url) => {
            println!("  data:    {} (node id, attempts); store: PostgreSQL {}", data_dir.display(), shepherd_store::postgres::redact(url))
        }
    }
    match (&local, cluster.node_id(), cluster.driver()) {
        (Some((flags, node)), Some(id), Some(driver)) => {
            println!(
                "  node:    {id}, driver `{driver}`, {} millicores, {} MiB, up to {} tasks",
                node.capacity.cpu_millicores, node.capacity.memory_mib, flags.max_tasks
            );
            println!("           ({})", node.why);
            println!("  warm:    {}", node.warm);
        }
        _ => println!("  node:    none here: tasks wait for agents (shepherd agent --join {url})"),
    }
    match (&join_token, &server.autoscale_config) {
        (Some(_), _) => println!("  agents:  join with `shepherd agent --join {url} --join-token …`"),
        (None, Some(_)) => println!("  agents:  only the autoscaler's machines join (each with its own token); others need --join-token"),
        (None, None) => println!("  agents:  none can join (no --join-token)"),
    }
    println!("  profiles: {profiles}");
    if !plugins.is_empty() {
        println!("  plugins: {} (reloaded when their files change; GET /v1/plugins)", plugins.join(", "));
    }
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

pub async fn up(args: UpArgs) -> Result<ExitCode> {
    let node = (!args.no_agent).then_some(&args.node);
    run_cluster(args.server, node, true).await
}

pub async fn server(args: ServerArgs) -> Result<ExitCode> {
    // Provisioned machines join with credentials of their own; other agents need the cluster's.
    if args.server.join_token.is_none() && args.server.join_token_file.is_none() && args.server.autoscale_config.is_none() {
        bail!(
            "shepherd server needs --join-token (or SHEPHERD_JOIN_TOKEN, or --join-token-file) for its agents, \
             unless its only agents are the machines of --autoscale-config"
        );
    }
    // A server is often one of several, or remote from its users: it leaves
    // the CLI config alone and says how to point the CLI at it instead.
    run_cluster(args.server, None, false).await
}

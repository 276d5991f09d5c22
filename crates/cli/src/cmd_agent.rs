//! `shepherd agent --join`: a node that joins a server over the network.

use crate::node::{default_data_dir, hostname, left_running_note, prepare_node, stop_signal, JoinFlags, NodeFlags};
use anyhow::{Context, Result};
use clap::Args;
use shepherd_agent::{Agent, AgentConfig, LogLimits};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    join: JoinFlags,
    /// Where the node id and attempt directories live.
    #[arg(long, env = "SHEPHERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for an https:// server, besides the system's.
    #[arg(long, env = "SHEPHERD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(flatten)]
    node: NodeFlags,
    /// Serve this node's metrics (`/metrics`: attempts running, engine call
    /// latency, start failures) on this address, without a token.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

pub async fn agent(args: AgentArgs) -> Result<ExitCode> {
    let (servers, join_token) = args.join.resolve("agent")?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::host::private_files();
    crate::host::raise_fd_limit();
    let _lock = crate::host::claim_data_dir(&data_dir)?;
    let node_id = shepherd_server::local_node_id(&data_dir).context("reading the node id")?;
    let node = prepare_node(&args.node, &node_id, &data_dir).await?;
    let _metrics = match args.metrics_listen {
        Some(addr) => {
            Some(shepherd_server::metrics::serve_node_metrics(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?)
        }
        None => None,
    };
    println!("shepherd agent: node {node_id} joining {} ({})", args.join.join, node.why);
    println!("  warm:    {}", node.warm);
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
        node_secret: Some(shepherd_server::local_node_secret(&data_dir).context("reading the node secret")?),
    };
    let config = AgentConfig {
        node_id,
        work_dir: data_dir.join("attempts"),
        log_limits: LogLimits { head_bytes: args.node.log_head_bytes, tail_bytes: args.node.log_tail_bytes },
        stop_grace: args.node.stop_grace,
        stop_on_shutdown: args.node.stop_tasks,
        image_cleanup_every: args.node.image_cleanup_every(),
    };
    let driver = node.driver.clone();
    let ca_pem = match &args.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let left = shepherd_agent::remote::run(
        shepherd_agent::remote::JoinConfig { servers, join_token, registration, ca_pem },
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

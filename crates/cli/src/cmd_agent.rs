//! `shepherd agent --join`: a node that joins a server over the network.

use crate::node::{default_data_dir, hostname, left_running_note, prepare_node, read_token, stop_signal, NodeFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use shepherd_agent::{Agent, AgentConfig, LogLimits};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct AgentArgs {
    /// The server to join, e.g. http://10.0.0.1:7070; several, comma-separated,
    /// for servers sharing a PostgreSQL store (the agent moves on when one is gone).
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

pub async fn agent(args: AgentArgs) -> Result<ExitCode> {
    let Some(join_token) = read_token(&args.join_token, &args.join_token_file)? else {
        bail!("shepherd agent needs --join-token (or SHEPHERD_JOIN_TOKEN, or --join-token-file)");
    };
    let servers: Vec<String> = args.join.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    if servers.is_empty() {
        bail!("--join: give the server's URL, e.g. http://10.0.0.1:7070");
    }
    for server in &servers {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("--join `{server}`: use the server's URL, e.g. http://10.0.0.1:7070");
        }
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

//! `shepherd nodes`.

use crate::client::Client;
use crate::output::{ago, print_table};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct NodesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn nodes(client: &Client, args: NodesArgs) -> Result<ExitCode> {
    let list: serde_json::Value = client.admin().get("/v1/nodes").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let nodes: Vec<shepherd_server::http::v1::NodeView> = serde_json::from_value(list["nodes"].clone())?;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.hostname.clone(),
                n.state.clone(),
                n.driver.clone(),
                format!("{}/{}", n.allocated.cpu_millicores, n.capacity.cpu_millicores),
                format!("{}/{}", n.allocated.memory_mib, n.capacity.memory_mib),
                format!("{}/{}", n.tasks, n.max_tasks),
                ago(n.last_heartbeat_at),
            ]
        })
        .collect();
    print_table(&["ID", "HOSTNAME", "STATE", "DRIVER", "CPU (m)", "MEMORY (MiB)", "TASKS", "HEARTBEAT"], &rows);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Stop placing tasks on a node; running ones finish.
    Drain {
        /// Node id.
        id: String,
    },
    /// List nodes (as `shepherd nodes`).
    Ls(NodesArgs),
    /// On this host: remove every container and network of a node that will
    /// not start again (what a stopped `up` or `agent` left for adoption).
    Cleanup {
        /// The node's data directory (its node id is kept there).
        #[arg(long, env = "SHEPHERD_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// The node's id, instead of reading it from the data directory.
        #[arg(long, conflicts_with = "data_dir")]
        node_id: Option<String>,
    },
}

pub async fn node(client: impl FnOnce() -> Result<Client>, args: NodeArgs) -> Result<ExitCode> {
    let client = match args.command {
        NodeCommand::Cleanup { data_dir, node_id } => return cleanup(data_dir, node_id).await,
        _ => client()?,
    };
    let client = &client;
    match args.command {
        NodeCommand::Drain { id } => {
            let node: serde_json::Value =
                client.admin().post(&format!("/v1/nodes/{}/drain", crate::client::encode(&id)), &serde_json::json!({})).await?;
            println!("{} {}", node["id"].as_str().unwrap_or(&id), node["state"].as_str().unwrap_or("draining"));
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Ls(args) => nodes(client, args).await,
        NodeCommand::Cleanup { .. } => unreachable!("handled above"),
    }
}

async fn cleanup(data_dir: Option<std::path::PathBuf>, node_id: Option<String>) -> Result<ExitCode> {
    use anyhow::Context;
    // With the data directory: refuse while its node runs (it would lose its tasks).
    let (node_id, _lock) = match node_id {
        Some(id) => (id, None),
        None => {
            let dir = data_dir.unwrap_or_else(crate::node::default_data_dir);
            let path = dir.join("node-id");
            let id = std::fs::read_to_string(&path).with_context(|| format!("no node id at {} (give --node-id)", path.display()))?;
            let lock = crate::host::claim_data_dir(&dir).context("cannot clean up a node that is running")?;
            (id.trim().to_string(), Some(lock))
        }
    };
    let config = shepherd_agent::DockerConfig { pids_limit: 1, tmp_size_mib: 1, ..shepherd_agent::DockerConfig::new(node_id.clone()) };
    let driver = shepherd_agent::DockerDriver::connect(config).await?;
    let (containers, networks) = driver.cleanup().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "node {node_id}: removed {} and {}",
        crate::output::plural(containers as u64, "container"),
        crate::output::plural(networks as u64, "network")
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ServersArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The servers sharing the cluster's store, with their roles.
pub async fn servers(client: &Client, args: ServersArgs) -> Result<ExitCode> {
    let list: serde_json::Value = client.admin().get("/v1/servers").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let servers: Vec<shepherd_server::http::v1::ServerView> = serde_json::from_value(list["servers"].clone())?;
    let rows: Vec<Vec<String>> = servers.iter().map(|s| vec![s.id.clone(), s.url.clone(), s.role.clone(), ago(s.last_seen_at)]).collect();
    print_table(&["ID", "URL", "ROLE", "LAST SEEN"], &rows);
    Ok(ExitCode::SUCCESS)
}

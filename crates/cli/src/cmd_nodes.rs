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
    let nodes: Vec<shepherd_server::api::NodeView> = serde_json::from_value(list["nodes"].clone())?;
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
}

pub async fn node(client: &Client, args: NodeArgs) -> Result<ExitCode> {
    match args.command {
        NodeCommand::Drain { id } => {
            let node: serde_json::Value = client.admin().post(&format!("/v1/nodes/{}/drain", crate::client::encode(&id)), &serde_json::json!({})).await?;
            println!("{} {}", node["id"].as_str().unwrap_or(&id), node["state"].as_str().unwrap_or("draining"));
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Ls(args) => nodes(client, args).await,
    }
}

//! `shepherd volume`: a project's named volumes.

use crate::client::{encode, Client};
use crate::output::print_table;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Args)]
pub struct VolumeArgs {
    /// The project (default: the token's own, when it sees exactly one).
    #[arg(long, global = true)]
    project: Option<String>,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Make a volume (on an engine when the first task that mounts it starts there).
    Create {
        /// 1-63 of a-z 0-9 - _ . (the engine's name is shepherd-vol-PROJECT-NAME).
        name: String,
        /// Volume driver (default local; the admin allows others per project).
        #[arg(long)]
        driver: Option<String>,
        /// A driver option, k=v (repeatable), as `docker volume create --opt`.
        #[arg(long = "opt", value_name = "K=V", value_parser = parse_pair)]
        options: Vec<(String, String)>,
        /// Its size in MiB, where the driver bounds it (counted against the project's quota).
        #[arg(long, value_name = "MIB")]
        size: Option<u64>,
        /// Where its data lives: node (local's default: its tasks run on the
        /// node of its first task) or cluster (any node sees the same data).
        #[arg(long, value_parser = ["node", "cluster"])]
        scope: Option<String>,
    },
    /// List the project's volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume as JSON.
    Inspect { name: String },
    /// Remove a volume and its data (refused while a task that mounts it is unfinished).
    Rm { name: String },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{text}`: use KEY=VALUE")),
    }
}

pub async fn volume(client: &Client, args: VolumeArgs) -> Result<ExitCode> {
    let project = crate::cmd_tenants::which_project(client, args.project).await?;
    let base = format!("/v1/projects/{}/volumes", encode(&project));
    match args.command {
        VolumeCommand::Create { name, driver, options, size, scope } => {
            let mut body = json!({ "name": name, "options": options.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<String, Value>>() });
            if let Some(driver) = driver {
                body["driver"] = driver.into();
            }
            if let Some(size) = size {
                body["size_mib"] = size.into();
            }
            if let Some(scope) = scope {
                body["scope"] = scope.into();
            }
            let made: Value = client.post(&base, &body).await?;
            println!(
                "volume {name} created in project {project} ({}, {} scope, engine name {})",
                made["driver"].as_str().unwrap_or("?"),
                made["scope"].as_str().unwrap_or("?"),
                made["engine_name"].as_str().unwrap_or("?")
            );
        }
        VolumeCommand::Ls { json } => {
            let list: Value = client.get(&base).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let text = |key: &str| v[key].as_str().unwrap_or("-").to_string();
                    let size = v["size_mib"].as_u64().map_or("-".to_string(), |s| format!("{s} MiB"));
                    vec![text("name"), text("driver"), text("scope"), size, text("node_id"), text("engine_name")]
                })
                .collect();
            print_table(&["NAME", "DRIVER", "SCOPE", "SIZE", "NODE", "ENGINE NAME"], &rows);
        }
        VolumeCommand::Inspect { name } => {
            let volume: Value = client.get(&format!("{base}/{}", encode(&name))).await?;
            println!("{}", serde_json::to_string_pretty(&volume)?);
        }
        VolumeCommand::Rm { name } => {
            if name.is_empty() {
                bail!("name a volume");
            }
            client.send_empty::<()>(reqwest::Method::DELETE, &format!("{base}/{}", encode(&name)), None).await?;
            println!("volume {name} removed from project {project}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `shepherd registry`: a project's logins to image registries.

use crate::client::{encode, Client};
use crate::output::print_table;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;

#[derive(Args)]
pub struct RegistryArgs {
    /// The project (default: the token's own, when it sees exactly one).
    #[arg(long, global = true)]
    project: Option<String>,
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Log the project in to a registry: its tasks whose image comes from
    /// there pull with this login (kept as a project secret, never shown).
    Login {
        /// host[:port], e.g. ghcr.io or 127.0.0.1:5000.
        registry: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from standard input (the only way: never on a command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Forget the project's login to a registry.
    Logout { registry: String },
    /// The registries the project has logins to.
    Ls,
}

pub async fn registry(client: &Client, args: RegistryArgs) -> Result<ExitCode> {
    let project = crate::cmd_tenants::which_project(client, args.project).await?;
    let base = format!("/v1/projects/{}/registries", encode(&project));
    match args.command {
        RegistryCommand::Login { registry, username, password_stdin } => {
            if !password_stdin {
                bail!("give the password on standard input with --password-stdin");
            }
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                bail!("no password on standard input");
            }
            let body = json!({ "username": username, "password": password });
            client.send_empty(reqwest::Method::PUT, &format!("{base}/{}", encode(&registry)), Some(&body)).await?;
            println!("project {project} logged in to {registry} as {username}");
        }
        RegistryCommand::Logout { registry } => {
            client.send_empty::<()>(reqwest::Method::DELETE, &format!("{base}/{}", encode(&registry)), None).await?;
            println!("project {project} logged out of {registry}");
        }
        RegistryCommand::Ls => {
            let list: Value = client.get(&base).await?;
            let rows: Vec<Vec<String>> = list["registries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| vec![r["registry"].as_str().unwrap_or_default().to_string(), r["updated_at"].as_str().unwrap_or("-").to_string()])
                .collect();
            print_table(&["REGISTRY", "UPDATED"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `shepherd history export`: the cluster's scheduling history (shapes and
//! times, never commands, images, env, payloads or secrets) as JSON Lines,
//! for `shepherd simulate --history FILE` here or on another machine.

use crate::client::{encode, Client};
use crate::cmd_tasks::parse_time;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::process::ExitCode;

#[derive(Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Write the history of a window as JSON Lines (admin).
    Export {
        #[command(flatten)]
        window: Window,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

/// Which part of the history: a window and some projects.
#[derive(Args, Clone, Debug, Default)]
pub struct Window {
    /// The last stretch of time, e.g. 7d, 12h, 30m (instead of --from).
    #[arg(long, value_parser = parse_since, conflicts_with = "from")]
    pub since: Option<std::time::Duration>,
    /// Start of the window, RFC 3339 (default: 7 days before --to).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<shepherd_core::Timestamp>,
    /// End of the window, RFC 3339 (default: now).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<shepherd_core::Timestamp>,
    /// Only this project's tasks (repeat for several).
    #[arg(long = "project")]
    pub projects: Vec<String>,
}

fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (use 7d, 12h, 30m)"))
}

impl Window {
    fn query(&self) -> String {
        let to = self.to.unwrap_or_else(shepherd_core::Timestamp::now);
        let from = match (self.from, self.since) {
            (Some(from), _) => from,
            (None, Some(since)) => shepherd_core::Timestamp(to.millis() - since.as_millis().min(i64::MAX as u128) as i64),
            (None, None) => shepherd_core::Timestamp(to.millis() - 7 * 24 * 3_600_000),
        };
        let mut query = vec![format!("from={}", encode(&from.to_rfc3339())), format!("to={}", encode(&to.to_rfc3339()))];
        if !self.projects.is_empty() {
            query.push(format!("projects={}", encode(&self.projects.join(","))));
        }
        query.join("&")
    }
}

/// Streams the history of `window` from the server into `out`, a chunk
/// at a time; how many lines came.
pub async fn download(client: &Client, window: &Window, out: &mut dyn Write) -> Result<u64> {
    let mut response = client.admin().stream(&format!("/v1/history?{}", window.query())).await?;
    let mut lines = 0u64;
    while let Some(chunk) = response.chunk().await.context("reading the history from the server")? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(lines)
}

pub async fn history(client: &Client, args: HistoryArgs) -> Result<ExitCode> {
    match args.command {
        HistoryCommand::Export { window, output } => {
            let lines = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    download(client, &window, &mut out).await?
                }
                None => download(client, &window, &mut std::io::stdout().lock()).await?,
            };
            eprintln!("history: {lines} lines");
            Ok(ExitCode::SUCCESS)
        }
    }
}

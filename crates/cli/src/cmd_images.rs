//! `shepherd image prefetch`: pull an image onto the nodes of a pool ahead
//! of a burst of tasks, and follow it until every node holds it.

use crate::client::{encode, Client};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Pull IMAGE onto every ready node (of --pool) now, with the project's
    /// registry login, and wait until each holds it.
    Prefetch {
        /// The image, as tasks name it (NAME[:TAG] or NAME@sha256:…).
        image: String,
        /// Only the nodes of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// The project whose registry login pulls it (a project token: its own).
        #[arg(long)]
        project: Option<String>,
        /// How long each node's pull may take.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        pull_timeout: Duration,
        /// Ask the nodes and return at once.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up waiting after this long (the pulls go on).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// `held/total` from a prefetch status.
fn counts(status: &Value) -> (usize, usize) {
    let nodes = status["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    (nodes.iter().filter(|n| n["present"] == true).count(), nodes.len())
}

pub async fn image(client: &Client, args: ImageArgs) -> Result<ExitCode> {
    let ImageCommand::Prefetch { image, pool, project, pull_timeout, detach, timeout } = args.command;
    let seconds = pull_timeout.as_secs();
    if seconds == 0 || seconds > 24 * 3600 {
        bail!("--pull-timeout: between 1s and 24h");
    }
    let body = json!({ "image": image, "pool": pool, "project": project, "pull_timeout_seconds": seconds });
    let status: Value = client.post("/v1/images/prefetch", &body).await?;
    let (_, total) = counts(&status);
    let place = pool.as_ref().map(|p| format!(" of pool {p}")).unwrap_or_default();
    if total == 0 {
        bail!("no ready node{place} to prefetch onto");
    }
    println!("prefetching {image} onto {total} node{}{place}", if total == 1 { "" } else { "s" });
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let mut query = format!("/v1/images/prefetch?image={}", encode(&image));
    if let Some(pool) = &pool {
        query.push_str(&format!("&pool={}", encode(pool)));
    }
    if let Some(project) = &project {
        query.push_str(&format!("&project={}", encode(project)));
    }
    let started = Instant::now();
    let mut shown = None;
    loop {
        let status: Value = client.get(&query).await?;
        let (held, total) = counts(&status);
        if shown != Some((held, total)) {
            println!("  {held}/{total} nodes hold it ({:.0}s)", started.elapsed().as_secs_f64());
            shown = Some((held, total));
        }
        if status["done"] == true && total > 0 {
            println!("{image} is on every node{place}");
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > timeout {
            let missing: Vec<&str> = status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["present"] != true)
                .filter_map(|n| n["node_id"].as_str())
                .collect();
            bail!("gave up after {}: not yet on {} (see the agents' logs)", humantime::format_duration(timeout), missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

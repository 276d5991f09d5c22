//! `shepherd usage`: what a project's tasks used, per hour or day, as a
//! table or CSV (for billing).

use crate::client::{encode, Client};
use crate::cmd_tasks::parse_time;
use crate::output::{print_table, safe};
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args)]
pub struct UsageArgs {
    /// One project (the admin's default: all; a project token: its own).
    #[arg(long)]
    project: Option<String>,
    /// Start of the window, RFC 3339 (default: a day before --to).
    #[arg(long, value_parser = parse_time)]
    from: Option<shepherd_core::Timestamp>,
    /// End of the window, RFC 3339 (default: now).
    #[arg(long, value_parser = parse_time)]
    to: Option<shepherd_core::Timestamp>,
    /// Sum per hour or per day.
    #[arg(long, default_value = "hour", value_parser = ["hour", "day"])]
    by: String,
    /// Print CSV (project,start,tasks,attempts,cpu_seconds,memory_mib_seconds,wall_seconds).
    #[arg(long)]
    csv: bool,
}

pub async fn usage(client: &Client, args: UsageArgs) -> Result<ExitCode> {
    let mut query = vec![format!("by={}", args.by)];
    if let Some(project) = &args.project {
        query.push(format!("project={}", encode(project)));
    }
    if let Some(from) = args.from {
        query.push(format!("from={}", encode(&from.to_rfc3339())));
    }
    if let Some(to) = args.to {
        query.push(format!("to={}", encode(&to.to_rfc3339())));
    }
    if args.csv {
        query.push("format=csv".into());
        let response = client.stream(&format!("/v1/usage?{}", query.join("&"))).await?;
        print!("{}", response.text().await?);
        return Ok(ExitCode::SUCCESS);
    }
    let report: Value = client.get(&format!("/v1/usage?{}", query.join("&"))).await?;
    let rows: Vec<Vec<String>> = report["usage"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            let number = |key: &str| u[key].as_f64().unwrap_or(0.0);
            vec![
                safe(u["project"].as_str().unwrap_or_default()),
                u["start"].as_str().unwrap_or_default().to_string(),
                u["tasks"].to_string(),
                u["attempts"].to_string(),
                format!("{:.1}", number("cpu_seconds")),
                format!("{:.1}", number("memory_mib_seconds")),
                format!("{:.1}", number("wall_seconds")),
            ]
        })
        .collect();
    print_table(&["PROJECT", "START", "TASKS", "ATTEMPTS", "CPU-SECONDS", "MEMORY-MIB-SECONDS", "WALL-SECONDS"], &rows);
    Ok(ExitCode::SUCCESS)
}

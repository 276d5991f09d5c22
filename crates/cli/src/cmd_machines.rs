//! `shepherd machines`: provisioned machines and the autoscaled pools.

use crate::client::Client;
use crate::output::{ago, print_table};
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args)]
pub struct MachinesArgs {
    /// Print JSON (`{"machines": [...], "autoscale": {...}}`) instead of tables.
    #[arg(long)]
    json: bool,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn machines(client: &Client, args: MachinesArgs) -> Result<ExitCode> {
    let list: Value = client.admin().get("/v1/machines").await?;
    let autoscale: Value = client.admin().get("/v1/autoscale").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"machines": list["machines"], "autoscale": autoscale}))?);
        return Ok(ExitCode::SUCCESS);
    }
    let machines: Vec<shepherd_server::http::v1::MachineView> = serde_json::from_value(list["machines"].clone())?;
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.pool.clone(),
                m.state.to_string(),
                m.node_id.clone().unwrap_or_else(|| "-".into()),
                m.provider_id.as_deref().map(|p| p.chars().take(12).collect()).unwrap_or_else(|| "-".into()),
                format!("{}m/{}MiB", m.shape.cpu_millicores, m.shape.memory_mib),
                m.cost.clone().unwrap_or_else(|| "-".into()),
                ago(m.created_at),
                m.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["ID", "POOL", "STATE", "NODE", "PROVIDER ID", "SHAPE", "COST", "CREATED", "ERROR"], &rows);
    if autoscale["enabled"] != Value::Bool(true) {
        println!("\nno autoscaled pools (start the server with --autoscale-config)");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    let pools = autoscale["pools"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let c = &p["config"];
            let machines = p["machines"].as_object().map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "));
            vec![
                text(&p["name"]),
                format!("{}..{}", text(&c["min"]), text(&c["max"])),
                format!("{}m/{}MiB x{}", text(&c["cpu_millicores"]), text(&c["memory_mib"]), text(&c["max_tasks"])),
                text(&c["provisioner"]),
                text(&c["idle_time"]),
                machines.filter(|m| !m.is_empty()).unwrap_or_else(|| "none".into()),
                if p["failing"] == Value::Bool(true) { format!("failing: {}", text(&p["last_error"])) } else { "ok".into() },
            ]
        })
        .collect();
    print_table(&["POOL", "MIN..MAX", "SHAPE", "PROVISIONER", "IDLE TIME", "MACHINES", "STATUS"], &rows);
    Ok(ExitCode::SUCCESS)
}

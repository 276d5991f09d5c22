//! `shepherd events`: follows the cluster's event stream in the terminal,
//! resuming after the last event it printed if the connection breaks.

use crate::client::{encode, Client};
use crate::cmd_tasks::Outage;
use crate::output::safe;
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

#[derive(Args)]
pub struct EventsArgs {
    /// One JSON object per line (the event with its `id`), for scripts.
    #[arg(long)]
    json: bool,
    /// Only this project's events (admin; a project token sees its own only).
    #[arg(long)]
    project: Option<String>,
    /// Only this task's events.
    #[arg(long)]
    task: Option<String>,
    /// Only these kinds, comma-separated: task, node, project, token, secret, code, schedule.
    #[arg(long)]
    types: Option<String>,
    /// Start after this event id (from an earlier `--json` run) instead of now.
    #[arg(long)]
    after: Option<String>,
}

/// One Server-Sent Event as read so far.
#[derive(Default)]
struct Pending {
    id: Option<String>,
    data: String,
}

pub async fn events(client: &Client, args: EventsArgs) -> Result<ExitCode> {
    let mut query = Vec::new();
    for (key, value) in [("project", &args.project), ("task", &args.task), ("types", &args.types)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    let mut last = args.after.clone();
    let mut outage = Outage::default();
    let mut stdout = std::io::stdout();
    loop {
        let mut path = format!("/v1/events?{}", query.join("&"));
        if let Some(after) = &last {
            path.push_str(&format!("&after={}", encode(after)));
        }
        let mut response = match client.stream(&path).await {
            Ok(response) => response,
            Err(e) => {
                outage.pause(e).await?;
                continue;
            }
        };
        outage.over();
        let (mut buffer, mut pending) = (Vec::<u8>::new(), Pending::default());
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    // The server ended the stream (it stops, or could not
                    // read its store): come back in a moment.
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    break;
                }
                Err(e) => {
                    outage.pause(anyhow::Error::new(crate::client::Transient(format!("event stream broke: {e}")))).await?;
                    break;
                }
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    let event = std::mem::take(&mut pending);
                    if let Some(id) = event.id {
                        print_event(&mut stdout, &id, &event.data, args.json)?;
                        last = Some(id);
                    }
                } else if let Some(id) = line.strip_prefix("id:") {
                    pending.id = Some(id.trim().to_string());
                } else if let Some(data) = line.strip_prefix("data:") {
                    pending.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                }
            }
        }
    }
}

fn print_event(out: &mut impl Write, id: &str, data: &str, json: bool) -> Result<()> {
    let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(data) else { return Ok(()) };
    if json {
        event.insert("id".into(), Value::String(id.to_string()));
        writeln!(out, "{}", Value::Object(event))?;
    } else {
        writeln!(out, "{}", describe(&event))?;
    }
    out.flush()?;
    Ok(())
}

/// One line for a person: time, kind, what changed.
fn describe(event: &serde_json::Map<String, Value>) -> String {
    let text = |key: &str| event.get(key).and_then(Value::as_str).map(safe).unwrap_or_default();
    let kind = text("type");
    let what = match kind.as_str() {
        "task" => {
            let mut line = format!("{} {} {}", text("task"), text("project"), text("state"));
            if let Some(attempt) = event.get("attempt").and_then(Value::as_u64).filter(|a| *a > 0) {
                line.push_str(&format!(" attempt {attempt}"));
            }
            if event.contains_key("node") {
                line.push_str(&format!(" on {}", text("node")));
            }
            if let Some(code) = event.get("exit_code").and_then(Value::as_i64) {
                line.push_str(&format!(" exit {code}"));
            }
            if event.contains_key("reason") {
                line.push_str(&format!(": {}", text("reason")));
            }
            line
        }
        "node" => format!("{} {}", text("node"), text("state")),
        "machine" => {
            let mut line = format!("{} {} {}", text("machine"), text("pool"), text("state"));
            if event.contains_key("node") {
                line.push_str(&format!(" node {}", text("node")));
            }
            line
        }
        _ => format!("{} {} {}", text("project"), text("action"), text("name")),
    };
    format!("{}  {:<8} {what}", text("at"), kind)
}

//! Arrays and dependencies from the command line: an array shown (with a
//! progress bar while waiting), cancelled, its failed children retried,
//! and the graph around a task.

use crate::client::{encode, ApiFailure, Client};
use crate::output::{ago, print_table, safe};
use anyhow::{bail, Context, Result};
use clap::Args;
use shepherd_core::ArrayStatus;
use std::process::ExitCode;
use std::time::Duration;

/// An array, or `None` if there is none by that id (a 404).
pub async fn find_array(client: &Client, id: &str) -> Result<Option<ArrayStatus>> {
    match client.get::<ArrayStatus>(&format!("/v1/arrays/{}", encode(id))).await {
        Ok(array) => Ok(Some(array)),
        Err(e) if e.downcast_ref::<ApiFailure>().is_some_and(|f| f.status == 404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The id of array `array`'s child at `index` (the newest, if a retry ran it again).
pub async fn child_at(client: &Client, array: &str, index: u32) -> Result<String> {
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/tasks?array={}&limit=1000", encode(array));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        let page: serde_json::Value = client.get(&path).await?;
        let tasks: Vec<shepherd_core::Task> = serde_json::from_value(page["tasks"].clone()).context("bad task list from server")?;
        if let Some(task) = tasks.iter().find(|t| t.array.as_ref().is_some_and(|m| m.index == index)) {
            return Ok(task.id.to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => bail!(
                "array {array} has no child at index {index} (an index past its size, or one the queue has not reached: \
                 children are made as the queue reaches them)"
            ),
        }
    }
}

/// Whether an error is the API's 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| f.status == 404)
}

/// Whether an array has ended.
pub fn ended(array: &ArrayStatus) -> bool {
    matches!(array.state.as_str(), "succeeded" | "failed" | "cancelled")
}

fn count(array: &ArrayStatus, state: &str) -> u64 {
    array.counts.get(state).copied().unwrap_or(0)
}

/// `[#####.....] 512/1000 done (3 failed)`.
pub fn progress_line(array: &ArrayStatus) -> String {
    let done = ["succeeded", "failed", "timed_out", "cancelled"].iter().map(|s| count(array, s)).sum::<u64>();
    let total = u64::from(array.children).max(1);
    let width = 30u64;
    let filled = (done * width / total) as usize;
    format!(
        "[{}{}] {done}/{} done, {} running, {} queued, {} waiting, {} failed",
        "#".repeat(filled),
        ".".repeat(width as usize - filled),
        array.children,
        count(array, "running") + count(array, "scheduled"),
        count(array, "queued"),
        count(array, "waiting"),
        count(array, "failed") + count(array, "timed_out"),
    )
}

/// Prints an array in full.
pub fn print_array(array: &ArrayStatus) {
    println!("ID:          {} (array)", array.id);
    println!("State:       {}", array.state);
    if let Some(reason) = &array.reason {
        println!("Reason:      {}", safe(reason));
    }
    println!("Project:     {}", array.project);
    println!("Image:       {}", safe(&array.image));
    println!("Command:     {}", safe(&array.command.join(" ")));
    println!("Size:        {} ({} children)", array.size, array.children);
    if let Some(p) = array.parallelism {
        println!("Parallelism: {p}");
    }
    println!(
        "On failure:  {}",
        serde_json::to_value(array.failure_policy).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    );
    for dep in &array.depends_on {
        println!("Depends on:  {} ({})", dep.task, dep.on.as_str());
    }
    if let Some(old) = &array.retry_of {
        println!("Retry of:    {old}");
    }
    println!("Created:     {} ({})", array.created_at.to_rfc3339(), ago(array.created_at));
    if let Some(at) = array.finished_at {
        println!("Finished:    {}", at.to_rfc3339());
    }
    println!("Progress:    {}", progress_line(array));
    let rows: Vec<Vec<String>> =
        array.counts.iter().filter(|(_, n)| **n > 0).map(|(state, n)| vec![state.clone(), n.to_string()]).collect();
    print_table(&["STATE", "CHILDREN"], &rows);
    if !array.failed_indices.is_empty() {
        let shown: Vec<String> = array.failed_indices.iter().map(u32::to_string).collect();
        println!("Failed indices: {}", shown.join(","));
        println!("Run them again: shepherd retry {} --failed", array.id);
    }
}

/// Follows an array to its end, redrawing a progress line on a terminal
/// (a line per change otherwise); exit 0 if every child succeeded.
pub async fn wait_array(client: &Client, id: &str, quiet: bool) -> Result<ArrayStatus> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let array: ArrayStatus = client.get(&format!("/v1/arrays/{}", encode(id))).await?;
        let line = progress_line(&array);
        if !quiet && line != last {
            if tty {
                eprint!("\r{line}");
                std::io::stderr().flush().ok();
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if ended(&array) {
            if tty && !quiet {
                eprintln!();
            }
            return Ok(array);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Args)]
pub struct ResultArgs {
    /// Task id (or, with --index, an array's).
    id: String,
    /// The child of array ID at this index.
    #[arg(long, value_name = "N")]
    index: Option<u32>,
}

/// `shepherd result ID`: what the task wrote to `$SHEPHERD_RESULT_FILE`,
/// as it wrote it, on standard output.
pub async fn result(client: &Client, args: ResultArgs) -> Result<ExitCode> {
    use std::io::Write;
    let id = match args.index {
        None => args.id.clone(),
        Some(index) => child_at(client, &args.id, index).await?,
    };
    let mut response = client.stream(&format!("/v1/tasks/{}/result", encode(&id))).await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = response.chunk().await.context("the result's download broke")? {
        stdout.write_all(&chunk)?;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RetryArgs {
    /// The array whose failed children run again.
    id: String,
    /// Only the failed (and timed-out) children (required: the only retry there is).
    #[arg(long)]
    failed: bool,
    /// Follow the new array to its end with a progress bar.
    #[arg(long, short = 'w')]
    wait: bool,
}

/// `shepherd retry ARRAY --failed`: a new array of the failed indices.
pub async fn retry(client: &Client, args: RetryArgs) -> Result<ExitCode> {
    if !args.failed {
        bail!("--failed: say which children to run again (only the failed ones can be: `shepherd retry {} --failed`)", args.id);
    }
    let created: serde_json::Value =
        client.post(&format!("/v1/arrays/{}/retry", encode(&args.id)), &serde_json::json!({"failed": true})).await?;
    let id = created["id"].as_str().context("the server's answer has no id")?.to_string();
    println!("{id}");
    if args.wait {
        let done = wait_array(client, &id, false).await?;
        return Ok(if done.state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct GraphArgs {
    /// A task or an array.
    id: String,
    /// How many steps out from it (default 3).
    #[arg(long, default_value_t = 3)]
    depth: u32,
    /// Print JSON edges.
    #[arg(long)]
    json: bool,
}

/// The state of a task or an array, for the graph.
async fn state_of(client: &Client, id: &str) -> String {
    if let Ok(task) = client.get::<shepherd_core::Task>(&format!("/v1/tasks/{}", encode(id))).await {
        return task.state.to_string();
    }
    match find_array(client, id).await {
        Ok(Some(array)) => format!("array {} {}/{}", array.state, array.counts.get("succeeded").copied().unwrap_or(0), array.children),
        _ => "?".into(),
    }
}

/// `shepherd graph ID`: the DAG around a task or an array, with states:
/// what it waits for above, what waits for it below.
pub async fn graph(client: &Client, args: GraphArgs) -> Result<ExitCode> {
    let mut seen = std::collections::BTreeSet::new();
    let mut edges: Vec<(String, String, String)> = Vec::new();
    let mut frontier = vec![args.id.clone()];
    for _ in 0..args.depth.clamp(1, 10) {
        let mut next = Vec::new();
        for id in frontier {
            if !seen.insert(id.clone()) {
                continue;
            }
            let page: serde_json::Value = match client.get(&format!("/v1/tasks/{}/dependencies", encode(&id))).await {
                Ok(page) => page,
                Err(e) if is_not_found(&e) && id != args.id => continue,
                Err(e) => return Err(e),
            };
            for edge in page["edges"].as_array().cloned().unwrap_or_default() {
                let (task, dep, on) = (
                    edge["task"].as_str().unwrap_or("").to_string(),
                    edge["depends_on"].as_str().unwrap_or("").to_string(),
                    edge["on"].as_str().unwrap_or("").to_string(),
                );
                if !edges.iter().any(|(a, b, _)| *a == task && *b == dep) {
                    next.push(if task == id { dep.clone() } else { task.clone() });
                    edges.push((task, dep, on));
                }
            }
        }
        frontier = next;
    }
    if args.json {
        let list: Vec<serde_json::Value> =
            edges.iter().map(|(t, d, on)| serde_json::json!({"task": t, "depends_on": d, "on": on})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "edges": list }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut nodes: Vec<String> = edges.iter().flat_map(|(a, b, _)| [a.clone(), b.clone()]).collect();
    nodes.push(args.id.clone());
    nodes.sort();
    nodes.dedup();
    let mut states = std::collections::BTreeMap::new();
    for node in &nodes {
        states.insert(node.clone(), state_of(client, node).await);
    }
    let label = |id: &str| format!("{id} [{}]{}", states.get(id).map(String::as_str).unwrap_or("?"), if id == args.id { " *" } else { "" });
    if edges.is_empty() {
        println!("{}", label(&args.id));
        println!("(no dependencies either way)");
        return Ok(ExitCode::SUCCESS);
    }
    // Each dependency, then what waits for it, indented.
    for (task, dep, on) in &edges {
        println!("{}", label(dep));
        println!("  └─{on}─▶ {}", label(task));
    }
    Ok(ExitCode::SUCCESS)
}

//! Tasks shown: the list (`ps`) and one task in full (`inspect`), with how
//! the scheduler scored its candidate nodes (`inspect --explain`).

use crate::client::{encode, Client};
use crate::output::{ago, clip, plural, print_table, safe};
use anyhow::{Context, Result};
use clap::Args;
use shepherd_core::Task;
use std::process::ExitCode;

#[derive(Args)]
pub struct PsArgs {
    /// Only these states (comma-separated: waiting,queued,scheduled,running,succeeded,failed,timed_out,cancelled).
    #[arg(long, short = 's')]
    state: Option<String>,
    /// Only tasks with label KEY=VALUE (repeatable; all must match).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Only this project's tasks.
    #[arg(long)]
    project: Option<String>,
    /// Only the children of this array (in index order, with INDEX).
    #[arg(long, value_name = "ARRAY_ID")]
    array: Option<String>,
    /// Tasks per page (1 to 1000).
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: u32,
    /// Start after this cursor (printed at the end of the previous page).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow the cursor through every page.
    #[arg(long, short = 'a')]
    all: bool,
    /// Print JSON ({"tasks": [...], "next_cursor": ...}).
    #[arg(long)]
    json: bool,
}

/// `shepherd ps`: lists tasks, newest first, a page or (`--all`) every page.
pub async fn ps(client: &Client, args: PsArgs) -> Result<ExitCode> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(state) = &args.state {
        query.push(format!("state={}", encode(state)));
    }
    for label in &args.labels {
        query.push(format!("label={}", encode(label)));
    }
    if let Some(project) = &args.project {
        query.push(format!("project={}", encode(project)));
    }
    if let Some(array) = &args.array {
        query.push(format!("array={}", encode(array)));
    }
    let mut cursor = args.cursor.clone();
    let mut tasks: Vec<Task> = Vec::new();
    let next = loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(format!("cursor={}", encode(c)));
        }
        let page: serde_json::Value = client.get(&format!("/v1/tasks?{}", q.join("&"))).await?;
        let page_tasks: Vec<Task> = serde_json::from_value(page["tasks"].clone()).context("bad task list from server")?;
        tasks.extend(page_tasks);
        let next = page["next_cursor"].as_str().map(str::to_string);
        if args.all && next.is_some() {
            cursor = next;
        } else {
            break next;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tasks": tasks, "next_cursor": next }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.array.as_ref().map(|m| m.index.to_string()).unwrap_or_default(),
                clip(&t.image, 24),
                clip(&t.command.join(" "), 30),
                t.state.to_string(),
                t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                t.node_id.clone().unwrap_or_default(),
                ago(t.created_at),
            ]
        })
        .collect();
    print_table(&["ID", "INDEX", "IMAGE", "COMMAND", "STATE", "EXIT", "NODE", "CREATED"], &rows);
    if let Some(next) = next {
        eprintln!("more: shepherd ps --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct InspectArgs {
    /// Task or array id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// An array: follow it to its end with a progress bar first (exit 1
    /// unless every child succeeded).
    #[arg(long, short = 'w')]
    wait: bool,
    /// Also show how the scheduler scored the best candidate nodes.
    #[arg(long)]
    explain: bool,
}

/// `shepherd inspect`: one task in full, with its attempts.
pub async fn inspect(client: &Client, args: InspectArgs) -> Result<ExitCode> {
    let task: Task = match client.get(&format!("/v1/tasks/{}", encode(&args.id))).await {
        Ok(task) => task,
        Err(e) if super::arrays::is_not_found(&e) => {
            let Some(mut array) = super::arrays::find_array(client, &args.id).await? else { return Err(e) };
            if args.wait {
                array = super::arrays::wait_array(client, &args.id, args.json).await?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&array)?);
            } else {
                super::arrays::print_array(&array);
            }
            let ok = !args.wait || array.state == "succeeded";
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Err(e) => return Err(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |t: Option<shepherd_core::Timestamp>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
    println!("ID:          {}", task.id);
    println!("State:       {}{}", task.state, if task.cancel_requested && !task.state.is_terminal() { " (cancel requested)" } else { "" });
    if let Some(reason) = &task.reason {
        println!("Reason:      {}", safe(reason));
    }
    if let Some(member) = &task.array {
        println!("Array:       {} (index {} of {})", member.id, member.index, member.size);
    }
    for dep in &task.depends_on {
        println!("Depends on:  {} ({})", dep.task, dep.on.as_str());
    }
    if let Some(queue) = &task.queue {
        let cluster = queue.in_cluster.map(|n| format!(", #{n} in the cluster")).unwrap_or_default();
        println!("Queue:       #{} in project {}{cluster}", queue.in_project, safe(&task.project));
        match queue.estimated_start {
            Some(at) => println!("Starts:      about {} ({})", at.to_rfc3339(), safe(&queue.estimate)),
            None => println!("Starts:      {}", safe(&queue.estimate)),
        }
    }
    println!("Exit code:   {}", task.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()));
    println!("Image:       {}", safe(&task.image));
    println!("Command:     {}", safe(&task.command.join(" ")));
    println!("Project:     {}", task.project);
    println!("Resources:   {} millicores, {} MiB", task.resources.cpu_millicores, task.resources.memory_mib);
    println!("Timeout:     {}s", task.timeout_seconds);
    println!("Priority:    {}", task.priority);
    let tried = task.attempts.len();
    let now = if tried > 0 { format!("attempt {tried} of {}; ", task.retry.max_attempts) } else { String::new() };
    let rules: Vec<String> = task.retry.on.iter().map(shepherd_core::RetryRule::describe).collect();
    let rules = if rules.is_empty() { String::new() } else { format!("; {}", rules.join("; ")) };
    println!(
        "Retry:       {now}{} in all, {}s backoff{}",
        plural(u64::from(task.retry.max_attempts), "attempt"),
        task.retry.backoff_seconds,
        safe(&rules)
    );
    println!("Payload:     {}", plural(task.payload_bytes, "byte"));
    if let Some(reuse) = &task.reuse {
        println!(
            "Reuse:       warm containers, idle {}s, at most {} per container",
            reuse.idle_seconds,
            plural(u64::from(reuse.max_tasks), "task")
        );
    }
    for secret in &task.secrets {
        match &secret.env {
            Some(env) => println!("Secret:      {} (file, and ${})", safe(&secret.name), safe(env)),
            None => println!("Secret:      {} (file)", safe(&secret.name)),
        }
    }
    for volume in &task.volumes {
        println!("Volume:      {} at {}{}", safe(&volume.name), safe(&volume.target), if volume.read_only { " (read-only)" } else { "" });
    }
    if !task.networks.is_empty() {
        println!("Networks:    {}", safe(&task.networks.join(", ")));
    }
    for (k, v) in &task.env {
        println!("Env:         {}={}", safe(k), safe(v));
    }
    for (k, v) in &task.labels {
        println!("Label:       {}={}", safe(k), safe(v));
    }
    for c in &task.constraints {
        println!("Constraint:  {}", safe(c));
    }
    if let Some(code) = &task.code {
        println!("Code:        {} (revision {})", safe(&code.name), code.revision);
    }
    if let Some(progress) = &task.progress {
        println!("Progress:    {}% {}", progress.percent, safe(&progress.message));
    }
    if let Some(url) = &task.webhook {
        println!("Webhook:     {} (shepherd webhook show {})", safe(url), task.id);
    }
    println!("Node:        {}", safe(task.node_id.as_deref().unwrap_or("-")));
    println!("Created:     {}", task.created_at.to_rfc3339());
    if let Some(at) = task.start_at {
        println!("Start at:    {} (delayed)", at.to_rfc3339());
    }
    println!("Scheduled:   {}", opt(task.scheduled_at));
    println!("Started:     {}", opt(task.started_at));
    println!("Finished:    {}", opt(task.finished_at));
    if !task.attempts.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = task
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.number.to_string(),
                    a.node_id.clone(),
                    opt(a.started_at),
                    opt(a.finished_at),
                    a.outcome.map(|o| o.as_str().to_string()).unwrap_or_else(|| "in progress".into()),
                    a.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    match &a.runtime {
                        Some(r) => format!("{} {}", if r.warm { "warm" } else { "cold" }, safe(&r.container)),
                        None => "-".into(),
                    },
                    match a.usage {
                        Some(u) => format!("{:.2}s cpu, {} peak", u.cpu_ms as f64 / 1000.0, mib(u.peak_memory_bytes)),
                        None => "-".into(),
                    },
                    a.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["ATTEMPT", "NODE", "STARTED", "FINISHED", "OUTCOME", "EXIT", "CONTAINER", "USAGE", "REASON"], &rows);
        // The image each attempt ran, exactly (a tag may move between attempts).
        for a in &task.attempts {
            if let Some(digest) = a.runtime.as_ref().and_then(|r| r.image_digest.as_deref()) {
                println!("Attempt {} ran image {}", a.number, safe(digest));
            }
            if let Some(bytes) = a.result_bytes {
                println!("Attempt {} left a result of {} (shepherd result {})", a.number, plural(bytes, "byte"), task.id);
            }
        }
    }
    if args.explain {
        explain(client, &args.id).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes as MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The scores of the best candidates of the task's latest placement.
async fn explain(client: &Client, id: &str) -> Result<()> {
    let placement: serde_json::Value = client.get(&format!("/v1/tasks/{}/placement", encode(id))).await?;
    println!();
    let candidates = placement["candidates"].as_array().cloned().unwrap_or_default();
    if candidates.is_empty() {
        match placement["reason"].as_str() {
            Some(reason) => println!("Placement:   not placed: {}", safe(reason)),
            None => println!("Placement:   no scores (placed before this server started, or long ago)"),
        }
        return Ok(());
    }
    let mut plugins: Vec<String> =
        candidates.iter().flat_map(|c| c["scores"].as_object().into_iter().flat_map(|m| m.keys().cloned())).collect();
    plugins.sort();
    plugins.dedup();
    let chosen = placement["node_id"].as_str().unwrap_or_default();
    let mut header = vec!["NODE".to_string(), "TOTAL".to_string()];
    header.extend(plugins.iter().map(|p| p.to_uppercase()));
    let rows: Vec<Vec<String>> = candidates
        .iter()
        .map(|c| {
            let node = c["node_id"].as_str().unwrap_or_default();
            let mut row = vec![
                if node == chosen { format!("{node} (chosen)") } else { node.to_string() },
                format!("{:.3}", c["total"].as_f64().unwrap_or(0.0)),
            ];
            row.extend(plugins.iter().map(|p| c["scores"][p].as_f64().map(|v| format!("{v:.3}")).unwrap_or_default()));
            row
        })
        .collect();
    println!("Placement (best candidates, weighted scores):");
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    print_table(&header, &rows);
    Ok(())
}

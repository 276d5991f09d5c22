//! Task commands: run, ps, inspect, logs, cancel, wait.

use crate::client::{encode, is_transient, ApiFailure, Client, Transient};
use crate::output::{ago, clip, exit_code_of, plural, print_table, safe};
use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use shepherd_core::{Resources, RetryPolicy, Task, TaskSpec};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) fn parse_timeout(text: &str) -> Result<u32, String> {
    let seconds = match text.parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (use 30s, 5m, 1h)"))?.as_secs(),
    };
    u32::try_from(seconds).map_err(|_| format!("`{text}` is too long"))
}

pub(crate) fn parse_time(text: &str) -> Result<shepherd_core::Timestamp, String> {
    shepherd_core::Timestamp::parse_rfc3339(text).map_err(|e| format!("`{text}`: {e} (use e.g. 2026-12-01T09:00:00Z)"))
}

pub(crate) fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{text}`: use KEY=VALUE"))
}

#[derive(Args)]
pub struct RunArgs {
    /// Follow the task to its end, stream its output, exit with its exit code.
    #[arg(long, short = 'w')]
    wait: bool,
    /// Print the created task (or, with --wait, the finished task) as JSON.
    #[arg(long)]
    json: bool,
    /// CPU to reserve, in millicores (1000 = one core).
    #[arg(long, value_name = "MILLICORES")]
    cpu: Option<u32>,
    /// Memory to reserve, in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// Longest run time: seconds, or 30s, 5m, 2h (default 1h).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<u32>,
    /// Higher runs first (-1000 to 1000; default 0).
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Extra attempts after a failed or lost one (0 to 99; default 0).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=99))]
    retries: Option<u32>,
    /// Seconds before the first retry; doubles each time (at most 3600; default 5).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=3600))]
    backoff: Option<u32>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// Label KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// Placement constraint, e.g. 'node.labels.region==eu' (repeatable).
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Payload file handed to the task (`-` reads standard input).
    #[arg(long, value_name = "FILE|-")]
    payload: Option<String>,
    /// Project the task belongs to (default: the token's project; with the admin token, `default`).
    #[arg(long)]
    project: Option<String>,
    /// A project secret for the task, NAME or NAME:ENV_VAR (repeatable): a
    /// read-only file at $SHEPHERD_SECRETS_DIR/NAME, and the variable if named.
    #[arg(long = "secret", value_name = "NAME[:ENV]")]
    secrets: Vec<String>,
    /// Placement profile (spread, binpack, random, or one from the scheduler config).
    #[arg(long)]
    profile: Option<String>,
    /// Node pool to run in.
    #[arg(long)]
    pool: Option<String>,
    /// Network: none (default), bridge (the project's own), or the name of
    /// one of the project's networks (`shepherd project network`);
    /// repeatable to join several.
    #[arg(long = "network")]
    network: Vec<String>,
    /// When to pull the image: always (with the project's registry login;
    /// a failed pull fails the attempt), if_not_present (default) or never.
    #[arg(long, value_name = "POLICY", value_parser = ["always", "if_not_present", "never"])]
    pull: Option<String>,
    /// How long the image's pull may take (30s, 10m; default 10m), apart
    /// from --timeout, which starts when the container does.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pull_timeout: Option<u32>,
    /// Mount a volume of the project: NAME:/target[:ro] (repeatable; make
    /// it with `shepherd volume create`). Never a host path.
    #[arg(short = 'v', long = "volume", value_name = "NAME:/TARGET[:ro]", value_parser = parse_volume)]
    volumes: Vec<shepherd_core::VolumeMount>,
    /// Run in a warm container reused by this project's tasks of the same
    /// image, user, workdir, network and limits (reset between tasks).
    #[arg(long)]
    reuse: bool,
    /// With --reuse: how long a warm container waits for the next task
    /// (seconds, or 30s, 5m; default 60s). Implies --reuse.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    reuse_idle: Option<u32>,
    /// With --reuse: tasks one warm container runs before it is replaced
    /// (default 1000). Implies --reuse.
    #[arg(long, value_name = "N")]
    reuse_max_tasks: Option<u32>,
    /// The user the command runs as, as `docker run --user` takes it
    /// (NAME, UID or UID:GID).
    #[arg(long, short = 'u', value_name = "USER")]
    user: Option<String>,
    /// The working directory in the container (absolute).
    #[arg(long, value_name = "DIR")]
    workdir: Option<String>,
    /// A device the node offers, by name (e.g. fuse), if the project's
    /// policy allows it (repeatable).
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
    /// GPUs the task needs.
    #[arg(long, value_name = "N")]
    gpus: Option<u32>,
    /// A private scratch directory (a tmpfs owned by the task's numeric
    /// user), TARGET:SIZE_MIB, e.g. /work:256.
    #[arg(long, value_name = "TARGET:MIB", value_parser = parse_scratch)]
    scratch: Option<shepherd_core::ScratchSpec>,
    /// Wait this long after submission before the first attempt (30s, 10m, 2h; at most a year).
    #[arg(long, value_parser = parse_timeout, conflicts_with = "start_at")]
    delay: Option<u32>,
    /// Start no earlier than this time (RFC 3339 in UTC, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    start_at: Option<shepherd_core::Timestamp>,
    /// POST the task's JSON to this URL when it ends, signed with the
    /// project's webhook secret (`shepherd webhook secret`).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// Make the task from this code (see `shepherd code push`): the flags
    /// given override the code's settings; the arguments after `--`, if
    /// any, its command. No IMAGE then.
    #[arg(long, value_name = "NAME")]
    code: Option<String>,
    /// With --code: the code's revision to run (default: its latest).
    #[arg(long, value_name = "N", requires = "code")]
    revision: Option<u32>,
    /// The image to run (not with --code).
    #[arg(required_unless_present = "code")]
    image: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl RunArgs {
    /// Whether the command follows the task to its end (and exits with its code).
    pub fn waits(&self) -> bool {
        self.wait
    }
}

fn read_payload(source: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if source == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading the payload from standard input")?;
    } else {
        bytes = std::fs::read(source).with_context(|| format!("reading the payload file {source}"))?;
    }
    Ok(bytes)
}

pub async fn run(client: &Client, args: RunArgs) -> Result<ExitCode> {
    // With --code every argument is the command (clap gives the first to IMAGE).
    let command = match (&args.code, args.image.clone()) {
        (Some(_), Some(first)) => std::iter::once(first).chain(args.command.iter().cloned()).collect(),
        _ => args.command.clone(),
    };
    let mut spec = TaskSpec::new(args.image.clone().filter(|_| args.code.is_none()).unwrap_or_default(), command);
    spec.resources = Resources {
        cpu_millicores: args.cpu.unwrap_or(Resources::default().cpu_millicores),
        memory_mib: args.memory.unwrap_or(Resources::default().memory_mib),
    };
    if let Some(timeout) = args.timeout {
        spec.timeout_seconds = timeout;
    }
    spec.priority = args.priority.unwrap_or(0);
    let defaults = RetryPolicy::default();
    spec.retry = RetryPolicy {
        max_attempts: args.retries.unwrap_or(0).saturating_add(1),
        backoff_seconds: args.backoff.unwrap_or(defaults.backoff_seconds),
    };
    spec.env = args.env.iter().cloned().collect();
    spec.labels = args.labels.iter().cloned().collect();
    spec.constraints = args.constraints.clone();
    spec.project = args.project.clone().unwrap_or_default();
    spec.profile = args.profile.clone();
    spec.pool = args.pool.clone();
    spec.network = TaskSpec::default_network();
    for network in &args.network {
        match network.as_str() {
            "none" | "bridge" => spec.network = network.clone(),
            named => spec.networks.push(named.to_string()),
        }
    }
    spec.volumes = args.volumes.clone();
    spec.pull_timeout_seconds = args.pull_timeout;
    if let Some(policy) = &args.pull {
        spec.pull_policy = serde_json::from_value(serde_json::Value::String(policy.clone()))?;
    }
    spec.delay_seconds = args.delay;
    spec.start_at = args.start_at;
    spec.webhook = args.webhook.clone();
    spec.user = args.user.clone();
    spec.workdir = args.workdir.clone();
    spec.devices = args.devices.clone();
    spec.gpus = args.gpus.unwrap_or(0);
    spec.scratch = args.scratch.clone();
    if args.reuse || args.reuse_idle.is_some() || args.reuse_max_tasks.is_some() {
        let defaults = shepherd_core::ReusePolicy::default();
        spec.reuse = Some(shepherd_core::ReusePolicy {
            idle_seconds: args.reuse_idle.unwrap_or(defaults.idle_seconds),
            max_tasks: args.reuse_max_tasks.unwrap_or(defaults.max_tasks),
        });
    }
    for secret in args.secrets.clone() {
        let (name, env) = match secret.split_once(':') {
            Some((name, env)) => (name.to_string(), Some(env.to_string())),
            None => (secret, None),
        };
        spec.secrets.push(shepherd_core::SecretRef { name, env });
    }
    if let Some(source) = &args.payload {
        spec.payload = Some(base64::engine::general_purpose::STANDARD.encode(read_payload(source)?));
    }
    let task: Task = match &args.code {
        None => client.post("/v1/tasks", &spec).await.map_err(in_flag_terms)?,
        Some(code) => client.post("/v1/tasks", &code_request(&args, code, spec)?).await.map_err(in_flag_terms)?,
    };
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&task)?);
        } else {
            println!("{}", task.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // While it waits to be placed, say why (and again when the reason changes).
    let watcher = tokio::spawn(say_why_it_waits(client.clone(), task.id.to_string()));
    if !args.json {
        follow_logs(client, &task.id.to_string(), "all").await?;
    }
    let done = wait_for_end(client, &task.id.to_string(), None).await;
    watcher.abort();
    let done = done?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if !matches!(done.state, shepherd_core::TaskState::Succeeded) {
        eprintln!("shepherd: task {} {}{}", done.id, done.state, done.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default());
    }
    Ok(ExitCode::from(exit_code_of(&done)))
}

/// A task naming a code carries only what the flags set: the rest comes
/// from the code.
fn code_request(args: &RunArgs, code: &str, spec: TaskSpec) -> Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(mut full) = serde_json::to_value(&spec)? else { bail!("a task is a JSON object") };
    let mut keep = |key: &str, set: bool| {
        if !set {
            full.remove(key);
        }
    };
    keep("image", false);
    keep("command", !spec.command.is_empty());
    keep("env", !args.env.is_empty());
    keep("labels", !args.labels.is_empty());
    keep("constraints", !args.constraints.is_empty());
    keep("timeout_seconds", args.timeout.is_some());
    keep("priority", args.priority.is_some());
    keep("retry", args.retries.is_some() || args.backoff.is_some());
    keep("network", !args.network.is_empty());
    keep("networks", !spec.networks.is_empty());
    keep("volumes", !args.volumes.is_empty());
    keep("pull_policy", args.pull.is_some());
    keep("user", args.user.is_some());
    keep("workdir", args.workdir.is_some());
    keep("devices", !args.devices.is_empty());
    keep("gpus", args.gpus.is_some());
    keep("scratch", args.scratch.is_some());
    let mut body = full;
    if args.cpu.is_none() && args.memory.is_none() {
        body.remove("resources");
    } else if let Some(resources) = body.get_mut("resources").and_then(|r| r.as_object_mut()) {
        // Only what was given: the other comes from the code (or the default).
        if args.cpu.is_none() {
            resources.remove("cpu_millicores");
        }
        if args.memory.is_none() {
            resources.remove("memory_mib");
        }
    }
    body.insert("code".into(), code.into());
    if let Some(revision) = args.revision {
        body.insert("code_revision".into(), revision.into());
    }
    Ok(body)
}

/// `TARGET:SIZE_MIB`: a task's scratch directory.
fn parse_scratch(text: &str) -> Result<shepherd_core::ScratchSpec, String> {
    let (target, size) = text.rsplit_once(':').ok_or_else(|| format!("`{text}`: use TARGET:SIZE_MIB, e.g. /work:256"))?;
    let size_mib = size.parse().map_err(|_| format!("`{size}` is not a size in MiB"))?;
    Ok(shepherd_core::ScratchSpec { target: target.to_string(), size_mib })
}

/// `NAME:/target[:ro]`: a project volume, never a host path.
fn parse_volume(text: &str) -> Result<shepherd_core::VolumeMount, String> {
    shepherd_core::VolumeMount::parse(text)
}

/// An API error about a task's field, said in the terms of `run`'s flags.
fn in_flag_terms(error: anyhow::Error) -> anyhow::Error {
    let Some(failure) = error.downcast_ref::<ApiFailure>() else { return error };
    let Some(field) = failure.field.as_deref() else { return error };
    let base = field.split('[').next().unwrap_or(field);
    let flag = match base {
        "image" => "IMAGE",
        "command" => "COMMAND",
        "resources.cpu_millicores" => "--cpu",
        "resources.memory_mib" => "--memory",
        "timeout_seconds" => "--timeout",
        "priority" => "--priority",
        "retry.max_attempts" => return anyhow::anyhow!("--retries: at most 99 extra attempts ({})", failure.message),
        "retry.backoff_seconds" => "--backoff",
        "env" => "--env",
        "labels" => "--label",
        "constraints" => "--constraint",
        "payload" => "--payload",
        "project" => "--project",
        "secrets" => "--secret",
        "profile" => "--profile",
        "pool" => "--pool",
        "network" | "networks" => "--network",
        "volumes" => "--volume",
        "pull_timeout_seconds" => "--pull-timeout",
        "reuse.idle_seconds" => "--reuse-idle",
        "delay_seconds" => "--delay",
        "start_at" => "--start-at",
        "reuse.max_tasks" => "--reuse-max-tasks",
        "user" => "--user",
        "workdir" => "--workdir",
        "devices" => "--device",
        "gpus" => "--gpus",
        "scratch" => "--scratch",
        "webhook" => "--webhook",
        _ => return error,
    };
    anyhow::anyhow!("{flag}: {} (HTTP {})", failure.message, failure.status)
}

/// How long a command following a task keeps trying to reach a server that
/// went away (restarting, say) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// A stretch of time without the server.
#[derive(Default)]
pub struct Outage {
    since: Option<std::time::Instant>,
}

impl Outage {
    /// After a failure: wait a moment if it may pass, else give up with it.
    pub async fn pause(&mut self, error: anyhow::Error) -> Result<()> {
        if !is_transient(&error) {
            return Err(error);
        }
        let since = match self.since {
            Some(since) => since,
            None => {
                let first_line = error.to_string().lines().next().unwrap_or_default().to_string();
                eprintln!("shepherd: lost the server ({first_line}); reconnecting");
                *self.since.insert(std::time::Instant::now())
            }
        };
        if since.elapsed() > RECONNECT_FOR {
            return Err(error.context(format!("gave up after {}", humantime::format_duration(RECONNECT_FOR))));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    /// The server answered again.
    pub fn over(&mut self) {
        if self.since.take().is_some() {
            eprintln!("shepherd: reconnected");
        }
    }
}

/// Streams a task's output until it ends, reconnecting (and resuming after
/// the bytes already written) if the server goes away meanwhile.
async fn follow_logs(client: &Client, id: &str, stream: &str) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut offset: u64 = 0;
    let mut outage = Outage::default();
    loop {
        let path = format!("/v1/tasks/{id}/logs?follow=true&stream={stream}&offset={offset}");
        let mut response = match client.stream(&path).await {
            Ok(response) => response,
            Err(e) => {
                outage.pause(e).await?;
                continue;
            }
        };
        outage.over();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    stdout.write_all(&chunk)?;
                    stdout.flush()?;
                    offset += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(e) => {
                    outage.pause(anyhow::Error::new(Transient(format!("log stream broke: {e}")))).await?;
                    break;
                }
            }
        }
        // The stream ends when the task does; if it ended for another reason, follow on.
        match client.get::<Task>(&format!("/v1/tasks/{id}")).await {
            Ok(task) if task.state.is_terminal() => return Ok(()),
            Ok(_) => {}
            Err(e) => outage.pause(e).await?,
        }
    }
}

/// While the task is queued, prints why it waits, once and on each change.
async fn say_why_it_waits(client: Client, id: String) {
    let mut said: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(task) = client.get::<Task>(&format!("/v1/tasks/{id}")).await else { continue };
        if task.state != shepherd_core::TaskState::Queued {
            if task.state.is_terminal() || task.attempts.iter().all(|a| a.outcome.is_some()) {
                // Back in the queue later (a retry) is reported like a first wait.
                said = None;
            }
            if task.state.is_terminal() {
                return;
            }
            continue;
        }
        if let Some(reason) = task.reason {
            if said.as_deref() != Some(reason.as_str()) {
                eprintln!("shepherd: task {id} waits: {}", crate::output::safe(&reason));
                said = Some(reason);
            }
        }
    }
}

/// Waits for the task to end (long polls), riding out a server restart.
async fn wait_for_end(client: &Client, id: &str, limit: Option<Duration>) -> Result<Task> {
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    let mut outage = Outage::default();
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()).as_secs().max(1)).unwrap_or(60).min(60);
        match client.get::<Task>(&format!("/v1/tasks/{id}/wait?timeout_seconds={remaining}")).await {
            Ok(task) => {
                outage.over();
                if task.state.is_terminal() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return Ok(task);
                }
            }
            Err(e) => outage.pause(e).await?,
        }
    }
}

#[derive(Args)]
pub struct PsArgs {
    /// Only these states (comma-separated: queued,scheduled,running,succeeded,failed,timed_out,cancelled).
    #[arg(long, short = 's')]
    state: Option<String>,
    /// Only tasks with label KEY=VALUE (repeatable; all must match).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Only this project's tasks.
    #[arg(long)]
    project: Option<String>,
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
                clip(&t.image, 24),
                clip(&t.command.join(" "), 30),
                t.state.to_string(),
                t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                t.node_id.clone().unwrap_or_default(),
                ago(t.created_at),
            ]
        })
        .collect();
    print_table(&["ID", "IMAGE", "COMMAND", "STATE", "EXIT", "NODE", "CREATED"], &rows);
    if let Some(next) = next {
        eprintln!("more: shepherd ps --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct InspectArgs {
    /// Task id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also show how the scheduler scored the best candidate nodes.
    #[arg(long)]
    explain: bool,
}

pub async fn inspect(client: &Client, args: InspectArgs) -> Result<ExitCode> {
    let task: Task = client.get(&format!("/v1/tasks/{}", encode(&args.id))).await?;
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
    println!("Retry:       {} in all, {}s backoff", plural(u64::from(task.retry.max_attempts), "attempt"), task.retry.backoff_seconds);
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

#[derive(Args)]
pub struct LogsArgs {
    /// Keep following new output until the task ends.
    #[arg(long, short = 'f')]
    follow: bool,
    /// stdout, stderr or all.
    #[arg(long, default_value = "all", value_parser = ["all", "stdout", "stderr"])]
    stream: String,
    /// Task id.
    id: String,
}

pub async fn logs(client: &Client, args: LogsArgs) -> Result<ExitCode> {
    let id = encode(&args.id);
    if args.follow {
        follow_logs(client, &id, &args.stream).await?;
    } else {
        let mut response = client.stream(&format!("/v1/tasks/{id}/logs?stream={}", args.stream)).await?;
        let mut stdout = std::io::stdout();
        while let Some(chunk) = response.chunk().await.context("log stream broke")? {
            stdout.write_all(&chunk)?;
        }
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CancelArgs {
    /// Task ids.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Print the tasks as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn cancel(client: &Client, args: CancelArgs) -> Result<ExitCode> {
    let mut failed = false;
    for id in &args.ids {
        match client.post::<_, Task>(&format!("/v1/tasks/{}/cancel", encode(id)), &serde_json::json!({})).await {
            Ok(task) if args.json => println!("{}", serde_json::to_string(&task)?),
            Ok(task) => println!("{} {}", task.id, if task.state.is_terminal() { task.state.to_string() } else { "cancelling".into() }),
            Err(e) => {
                eprintln!("error: {id}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Args)]
pub struct WaitArgs {
    /// Task id.
    id: String,
    /// Give up after this long (30s, 5m); exit 124 if the task is still going.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the final task as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn wait(client: &Client, args: WaitArgs) -> Result<ExitCode> {
    let task = wait_for_end(client, &encode(&args.id), args.timeout).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else {
        println!("{} {}{}", task.id, task.state, task.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default());
    }
    if task.state.is_terminal() {
        Ok(ExitCode::from(exit_code_of(&task)))
    } else {
        Ok(ExitCode::from(124))
    }
}

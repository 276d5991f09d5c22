//! `shepherd code …` and `shepherd schedule …`: codes (named, versioned
//! task templates) and schedules, through the REST API.

use crate::client::{encode, Client};
use crate::cmd_tasks::{parse_pair, parse_time, parse_timeout};
use crate::output::{print_table, safe};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use shepherd_core::{Code, Schedule};
use std::process::ExitCode;

#[derive(Args)]
pub struct CodeArgs {
    /// The project (default: the token's; with the admin token, `default`).
    #[arg(long, global = true)]
    project: Option<String>,
    #[command(subcommand)]
    command: CodeCommand,
}

#[derive(Subcommand)]
enum CodeCommand {
    /// Push a code: a new revision (the first if NAME is new).
    /// shepherd code push NAME IMAGE [-- COMMAND ARGS...], or
    /// shepherd code push NAME --zip FILE --runtime sh --exec worker.sh
    Push(Box<PushArgs>),
    /// List codes, each at its latest revision.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a code (its latest revision, or --revision N).
    Inspect {
        name: String,
        #[arg(long)]
        revision: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List a code's revisions, newest first.
    Revisions { name: String },
    /// Make revision N current again (as a new revision, its copy).
    Rollback { name: String, revision: u32 },
    /// Delete a code (tasks made from it go on).
    Rm { name: String },
}

#[derive(Args)]
struct PushArgs {
    name: String,
    /// The image (with --zip: default, the runtime's stack image).
    #[arg(required_unless_present = "zip")]
    image: Option<String>,
    /// A zip code package: stored in the project, unpacked read-only at
    /// /task for the code's tasks, which run its --exec file as IronWorker
    /// ran workers (`sh worker.sh -payload FILE -id TASK_ID -d /task`).
    #[arg(long, value_name = "FILE", requires = "exec")]
    zip: Option<std::path::PathBuf>,
    /// With --zip: the runtime (its interpreter, and the server's --stack image).
    #[arg(long, default_value = "sh", requires = "zip")]
    runtime: String,
    /// With --zip: the file in the package to run.
    #[arg(long = "exec", value_name = "FILE", requires = "zip")]
    exec: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// Environment variable KEY=VALUE for every task (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// Label KEY=VALUE for every task (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// Default CPU in millicores.
    #[arg(long, value_name = "MILLICORES")]
    cpu: Option<u32>,
    /// Default memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// Default timeout (seconds, or 30s, 5m, 2h).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<u32>,
    /// Default extra attempts after a failure (0 to 99).
    #[arg(long)]
    retries: Option<u32>,
    /// At most N of its tasks scheduled or running at once, cluster-wide.
    #[arg(long, value_name = "N")]
    max_concurrency: Option<u32>,
    /// Default placement profile.
    #[arg(long)]
    profile: Option<String>,
    /// Default node pool.
    #[arg(long)]
    pool: Option<String>,
    /// Default network (none or bridge).
    #[arg(long)]
    network: Option<String>,
    /// Run its tasks in warm, reused containers.
    #[arg(long)]
    reuse: bool,
    /// A description for people.
    #[arg(long)]
    description: Option<String>,
    /// POST each task's JSON here when it ends (see `shepherd webhook`).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    #[arg(long)]
    json: bool,
}

fn query(project: &Option<String>) -> String {
    project.as_ref().map_or(String::new(), |p| format!("?project={}", encode(p)))
}

fn code_rows(codes: &[Code]) -> Vec<Vec<String>> {
    codes
        .iter()
        .map(|c| {
            vec![
                safe(&c.spec.name),
                safe(&c.spec.project),
                c.revision.to_string(),
                safe(&c.spec.image),
                c.spec.max_concurrency.map_or("-".into(), |m| m.to_string()),
                c.created_at.to_rfc3339(),
            ]
        })
        .collect()
}

pub async fn code(client: &Client, args: CodeArgs) -> Result<ExitCode> {
    let q = query(&args.project);
    match args.command {
        CodeCommand::Push(push) => {
            let mut body = Map::new();
            body.insert("name".into(), push.name.clone().into());
            if let Some(image) = push.image.clone() {
                body.insert("image".into(), image.into());
            }
            if let (Some(path), Some(exec)) = (&push.zip, &push.exec) {
                let zip = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let stored: Value = client.post_bytes(&format!("/v1/packages{q}"), zip, "application/zip").await?;
                body.insert(
                    "package".into(),
                    json!({"digest": stored["digest"], "size": stored["size"], "runtime": push.runtime, "executable": exec}),
                );
            }
            if let Some(project) = &args.project {
                body.insert("project".into(), project.clone().into());
            }
            if !push.command.is_empty() {
                body.insert("command".into(), json!(push.command));
            }
            if !push.env.is_empty() {
                body.insert("env".into(), json!(push.env.into_iter().collect::<std::collections::BTreeMap<String, String>>()));
            }
            if !push.labels.is_empty() {
                body.insert("labels".into(), json!(push.labels.into_iter().collect::<std::collections::BTreeMap<String, String>>()));
            }
            if push.cpu.is_some() || push.memory.is_some() {
                let mut resources = Map::new();
                if let Some(cpu) = push.cpu {
                    resources.insert("cpu_millicores".into(), cpu.into());
                }
                if let Some(memory) = push.memory {
                    resources.insert("memory_mib".into(), memory.into());
                }
                body.insert("resources".into(), Value::Object(resources));
            }
            let optional: [(&str, Option<Value>); 8] = [
                ("webhook", push.webhook.map(Value::from)),
                ("timeout_seconds", push.timeout.map(Value::from)),
                ("retry", push.retries.map(|r| json!({"max_attempts": r.saturating_add(1)}))),
                ("max_concurrency", push.max_concurrency.map(Value::from)),
                ("profile", push.profile.map(Value::from)),
                ("pool", push.pool.map(Value::from)),
                ("network", push.network.map(Value::from)),
                ("description", push.description.map(Value::from)),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    body.insert(key.into(), value);
                }
            }
            if push.reuse {
                body.insert("reuse".into(), json!({}));
            }
            let code: Code = client.post("/v1/codes", &body).await?;
            if push.json {
                println!("{}", serde_json::to_string_pretty(&code)?);
            } else {
                println!("code {} revision {} pushed to project {}", code.spec.name, code.revision, code.spec.project);
            }
        }
        CodeCommand::Ls { json } => {
            let list: Value = client.get(&format!("/v1/codes{q}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let codes: Vec<Code> = serde_json::from_value(list["codes"].clone()).context("reading the code list")?;
            print_table(&["NAME", "PROJECT", "REVISION", "IMAGE", "MAX", "PUSHED"], &code_rows(&codes));
        }
        CodeCommand::Inspect { name, revision, json } => {
            let mut path = format!("/v1/codes/{}{q}", encode(&name));
            if let Some(revision) = revision {
                path.push_str(&format!("{}revision={revision}", if q.is_empty() { '?' } else { '&' }));
            }
            let code: Value = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&code)?);
                return Ok(ExitCode::SUCCESS);
            }
            let code: Code = serde_json::from_value(code).context("reading the code")?;
            let s = &code.spec;
            println!("Code:        {}", safe(&s.name));
            println!("Project:     {}", safe(&s.project));
            println!("Revision:    {}{}", code.revision, code.rolled_back_from.map_or(String::new(), |r| format!(" (copy of {r})")));
            println!("Pushed:      {}", code.created_at.to_rfc3339());
            println!("Image:       {}", safe(&s.image));
            if !s.command.is_empty() {
                println!("Command:     {}", safe(&s.command.join(" ")));
            }
            if let Some(r) = s.resources {
                println!("Resources:   {} millicores, {} MiB", r.cpu_millicores, r.memory_mib);
            }
            if let Some(t) = s.timeout_seconds {
                println!("Timeout:     {t}s");
            }
            if let Some(r) = &s.retry {
                println!("Attempts:    {}", r.max_attempts);
            }
            if let Some(m) = s.max_concurrency {
                println!("Concurrency: at most {m} at once");
            }
            for (k, v) in &s.env {
                println!("Env:         {}={}", safe(k), safe(v));
            }
            for (k, v) in &s.labels {
                println!("Label:       {}={}", safe(k), safe(v));
            }
            if let Some(d) = &s.description {
                println!("Description: {}", safe(d));
            }
        }
        CodeCommand::Revisions { name } => {
            let list: Value = client.get(&format!("/v1/codes/{}/revisions{q}", encode(&name))).await?;
            let codes: Vec<Code> = serde_json::from_value(list["revisions"].clone()).context("reading the revisions")?;
            print_table(&["NAME", "PROJECT", "REVISION", "IMAGE", "MAX", "PUSHED"], &code_rows(&codes));
        }
        CodeCommand::Rollback { name, revision } => {
            let code: Code = client.post(&format!("/v1/codes/{}/rollback{q}", encode(&name)), &json!({ "revision": revision })).await?;
            println!("code {} revision {} is a copy of revision {revision}", code.spec.name, code.revision);
        }
        CodeCommand::Rm { name } => {
            client.send_empty::<()>(reqwest::Method::DELETE, &format!("/v1/codes/{}{q}", encode(&name)), None).await?;
            println!("code {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Create a schedule of a code (--code) or an image:
    /// shepherd schedule create (--cron EXPR | --every 5m) (--code NAME | IMAGE [-- CMD...])
    Create(Box<CreateArgs>),
    /// List schedules.
    Ls {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a schedule.
    Inspect {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pause a schedule.
    Pause { id: String },
    /// Resume a paused schedule from now.
    Resume { id: String },
    /// Cancel a schedule for good.
    Rm { id: String },
}

#[derive(Args)]
struct CreateArgs {
    /// Cron expression (5 fields, or 6 with seconds first; @hourly, @daily…).
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    cron: Option<String>,
    /// IANA time zone of --cron (default UTC).
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// Run every interval (seconds, or 30s, 5m, 1h).
    #[arg(long, value_parser = parse_timeout)]
    every: Option<u32>,
    /// No slot before this (RFC 3339 UTC).
    #[arg(long, value_parser = parse_time)]
    start_at: Option<shepherd_core::Timestamp>,
    /// No slot after this (RFC 3339 UTC).
    #[arg(long, value_parser = parse_time)]
    end_at: Option<shepherd_core::Timestamp>,
    /// Fire at most N times.
    #[arg(long, value_name = "N")]
    run_times: Option<u32>,
    /// Skip a slot while the previous task is still queued or running.
    #[arg(long)]
    no_overlap: bool,
    /// Slots missed while no server ran: `once` (default: one run for all) or `skip`.
    #[arg(long, value_parser = ["once", "skip"])]
    catch_up: Option<String>,
    /// A name for people.
    #[arg(long)]
    name: Option<String>,
    /// The project (default: the token's; admin: `default`).
    #[arg(long)]
    project: Option<String>,
    /// Run this code (then the arguments are its command, if any).
    #[arg(long)]
    code: Option<String>,
    /// Environment variable KEY=VALUE of the task (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// The task's timeout (seconds, or 30s, 5m, 2h).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<u32>,
    /// The image (not with --code).
    #[arg(required_unless_present = "code")]
    image: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    #[arg(long)]
    json: bool,
}

fn schedule_rows(list: &[Schedule]) -> Vec<Vec<String>> {
    list.iter()
        .map(|s| {
            let when = match (&s.spec.cron, s.spec.run_every) {
                (Some(cron), _) => format!("{} {}", cron, s.spec.time_zone.as_deref().unwrap_or("UTC")),
                (None, Some(every)) => format!("every {every}s"),
                _ => "-".into(),
            };
            let what = s.spec.task.get("code").or(s.spec.task.get("image")).and_then(Value::as_str).unwrap_or("-");
            vec![
                s.id.clone(),
                safe(&s.spec.project),
                s.state.as_str().to_string(),
                safe(&when),
                safe(what),
                s.next_at.map_or("-".into(), |t| t.to_rfc3339()),
                s.fired.to_string(),
                s.skipped.to_string(),
            ]
        })
        .collect()
}

const SCHEDULE_HEADER: [&str; 8] = ["ID", "PROJECT", "STATE", "WHEN", "RUNS", "NEXT", "FIRED", "SKIPPED"];

pub async fn schedule(client: &Client, args: ScheduleArgs) -> Result<ExitCode> {
    match args.command {
        ScheduleCommand::Create(c) => {
            let mut task = Map::new();
            let mut command = c.command.clone();
            match (&c.code, c.image.clone()) {
                (Some(code), first) => {
                    task.insert("code".into(), code.clone().into());
                    if let Some(first) = first {
                        command.insert(0, first);
                    }
                }
                (None, Some(image)) => {
                    task.insert("image".into(), image.into());
                }
                (None, None) => bail!("give an IMAGE or --code NAME"),
            }
            if !command.is_empty() {
                task.insert("command".into(), json!(command));
            }
            if !c.env.is_empty() {
                task.insert("env".into(), json!(c.env.into_iter().collect::<std::collections::BTreeMap<String, String>>()));
            }
            if let Some(timeout) = c.timeout {
                task.insert("timeout_seconds".into(), timeout.into());
            }
            let mut body = Map::new();
            let optional: [(&str, Option<Value>); 9] = [
                ("cron", c.cron.map(Value::from)),
                ("time_zone", c.tz.map(Value::from)),
                ("run_every", c.every.map(Value::from)),
                ("start_at", c.start_at.map(|t| Value::from(t.to_rfc3339()))),
                ("end_at", c.end_at.map(|t| Value::from(t.to_rfc3339()))),
                ("run_times", c.run_times.map(Value::from)),
                ("catch_up", c.catch_up.map(Value::from)),
                ("name", c.name.map(Value::from)),
                ("project", c.project.map(Value::from)),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    body.insert(key.into(), value);
                }
            }
            if c.no_overlap {
                body.insert("overlap".into(), "skip".into());
            }
            body.insert("task".into(), Value::Object(task));
            let created: Schedule = client.post("/v1/schedules", &body).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", created.id);
            }
        }
        ScheduleCommand::Ls { project, json } => {
            // Every page, following `next`.
            let mut all: Vec<Value> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/v1/schedules{}", query(&project));
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str("limit=1000");
                if let Some(after) = &after {
                    path.push_str(&format!("&after={}", encode(after)));
                }
                let page: Value = client.get(&path).await?;
                all.extend(page["schedules"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({ "schedules": all }))?);
                return Ok(ExitCode::SUCCESS);
            }
            let schedules: Vec<Schedule> = serde_json::from_value(Value::Array(all)).context("reading the schedules")?;
            print_table(&SCHEDULE_HEADER, &schedule_rows(&schedules));
        }
        ScheduleCommand::Inspect { id, json } => {
            let s: Value = client.get(&format!("/v1/schedules/{}", encode(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(ExitCode::SUCCESS);
            }
            let s: Schedule = serde_json::from_value(s).context("reading the schedule")?;
            print_table(&SCHEDULE_HEADER, &schedule_rows(std::slice::from_ref(&s)));
            if let Some(task) = &s.last_task {
                println!("\nLast task:   {task} ({})", s.last_fired_at.map_or("-".into(), |t| t.to_rfc3339()));
            }
            let word = |v: Value| v.as_str().map(str::to_string).unwrap_or_default();
            println!("Overlap:     {}, catch up: {}", word(json!(s.spec.overlap)), word(json!(s.spec.catch_up)));
            if s.failed > 0 || s.reason.is_some() {
                println!(
                    "Failed:      {} slot(s) could not make their task{}",
                    s.failed,
                    s.reason.as_ref().map(|r| format!(": {}", safe(r))).unwrap_or_default()
                );
            }
            println!("Task:        {}", safe(&Value::Object(s.spec.task.clone()).to_string()));
        }
        ScheduleCommand::Pause { id } => change(client, &id, "pause").await?,
        ScheduleCommand::Resume { id } => change(client, &id, "resume").await?,
        ScheduleCommand::Rm { id } => {
            let s: Schedule = client.send(reqwest::Method::DELETE, &format!("/v1/schedules/{}", encode(&id)), &json!({})).await?;
            println!("schedule {} {}", s.id, s.state.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn change(client: &Client, id: &str, action: &str) -> Result<()> {
    let s: Schedule = client.post(&format!("/v1/schedules/{}/{action}", encode(id)), &json!({})).await?;
    println!("schedule {} {}", s.id, s.state.as_str());
    Ok(())
}

#[derive(Args)]
pub struct PackageArgs {
    /// The project (default: the token's; with the admin token, `default`).
    #[arg(long, global = true)]
    project: Option<String>,
    #[command(subcommand)]
    command: PackageCommand,
}

#[derive(Subcommand)]
enum PackageCommand {
    /// List the project's code packages and its package quota.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a package (refused while a live code or an unfinished task runs it).
    Rm { digest: String },
}

pub async fn package(client: &Client, args: PackageArgs) -> Result<ExitCode> {
    let q = query(&args.project);
    match args.command {
        PackageCommand::Ls { json } => {
            let list: Value = client.get(&format!("/v1/packages{q}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let packages = list["packages"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = packages
                .iter()
                .map(|p| {
                    vec![
                        safe(p["digest"].as_str().unwrap_or_default()),
                        p["size"].as_u64().unwrap_or(0).to_string(),
                        safe(p["created_at"].as_str().unwrap_or_default()),
                    ]
                })
                .collect();
            print_table(&["DIGEST", "BYTES", "CREATED"], &rows);
            let used: u64 = packages.iter().filter_map(|p| p["size"].as_u64()).sum();
            println!(
                "{} of {} packages, {used} of {} bytes",
                packages.len(),
                list["max_packages"].as_u64().unwrap_or(0),
                list["max_bytes"].as_u64().unwrap_or(0)
            );
        }
        PackageCommand::Rm { digest } => {
            client.send_empty::<Value>(reqwest::Method::DELETE, &format!("/v1/packages/{}{q}", encode(&digest)), None).await?;
            println!("package {digest} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct WebhookArgs {
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Print the project's signing secret: receivers check
    /// `X-Shepherd-Signature: sha256=HEX(HMAC-SHA256(secret, X-Shepherd-Timestamp + "." + body))`.
    Secret {
        /// The project (default: the token's own, when it sees exactly one).
        #[arg(long)]
        project: Option<String>,
        /// Replace it with a new one first.
        #[arg(long)]
        rotate: bool,
    },
    /// Show a task's webhook deliveries: each try's status, latency and error.
    Show {
        task: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn webhook(client: &Client, args: WebhookArgs) -> Result<ExitCode> {
    match args.command {
        WebhookCommand::Secret { project, rotate } => {
            let project = crate::cmd_tenants::which_project(client, project).await?;
            let path = format!("/v1/projects/{}/webhook-secret", encode(&project));
            let answer: Value = if rotate { client.post(&path, &json!({})).await? } else { client.get(&path).await? };
            println!("{}", answer["secret"].as_str().unwrap_or_default());
        }
        WebhookCommand::Show { task, json } => {
            let view: Value = client.get(&format!("/v1/tasks/{}/webhook", encode(&task))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("URL:         {}", safe(view["url"].as_str().unwrap_or_default()));
            println!("State:       {} after {} tries", view["state"].as_str().unwrap_or("-"), view["attempts"]);
            if let Some(next) = view["next_at"].as_str() {
                println!("Next try:    {next}");
            }
            let rows: Vec<Vec<String>> = view["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        a["number"].to_string(),
                        a["at"].as_str().unwrap_or("-").to_string(),
                        a["status"].as_u64().map_or("-".into(), |s| s.to_string()),
                        format!("{} ms", a["latency_ms"]),
                        safe(a["error"].as_str().unwrap_or("")),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!();
                print_table(&["TRY", "AT", "STATUS", "LATENCY", "ERROR"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

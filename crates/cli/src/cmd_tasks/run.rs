//! Submitting a task (`run`: its flags as a task spec, or as overrides of
//! a code) and cancelling tasks (`cancel`).

use super::follow::{follow_logs, say_why_it_waits, wait_for_end};
use super::parse::{parse_pair, parse_time, parse_timeout};
use crate::client::{encode, ApiFailure, Client};
use crate::output::exit_code_of;
use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use shepherd_core::{Resources, RetryPolicy, Task, TaskSpec};
use std::io::Read;
use std::process::ExitCode;

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
    /// A retry rule, the first that matches decides (repeatable):
    /// `exit=3,4:fail` (those exit codes end the task at once),
    /// `lost:retry_free` (a lost attempt is retried without spending one;
    /// also start_failed, image_pull_failed, oom_killed), action retry,
    /// retry_free or fail.
    #[arg(long = "retry-rule", value_name = "WHAT:ACTION", value_parser = parse_retry_rule)]
    retry_rules: Vec<shepherd_core::RetryRule>,
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
    /// Run N copies of the task as an array (1 to 100000): each gets
    /// SHEPHERD_ARRAY_INDEX (0 to N-1) and SHEPHERD_ARRAY_SIZE. Prints the
    /// array's id; with --wait, a progress bar.
    #[arg(long, value_name = "N")]
    array: Option<u32>,
    /// With --array: at most this many children queued or running at once.
    #[arg(long, value_name = "N", requires = "array")]
    parallelism: Option<u32>,
    /// With --array: the first failed child ends the array (the rest are
    /// cancelled) instead of every child running.
    #[arg(long, requires = "array")]
    fail_fast: bool,
    /// Start only after a task or array ends: ID (succeeded), ID:finished
    /// (in any way), or, array to array, ID:each (child i after child i)
    /// (repeatable).
    #[arg(long = "depends-on", value_name = "ID[:ON]", value_parser = parse_dependency)]
    depends_on: Vec<shepherd_core::Dependency>,
    /// An Idempotency-Key: the same submission again within 24 hours
    /// (a retry after a timeout) creates nothing and answers the same.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
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

/// `shepherd run`: submits a task; with `--wait`, follows it to its end and
/// exits with its exit code.
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
        on: args.retry_rules.clone(),
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
    if let Some(size) = args.array {
        spec.array = Some(shepherd_core::ArraySpec {
            size,
            parallelism: args.parallelism,
            failure_policy: if args.fail_fast { shepherd_core::FailurePolicy::FailFast } else { shepherd_core::FailurePolicy::FinishAll },
        });
    }
    spec.depends_on = args.depends_on.clone();
    let key = args.idempotency_key.as_deref();
    let answer: serde_json::Value = match &args.code {
        None => client.post_idempotent("/v1/tasks", &spec, key).await.map_err(in_flag_terms)?,
        Some(code) => client.post_idempotent("/v1/tasks", &code_request(&args, code, spec)?, key).await.map_err(in_flag_terms)?,
    };
    if answer["array"].as_bool() == Some(true) {
        let id = answer["id"].as_str().context("the server's answer has no id")?.to_string();
        if !args.wait {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let done = super::arrays::wait_array(client, &id, args.json).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&done)?);
        } else {
            super::arrays::print_array(&done);
        }
        return Ok(if done.state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let task: Task = serde_json::from_value(answer).context("bad task from server")?;
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
    keep("retry", args.retries.is_some() || args.backoff.is_some() || !args.retry_rules.is_empty());
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

/// `exit=3,4:fail` or `lost:retry_free`: a retry rule.
fn parse_retry_rule(text: &str) -> Result<shepherd_core::RetryRule, String> {
    let (what, action) = text.rsplit_once(':').ok_or_else(|| format!("`{text}`: use exit=CODES:ACTION or REASON:ACTION"))?;
    let action = serde_json::from_value(serde_json::Value::String(action.to_string()))
        .map_err(|_| format!("`{action}`: the action is retry, retry_free or fail"))?;
    if let Some(codes) = what.strip_prefix("exit=") {
        let exit_codes = codes
            .split(',')
            .map(|c| c.trim().parse::<i32>().map_err(|_| format!("`{c}` is not an exit code")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(shepherd_core::RetryRule { exit_codes, reason: None, action });
    }
    let reason = serde_json::from_value(serde_json::Value::String(what.to_string()))
        .map_err(|_| format!("`{what}`: use exit=CODES, or lost, start_failed, image_pull_failed, oom_killed"))?;
    Ok(shepherd_core::RetryRule { exit_codes: Vec::new(), reason: Some(reason), action })
}

/// `ID[:succeeded|finished|each]`: a dependency.
fn parse_dependency(text: &str) -> Result<shepherd_core::Dependency, String> {
    let (id, on) = match text.split_once(':') {
        Some((id, on)) => (id, shepherd_core::DependOn::parse(on).ok_or_else(|| format!("`{on}`: use succeeded, finished or each"))?),
        None => (text, shepherd_core::DependOn::Succeeded),
    };
    Ok(shepherd_core::Dependency { task: shepherd_core::DependencyTarget::Id(id.to_string()), on })
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
        "retry.on" => "--retry-rule",
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
        "array.size" => "--array",
        "array.parallelism" => "--parallelism",
        "depends_on" => "--depends-on",
        "Idempotency-Key" => "--idempotency-key",
        _ => return error,
    };
    anyhow::anyhow!("{flag}: {} (HTTP {})", failure.message, failure.status)
}

#[derive(Args)]
pub struct CancelArgs {
    /// Task or array ids.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Print the tasks as JSON.
    #[arg(long)]
    json: bool,
}

/// `shepherd cancel`: cancels tasks, each on its own (a failure fails the
/// command, after the rest).
pub async fn cancel(client: &Client, args: CancelArgs) -> Result<ExitCode> {
    let mut failed = false;
    for id in &args.ids {
        match client.post::<_, Task>(&format!("/v1/tasks/{}/cancel", encode(id)), &serde_json::json!({})).await {
            Ok(task) if args.json => println!("{}", serde_json::to_string(&task)?),
            Ok(task) => println!("{} {}", task.id, if task.state.is_terminal() { task.state.to_string() } else { "cancelling".into() }),
            // Not a task: perhaps an array.
            Err(e) if super::arrays::is_not_found(&e) => {
                match client
                    .post::<_, shepherd_core::ArrayStatus>(&format!("/v1/arrays/{}/cancel", encode(id)), &serde_json::json!({}))
                    .await
                {
                    Ok(array) if args.json => println!("{}", serde_json::to_string(&array)?),
                    Ok(array) => {
                        println!("{} {}", array.id, if super::arrays::ended(&array) { array.state.clone() } else { "cancelling".into() })
                    }
                    Err(_) => {
                        eprintln!("error: {id}: {e:#}");
                        failed = true;
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {id}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

//! Following a task: its output as it comes (`logs -f`, `run --wait`),
//! waiting for its end (`wait`), and riding out a server that goes away
//! meanwhile ([`Outage`]).

use crate::client::{encode, is_transient, Client, Transient};
use crate::output::exit_code_of;
use anyhow::{Context, Result};
use clap::Args;
use shepherd_core::Task;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

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
pub(super) async fn follow_logs(client: &Client, id: &str, stream: &str) -> Result<()> {
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
pub(super) async fn say_why_it_waits(client: Client, id: String) {
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
pub(super) async fn wait_for_end(client: &Client, id: &str, limit: Option<Duration>) -> Result<Task> {
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
pub struct LogsArgs {
    /// Keep following new output until the task ends.
    #[arg(long, short = 'f')]
    follow: bool,
    /// stdout, stderr or all.
    #[arg(long, default_value = "all", value_parser = ["all", "stdout", "stderr"])]
    stream: String,
    /// Task id (or, with --index, an array's).
    id: String,
    /// The child of array ID at this index.
    #[arg(long, value_name = "N")]
    index: Option<u32>,
}

/// `shepherd logs`: prints a task's output, or follows it to the task's end.
pub async fn logs(client: &Client, args: LogsArgs) -> Result<ExitCode> {
    let id = match args.index {
        None => encode(&args.id),
        Some(index) => encode(&super::arrays::child_at(client, &args.id, index).await?),
    };
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

/// `shepherd wait`: waits for a task to end and exits with its exit code
/// (124 if `--timeout` came first).
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

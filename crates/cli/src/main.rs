//! `shepherd`: the all-in-one cluster (`shepherd up`) and the CLI that
//! talks to a Shepherd server through its public REST API only.

mod client;
mod cmd_nodes;
mod cmd_simulate;
mod cmd_tasks;
mod cmd_up;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run container tasks on Docker hosts.
#[derive(Parser)]
#[command(name = "shepherd", version, about, long_about = None)]
struct Cli {
    /// The Shepherd server to talk to.
    #[arg(long, global = true, env = "SHEPHERD_SERVER", default_value = client::DEFAULT_SERVER)]
    server: String,
    /// Trust this CA certificate (PEM) for an https:// server, besides the system's.
    #[arg(long, global = true, env = "SHEPHERD_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an all-in-one cluster: API server, scheduler and a local agent.
    Up(cmd_up::UpArgs),
    /// Start an API server and scheduler that agents on other hosts join.
    Server(cmd_up::ServerArgs),
    /// Run a node: join a server and run the tasks it assigns.
    Agent(cmd_up::AgentArgs),
    /// Manage nodes: `shepherd node drain ID`.
    Node(cmd_nodes::NodeArgs),
    /// Submit a task: shepherd run [OPTIONS] IMAGE [-- COMMAND ARGS...]
    Run(cmd_tasks::RunArgs),
    /// List tasks, newest first.
    Ps(cmd_tasks::PsArgs),
    /// Show one task in full, with its attempts.
    Inspect(cmd_tasks::InspectArgs),
    /// Print a task's output.
    Logs(cmd_tasks::LogsArgs),
    /// Cancel tasks.
    Cancel(cmd_tasks::CancelArgs),
    /// Wait for a task to end and exit with its exit code.
    Wait(cmd_tasks::WaitArgs),
    /// List the cluster's nodes.
    Nodes(cmd_nodes::NodesArgs),
    /// Compare placement profiles offline: replay a workload on a virtual clock.
    Simulate(cmd_simulate::SimulateArgs),
}

fn init_logging(default: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("SHEPHERD_LOG").unwrap_or_else(|_| default.to_string());
    let filter: Targets = spec.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_)) { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = client::Client::new(&cli.server, cli.tls_ca.as_deref());
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => cmd_up::up(args).await,
            Command::Server(args) => cmd_up::server(args).await,
            Command::Agent(args) => cmd_up::agent(args).await,
            Command::Node(args) => cmd_nodes::node(&client?, args).await,
            Command::Run(args) => cmd_tasks::run(&client?, args).await,
            Command::Ps(args) => cmd_tasks::ps(&client?, args).await,
            Command::Inspect(args) => cmd_tasks::inspect(&client?, args).await,
            Command::Logs(args) => cmd_tasks::logs(&client?, args).await,
            Command::Cancel(args) => cmd_tasks::cancel(&client?, args).await,
            Command::Wait(args) => cmd_tasks::wait(&client?, args).await,
            Command::Nodes(args) => cmd_nodes::nodes(&client?, args).await,
            Command::Simulate(args) => cmd_simulate::simulate_cmd(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

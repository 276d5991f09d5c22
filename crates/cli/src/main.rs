//! `shepherd`: the all-in-one cluster (`shepherd up`) and the CLI that
//! talks to a Shepherd server through its public REST API only.

mod client;
mod cmd_agent;
mod cmd_codes;
mod cmd_events;
mod cmd_history;
mod cmd_images;
mod cmd_machines;
mod cmd_nodes;
mod cmd_nodesim;
mod cmd_registry;
mod cmd_simulate;
mod cmd_store;
mod cmd_tasks;
mod cmd_tenants;
mod cmd_up;
mod cmd_usage;
mod cmd_volumes;
mod config;
mod host;
mod node;
mod output;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

/// Run container tasks on Docker hosts.
#[derive(Parser)]
#[command(name = "shepherd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a client command reaches the server; only client commands take these.
#[derive(Args)]
struct ClientFlags {
    /// The Shepherd server to talk to (default: the CLI config's, else http://127.0.0.1:7070).
    #[arg(long, global = true, env = "SHEPHERD_SERVER")]
    server: Option<String>,
    /// The API token (default: the CLI config's; see `shepherd up`).
    #[arg(long, global = true, env = "SHEPHERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// server, besides the system's.
    #[arg(long, global = true, env = "SHEPHERD_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
}

/// A client command's own arguments plus [`ClientFlags`].
#[derive(Args)]
struct Client<T: Args> {
    #[command(flatten)]
    client: ClientFlags,
    #[command(flatten)]
    args: T,
}

#[derive(Subcommand)]
enum Command {
    /// Start an all-in-one cluster: API server, scheduler and a local agent.
    Up(cmd_up::UpArgs),
    /// Start an API server and scheduler that agents on other hosts join.
    Server(cmd_up::ServerArgs),
    /// Run a node: join a server and run the tasks it assigns.
    Agent(cmd_agent::AgentArgs),
    /// Manage nodes: `shepherd node drain ID`.
    Node(Client<cmd_nodes::NodeArgs>),
    /// Submit a task: shepherd run [OPTIONS] IMAGE [-- COMMAND ARGS...]
    Run(Client<cmd_tasks::RunArgs>),
    /// List tasks, newest first.
    Ps(Client<cmd_tasks::PsArgs>),
    /// Show one task (or array) in full, with its attempts (or its children's counts).
    Inspect(Client<cmd_tasks::InspectArgs>),
    /// Print a task's output.
    Logs(Client<cmd_tasks::LogsArgs>),
    /// Cancel tasks or arrays.
    Cancel(Client<cmd_tasks::CancelArgs>),
    /// Run an array's failed children again: shepherd retry ARRAY_ID --failed.
    Retry(Client<cmd_tasks::RetryArgs>),
    /// Show the dependency graph around a task or an array, with states.
    Graph(Client<cmd_tasks::GraphArgs>),
    /// Print what a task wrote to $SHEPHERD_RESULT_FILE.
    Result(Client<cmd_tasks::ResultArgs>),
    /// Wait for a task to end and exit with its exit code.
    Wait(Client<cmd_tasks::WaitArgs>),
    /// List the cluster's nodes.
    Nodes(Client<cmd_nodes::NodesArgs>),
    /// List provisioned machines and autoscaled pools (admin).
    Machines(Client<cmd_machines::MachinesArgs>),
    /// List the servers sharing the cluster's store, and which one leads (admin).
    Servers(Client<cmd_nodes::ServersArgs>),
    /// Manage projects (tenants) and their limits (admin).
    Project(Client<cmd_tenants::ProjectArgs>),
    /// Manage a project's API tokens (admin).
    Token(Client<cmd_tenants::TokenArgs>),
    /// Manage a project's secrets.
    Secret(Client<cmd_tenants::SecretArgs>),
    /// Manage a project's named volumes (create, ls, inspect, rm).
    Volume(Client<cmd_volumes::VolumeArgs>),
    /// Manage a project's registry logins (login, logout, ls).
    Registry(Client<cmd_registry::RegistryArgs>),
    /// Pull an image onto a pool's nodes ahead of a burst (prefetch).
    Image(Client<cmd_images::ImageArgs>),
    /// Show the audit log: who created, cancelled or changed what.
    Audit(Client<cmd_tenants::AuditArgs>),
    /// Manage codes: named, versioned task templates (push, ls, inspect, revisions, rollback, rm).
    Code(Client<cmd_codes::CodeArgs>),
    /// Code packages stored in a project: list, remove.
    Package(Client<cmd_codes::PackageArgs>),
    /// Manage schedules: tasks run at cron times or intervals (create, ls, inspect, pause, resume, rm).
    Schedule(Client<cmd_codes::ScheduleArgs>),
    /// Webhooks: the project's signing secret, and a task's deliveries.
    Webhook(Client<cmd_codes::WebhookArgs>),
    /// What a project's tasks used (CPU, memory, run time) per hour or day; --csv for billing.
    Usage(Client<cmd_usage::UsageArgs>),
    /// Follow the cluster's event stream: task and node state changes, tenant changes.
    Events(Client<cmd_events::EventsArgs>),
    /// Compare placement profiles offline: replay a workload, or the cluster's own history, on a virtual clock.
    Simulate(Client<cmd_simulate::SimulateArgs>),
    /// The cluster's scheduling history (shapes and times only): export it for `simulate --history`.
    History(Client<cmd_history::HistoryArgs>),
    /// The cluster's store itself, where it is: `shepherd store migrate --from sqlite:DIR --to postgres://…`.
    Store(cmd_store::StoreArgs),
    /// Join many simulated nodes to a server (benchmarks and scale tests).
    #[command(hide = true)]
    Nodesim(cmd_nodesim::NodesimArgs),
}

fn init_logging(default: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("SHEPHERD_LOG").unwrap_or_else(|_| default.to_string());
    let filter: Targets = spec.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .init();
}

/// The client of a CLI command: flags and environment first, then the CLI
/// config file. A token given by flag or environment is used for
/// everything; from the config, admin commands use its admin token.
fn make_client(flags: &ClientFlags) -> anyhow::Result<client::Client> {
    let config = config::load()?;
    let server = flags.server.clone().or(config.server).unwrap_or_else(|| client::DEFAULT_SERVER.to_string());
    let tls_ca = flags.tls_ca.clone().or(config.tls_ca);
    let (token, admin_token) = match &flags.token {
        Some(token) => (Some(token.clone()), None),
        None => (config.token.or(config.admin_token.clone()), config.admin_token),
    };
    client::Client::new(&server, tls_ca.as_deref(), token, admin_token)
}

/// Exit code of the CLI's own failures in commands that exit with a task's
/// code (`run --wait`, `wait`), as `docker run` does: see `output::exit_code_of`.
const CLI_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_)) {
        host::quiet_on_closed_pipe();
    }
    init_logging(if matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Nodesim(_)) {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Commands that exit with a task's code keep their own failures apart.
    let reports_task_code = match &cli.command {
        Command::Run(c) => c.args.waits(),
        Command::Wait(_) => true,
        _ => false,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => cmd_up::up(args).await,
            Command::Server(args) => cmd_up::server(args).await,
            Command::Agent(args) => cmd_agent::agent(args).await,
            Command::Simulate(c) => cmd_simulate::simulate_cmd(|| make_client(&c.client), c.args).await,
            Command::History(c) => cmd_history::history(&make_client(&c.client)?, c.args).await,
            Command::Nodesim(args) => cmd_nodesim::nodesim(args).await,
            Command::Store(args) => cmd_store::store(args).await,
            Command::Node(c) => cmd_nodes::node(|| make_client(&c.client), c.args).await,
            Command::Run(c) => cmd_tasks::run(&make_client(&c.client)?, c.args).await,
            Command::Ps(c) => cmd_tasks::ps(&make_client(&c.client)?, c.args).await,
            Command::Inspect(c) => cmd_tasks::inspect(&make_client(&c.client)?, c.args).await,
            Command::Logs(c) => cmd_tasks::logs(&make_client(&c.client)?, c.args).await,
            Command::Cancel(c) => cmd_tasks::cancel(&make_client(&c.client)?, c.args).await,
            Command::Retry(c) => cmd_tasks::retry(&make_client(&c.client)?, c.args).await,
            Command::Graph(c) => cmd_tasks::graph(&make_client(&c.client)?, c.args).await,
            Command::Result(c) => cmd_tasks::result(&make_client(&c.client)?, c.args).await,
            Command::Wait(c) => cmd_tasks::wait(&make_client(&c.client)?, c.args).await,
            Command::Nodes(c) => cmd_nodes::nodes(&make_client(&c.client)?, c.args).await,
            Command::Machines(c) => cmd_machines::machines(&make_client(&c.client)?, c.args).await,
            Command::Servers(c) => cmd_nodes::servers(&make_client(&c.client)?, c.args).await,
            Command::Project(c) => cmd_tenants::project(&make_client(&c.client)?, c.args).await,
            Command::Token(c) => cmd_tenants::token(&make_client(&c.client)?, c.args).await,
            Command::Secret(c) => cmd_tenants::secret(&make_client(&c.client)?, c.args).await,
            Command::Volume(c) => cmd_volumes::volume(&make_client(&c.client)?, c.args).await,
            Command::Registry(c) => cmd_registry::registry(&make_client(&c.client)?, c.args).await,
            Command::Image(c) => cmd_images::image(&make_client(&c.client)?, c.args).await,
            Command::Audit(c) => cmd_tenants::audit(&make_client(&c.client)?, c.args).await,
            Command::Code(c) => cmd_codes::code(&make_client(&c.client)?, c.args).await,
            Command::Package(c) => cmd_codes::package(&make_client(&c.client)?, c.args).await,
            Command::Schedule(c) => cmd_codes::schedule(&make_client(&c.client)?, c.args).await,
            Command::Webhook(c) => cmd_codes::webhook(&make_client(&c.client)?, c.args).await,
            Command::Usage(c) => cmd_usage::usage(&make_client(&c.client)?, c.args).await,
            Command::Events(c) => cmd_events::events(&make_client(&c.client)?, c.args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if reports_task_code {
                ExitCode::from(CLI_FAILED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

//! `shepherd store`: operations on a cluster's store itself, run where the
//! store is, not through the API. `migrate` moves an all-in-one cluster's
//! embedded SQLite store onto PostgreSQL (see `docs/postgres.md`).

use anyhow::{bail, Context, Result};
use shepherd_store::migrate::{self, Options, Progress};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Copy a stopped `shepherd up`'s SQLite store into PostgreSQL, verified
    /// table by table; resumes where an interrupted run stopped.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The source: `sqlite:DIR` (the data directory of `shepherd up`) or `sqlite:FILE`.
    #[arg(long, value_name = "sqlite:PATH")]
    from: String,
    /// The target: `postgres://user:password@host:port/database`, an empty database.
    #[arg(long, value_name = "postgres://…")]
    to: String,
    /// Add to a target that holds another cluster's data (rows whose key it has already are left as they are).
    #[arg(long)]
    append: bool,
    /// Rows per batch (one PostgreSQL transaction each).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Print the verification as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `shepherd store …`.
pub async fn store(args: StoreArgs) -> Result<std::process::ExitCode> {
    match args.command {
        StoreCommand::Migrate(args) => migrate_cmd(args).await.map(|()| std::process::ExitCode::SUCCESS),
    }
}

async fn migrate_cmd(args: MigrateArgs) -> Result<()> {
    let Some(path) = args.from.strip_prefix("sqlite:") else {
        bail!("--from: expected sqlite:PATH (a data directory or a database file), not `{}`", args.from);
    };
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to: expected a postgres:// URL");
    }
    let path = PathBuf::from(path);
    let file = migrate::sqlite_file(&path);
    if !file.is_file() {
        bail!("--from: no SQLite store at {}", file.display());
    }
    // A data directory in use by `shepherd up` is refused: stop it first.
    // (Only a directory that holds a store is claimed: never any other.)
    let dir = file.parent().filter(|p| p.join("lock").exists() || path.is_dir()).map(PathBuf::from);
    let _lock = match &dir {
        Some(dir) => Some(crate::host::claim_data_dir(dir).context("--from")?),
        None => None,
    };
    let options = Options { batch: args.batch as usize, append: args.append };
    let started = Instant::now();
    let mut shown = Reporter::default();
    let verified = migrate::migrate(&file, &args.to, &options, |p| shown.show(p)).await.context("migrating the store")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verified)?);
        return Ok(());
    }
    println!("{:<20} {:>10} {:>10}  {:<16}  verified", "TABLE", "SOURCE", "TARGET", "SHA-256");
    for v in &verified {
        let sum = v.source_checksum.get(..16).unwrap_or("");
        let kept = if v.kept > 0 { format!(" ({} kept as the target had them)", v.kept) } else { String::new() };
        println!(
            "{:<20} {:>10} {:>10}  {sum:<16}  {}{kept}",
            v.table,
            v.source_rows,
            v.target_rows,
            if v.matches() { "yes" } else { "NO" }
        );
    }
    let rows: u64 = verified.iter().map(|v| v.source_rows).sum();
    println!("copied and verified {rows} rows in {} tables in {:.1}s", verified.len(), started.elapsed().as_secs_f64());
    println!("next: start `shepherd server --store {}` (agents rejoin it)", shepherd_store::postgres::redact(&args.to));
    Ok(())
}

/// Progress on stderr: a line per table, updated at most twice a second.
#[derive(Default)]
struct Reporter {
    last: Option<Instant>,
}

impl Reporter {
    fn show(&mut self, p: &Progress) {
        let done = p.copied >= p.total;
        if !done && self.last.is_some_and(|at| at.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.last = Some(Instant::now());
        let percent = if p.total == 0 { 100.0 } else { p.copied as f64 * 100.0 / p.total as f64 };
        let note = if p.resumed { " (done in an earlier run)" } else { "" };
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{:<20} {:>10}/{:<10} {:>5.1}%{note}", p.table, p.copied, p.total, percent.min(100.0));
        if done {
            let _ = writeln!(err);
        }
    }
}

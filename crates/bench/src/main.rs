//! `shepherd-bench`: release-build benchmarks, each against a baseline
//! measured in the same run. See `bench/RESULTS.md`.

mod autoscale;
mod cluster;
mod docker;
mod ha;
mod ingest;
mod placement;
mod replay;
mod retention;
mod scale;
mod stages;
mod workflow;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Durable tasks accepted per second vs raw SQLite inserts.
    Ingest(ingest::Args),
    /// Tasks per second with the docker driver vs raw engine cycles.
    Docker(docker::Args),
    /// Placement decisions per second and quality, per profile and cluster size.
    Placement(placement::Args),
    /// Submit→container-start latency on a server with three agents vs a direct start.
    Cluster(cluster::Args),
    /// Several servers on one PostgreSQL: ingest scaling and leader failover time.
    Ha(ha::Args),
    /// Autoscaled pools: from a task for an empty pool to its start on a new machine (docker provisioner).
    AutoscaleLatency(autoscale::LatencyArgs),
    /// Autoscaled pools: a simulated bursty day, machine-hours and queue wait vs a fixed pool.
    AutoscaleDay(autoscale::DayArgs),
    /// End to end at scale: a server with up to 10,000 simulated nodes, tasks started per second.
    Scale(scale::Args),
    /// Workflows: an array vs batches, dependency release, another project's wait beside an array.
    Workflow(workflow::Args),
    /// Retention: removing a million finished tasks while tasks are created, vs before and after.
    Retention(retention::Args),
    /// History replay: a long, large history through `simulate --history`'s replay vs reading the file alone.
    Replay(replay::Args),
}

/// The shepherd binary to benchmark: the given path, else the one next to this binary.
pub fn shepherd_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match given {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("shepherd"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    shepherd_agent::remote::install_crypto_provider();
    match Cli::parse().bench {
        Bench::Ingest(args) => ingest::run(args).await,
        Bench::Docker(args) => docker::run(args).await,
        Bench::Placement(args) => placement::run(args).await,
        Bench::Cluster(args) => cluster::run(args).await,
        Bench::Ha(args) => ha::run(args).await,
        Bench::Scale(args) => scale::run(args).await,
        Bench::Workflow(args) => workflow::run(args).await,
        Bench::AutoscaleLatency(args) => autoscale::latency(args).await,
        Bench::AutoscaleDay(args) => autoscale::day(args),
        Bench::Replay(args) => replay::run(args),
        Bench::Retention(args) => retention::run(args).await,
    }
}

//! Placement: decisions per second and per-task decision time for each
//! built-in profile at 100 to 50,000 nodes, with constraints on; and the
//! quality of the result: binpack's node count against first-fit-decreasing
//! computed offline, spread's most/least loaded ratio. One thread.

use anyhow::Result;
use shepherd_core::{Constraint, Resources, TaskId};
use shepherd_sched::{Engine, NodeSnapshot, PendingTask};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Node counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,50000")]
    nodes: Vec<usize>,
    /// Placements measured per profile and node count.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Share of tasks with a region constraint.
    #[arg(long, default_value_t = 0.3)]
    constrained: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A seeded generator (splitmix64), so runs are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = shepherd_sched::rng::mix(self.0);
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

fn cluster(n: usize, rng: &mut Rng) -> Vec<NodeSnapshot> {
    (0..n)
        .map(|i| {
            let cores = [8, 16, 32, 64][rng.below(4) as usize];
            let mut node = NodeSnapshot::new(format!("node-{i:05}"), Resources { cpu_millicores: cores * 1000, memory_mib: cores * 4096 });
            let region = REGIONS[rng.below(3) as usize];
            node.labels.insert("region".into(), region.into());
            node.labels.insert("zone".into(), format!("{region}-{}", rng.below(3)));
            node.max_tasks = 110;
            node
        })
        .collect()
}

fn task(i: usize, rng: &mut Rng, constrained: f64, profile: &str) -> PendingTask {
    let mut t = PendingTask::new(
        TaskId(ulid::Ulid(i as u128 + 1)),
        Resources { cpu_millicores: 100 + 100 * rng.below(20) as u32, memory_mib: 128 * (1 + rng.below(16) as u32) },
    );
    if rng.unit() < constrained {
        t.constraints
            .push(Constraint::parse(&format!("node.labels.region=={}", REGIONS[rng.below(3) as usize])).unwrap_or_else(|_| unreachable!()));
    }
    t.profile = Some(profile.into());
    t
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

/// Nodes first-fit-decreasing needs for `tasks` on identical nodes of `capacity`.
fn first_fit_decreasing(tasks: &[PendingTask], capacity: Resources) -> usize {
    let size = |t: &PendingTask| {
        (f64::from(t.resources.cpu_millicores) / f64::from(capacity.cpu_millicores))
            .max(f64::from(t.resources.memory_mib) / f64::from(capacity.memory_mib))
    };
    let mut sorted: Vec<&PendingTask> = tasks.iter().collect();
    sorted.sort_by(|a, b| size(b).total_cmp(&size(a)));
    let mut bins: Vec<Resources> = Vec::new();
    for t in sorted {
        let fits = |free: &Resources| free.cpu_millicores >= t.resources.cpu_millicores && free.memory_mib >= t.resources.memory_mib;
        match bins.iter_mut().find(|free| fits(free)) {
            Some(free) => {
                free.cpu_millicores -= t.resources.cpu_millicores;
                free.memory_mib -= t.resources.memory_mib;
            }
            None => bins.push(Resources {
                cpu_millicores: capacity.cpu_millicores - t.resources.cpu_millicores,
                memory_mib: capacity.memory_mib - t.resources.memory_mib,
            }),
        }
    }
    bins.len()
}

/// Most/least loaded ratio when `profile` spreads 10,000 tasks over 500 nodes.
fn spread_ratio(engine: &Engine, profile: &str, seed: u64) -> f64 {
    let mut rng = Rng(seed ^ 0x5eed);
    let capacity = Resources { cpu_millicores: 16_000, memory_mib: 65_536 };
    let nodes: Vec<NodeSnapshot> = (0..500).map(|i| NodeSnapshot::new(format!("n{i:04}"), capacity)).collect();
    let tasks: Vec<PendingTask> = (0..10_000).map(|i| task(i, &mut rng, 0.0, profile)).collect();
    let by_id: HashMap<TaskId, Resources> = tasks.iter().map(|t| (t.id, t.resources)).collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), seed);
    let mut load: HashMap<&str, (u32, u32)> = HashMap::new();
    for p in &plan.placements {
        let r = by_id[&p.task_id];
        let l = load.entry(p.node_id.as_str()).or_default();
        l.0 += r.cpu_millicores;
        l.1 += r.memory_mib;
    }
    let dominant: Vec<f64> = load
        .values()
        .map(|(c, m)| (f64::from(*c) / f64::from(capacity.cpu_millicores)).max(f64::from(*m) / f64::from(capacity.memory_mib)))
        .collect();
    let max = dominant.iter().copied().fold(0.0, f64::max);
    let min = if load.len() < 500 { 0.0 } else { dominant.iter().copied().fold(f64::MAX, f64::min) };
    max / min
}

/// Binpack's node count against offline first-fit-decreasing, and spread's balance.
fn quality(seed: u64) -> (usize, usize, f64) {
    let engine = Engine::default();
    let mut rng = Rng(seed);
    let capacity = Resources { cpu_millicores: 16_000, memory_mib: 65_536 };
    let tasks: Vec<PendingTask> = (0..2000).map(|i| task(i, &mut rng, 0.0, "binpack")).collect();
    let ffd = first_fit_decreasing(&tasks, capacity);
    let nodes: Vec<NodeSnapshot> = (0..ffd * 2).map(|i| NodeSnapshot::new(format!("n{i:04}"), capacity)).collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), seed);
    let mut used: Vec<&str> = plan.placements.iter().map(|p| p.node_id.as_str()).collect();
    used.sort();
    used.dedup();
    (ffd, used.len(), spread_ratio(&engine, "spread", seed))
}

pub async fn run(args: Args) -> Result<()> {
    let engine = Engine::default();
    let mut rows = Vec::new();
    println!(
        "placement benchmark: {} placements per cell, {:.0}% with a region constraint, one thread",
        args.tasks,
        args.constrained * 100.0
    );
    println!("| profile | nodes | placements/s | p50 µs | p99 µs | unplaced |");
    println!("|---|---|---|---|---|---|");
    for &n in &args.nodes {
        for profile in ["spread", "binpack", "random"] {
            let mut rng = Rng(args.seed ^ n as u64);
            let nodes = cluster(n, &mut rng);
            let tasks: Vec<PendingTask> = (0..args.tasks).map(|i| task(i, &mut rng, args.constrained, profile)).collect();
            let mut placer = engine.placer(nodes, args.seed);
            let mut times = Vec::with_capacity(tasks.len());
            let mut unplaced = 0;
            let started = Instant::now();
            for t in &tasks {
                let one = Instant::now();
                if placer.place(t).is_err() {
                    unplaced += 1;
                }
                times.push(one.elapsed().as_secs_f64() * 1e6);
            }
            let rate = tasks.len() as f64 / started.elapsed().as_secs_f64();
            times.sort_by(|a, b| a.total_cmp(b));
            let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
            println!("| {profile} | {n} | {rate:.0} | {p50:.1} | {p99:.1} | {unplaced} |");
            rows.push(serde_json::json!({"profile": profile, "nodes": n, "placements_per_s": rate, "p50_us": p50, "p99_us": p99, "unplaced": unplaced}));
        }
    }
    let (ffd, binpack_nodes, spread_balance) = quality(args.seed);
    println!();
    println!(
        "quality: binpack used {binpack_nodes} nodes, first-fit-decreasing (offline) {ffd}: ratio {:.3}",
        binpack_nodes as f64 / ffd as f64
    );
    println!("quality: spread over 500 nodes, most/least loaded ratio {spread_balance:.3}");
    // The cost of sampling: the same spread scorer over 2 random feasible
    // candidates (power of two choices) instead of the least-loaded index.
    let sampled = Engine::new(&shepherd_sched::SchedulerConfig::from_toml(
        "[profiles.spread-2-choices]\norder = \"random\"\ncandidates = 2\nscores = { spread = 1.0 }\n",
    )?)?;
    let sampled_ratio = spread_ratio(&sampled, "spread-2-choices", args.seed);
    println!("quality: spread sampling 2 random candidates, most/least loaded ratio {sampled_ratio:.3}");
    if let Some(path) = args.json {
        let report = serde_json::json!({
            "cells": rows, "binpack_nodes": binpack_nodes, "ffd_nodes": ffd,
            "binpack_ratio": binpack_nodes as f64 / ffd as f64, "spread_max_min_ratio": spread_balance,
            "spread_2_choices_max_min_ratio": sampled_ratio,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}

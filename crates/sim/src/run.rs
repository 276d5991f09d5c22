//! The simulation loop: a virtual clock that ticks, releases finished
//! tasks, enqueues arrivals, and lets the engine place the queue.

use crate::report::{percentile, ProfileReport, Sample, Wait};
use crate::workload::WorkloadTask;
use shepherd_core::{Constraint, Resources, TaskId};
use shepherd_sched::{Engine, NodeSnapshot, PendingTask};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;

/// The simulated cluster and clock.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    /// Each node's CPU, millicores.
    pub node_cpu: u32,
    /// Each node's memory, MiB.
    pub node_memory: u32,
    /// Virtual seconds between scheduling passes.
    pub tick_seconds: f64,
    pub seed: u64,
    /// The first `gpu_nodes` nodes have `node_gpus` GPUs each.
    pub gpu_nodes: usize,
    pub node_gpus: u32,
}

fn nodes(config: &SimConfig) -> Vec<NodeSnapshot> {
    (0..config.nodes)
        .map(|i| {
            let mut node =
                NodeSnapshot::new(format!("sim-{i:05}"), Resources { cpu_millicores: config.node_cpu, memory_mib: config.node_memory });
            let region = ["eu", "us", "ap"][i % 3];
            node.labels.insert("region".into(), region.into());
            node.labels.insert("zone".into(), format!("{region}-{}", (i / 3) % 3));
            if i < config.gpu_nodes {
                node.gpus = config.node_gpus;
            }
            node
        })
        .collect()
}

fn pending(index: usize, task: &WorkloadTask, profile: &str) -> PendingTask {
    let mut p = PendingTask::new(TaskId(ulid::Ulid(index as u128 + 1)), Resources { cpu_millicores: task.cpu, memory_mib: task.memory });
    p.project = task.project.clone();
    p.priority = task.priority;
    p.constraints = task.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect();
    p.profile = Some(profile.to_string());
    p.gpus = task.gpus;
    p
}

fn index_of(task: &PendingTask) -> usize {
    (task.id.0 .0 - 1) as usize
}

/// Replays `workload` under `profile`.
pub fn simulate(engine: &Engine, profile: &str, workload: &[WorkloadTask], config: &SimConfig) -> ProfileReport {
    let mut placer = engine.placer(nodes(config), config.seed);
    let tick_ms = (config.tick_seconds * 1000.0).max(1.0) as u64;
    let ms = |seconds: f64| (seconds * 1000.0).round() as u64;
    let (median_cpu, median_memory) = {
        let mut cpu: Vec<u32> = workload.iter().map(|t| t.cpu).collect();
        let mut memory: Vec<u32> = workload.iter().map(|t| t.memory).collect();
        cpu.sort_unstable();
        memory.sort_unstable();
        (cpu.get(cpu.len() / 2).copied().unwrap_or(0), memory.get(memory.len() / 2).copied().unwrap_or(0))
    };
    let mut queue: Vec<PendingTask> = Vec::new();
    let mut running: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
    let mut usage: HashMap<String, Resources> = HashMap::new();
    let mut waits: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut decision_us: Vec<f64> = Vec::new();
    let mut decision_total = 0.0;
    let mut samples = Vec::new();
    let mut next_arrival = 0;
    let mut placed = 0;
    let mut now: u64 = 0;
    let mut last_end: u64 = 0;
    loop {
        while let Some(Reverse((end, node, index))) = running.peek().copied() {
            if end > now {
                break;
            }
            running.pop();
            let task = pending(index, &workload[index], profile);
            placer.release(node, &task);
            if let Some(held) = usage.get_mut(&task.project) {
                held.cpu_millicores -= task.resources.cpu_millicores;
                held.memory_mib -= task.resources.memory_mib;
            }
        }
        while next_arrival < workload.len() && ms(workload[next_arrival].at) <= now {
            queue.push(pending(next_arrival, &workload[next_arrival], profile));
            next_arrival += 1;
        }
        if !queue.is_empty() {
            placer.new_pass();
            let ordered = engine.order(std::mem::take(&mut queue), &placer.cluster.nodes, &usage);
            for task in ordered {
                let started = Instant::now();
                let result = placer.place(&task);
                let took = started.elapsed().as_secs_f64();
                decision_total += took;
                decision_us.push(took * 1e6);
                match result {
                    Ok(node) => {
                        let index = index_of(&task);
                        let spec = &workload[index];
                        let end = now + ms(spec.duration);
                        last_end = last_end.max(end);
                        running.push(Reverse((end, node, index)));
                        waits.entry(task.project.clone()).or_default().push((now.saturating_sub(ms(spec.at))) as f64 / 1000.0);
                        let held = usage.entry(task.project.clone()).or_insert(Resources { cpu_millicores: 0, memory_mib: 0 });
                        held.cpu_millicores += task.resources.cpu_millicores;
                        held.memory_mib += task.resources.memory_mib;
                        placed += 1;
                    }
                    Err(_) => queue.push(task),
                }
            }
        }
        samples.push(sample(now, &placer.cluster.nodes, queue.len(), running.len(), median_cpu, median_memory));
        if next_arrival == workload.len() && running.is_empty() {
            break;
        }
        now += tick_ms;
        // Nothing to do until the next arrival: jump there.
        if queue.is_empty() && running.is_empty() && next_arrival < workload.len() {
            now = now.max(ms(workload[next_arrival].at) / tick_ms * tick_ms);
        }
    }
    // Whatever is still queued fits nowhere even on an empty cluster.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    placer.new_pass();
    for task in &queue {
        if let Err(unfit) = placer.place(task) {
            *reasons.entry(unfit.to_string()).or_default() += 1;
        }
    }
    decision_us.sort_by(|a, b| a.total_cmp(b));
    let span: Vec<&Sample> = samples.iter().filter(|s| s.at_seconds <= last_end as f64 / 1000.0).collect();
    let mean = |f: fn(&Sample) -> f64| if span.is_empty() { 0.0 } else { span.iter().map(|s| f(s)).sum::<f64>() / span.len() as f64 };
    ProfileReport {
        profile: profile.to_string(),
        tasks: workload.len(),
        placed,
        decisions: decision_us.len(),
        decisions_per_second: decision_us.len() as f64 / decision_total.max(1e-9),
        decision_p50_us: percentile(&decision_us, 50.0),
        decision_p99_us: percentile(&decision_us, 99.0),
        makespan_seconds: last_end as f64 / 1000.0,
        mean_cpu_utilization: mean(|s| s.cpu_utilization),
        peak_cpu_utilization: samples.iter().map(|s| s.cpu_utilization).fold(0.0, f64::max),
        mean_fragmentation: mean(|s| s.fragmentation),
        waits: waits.into_iter().map(|(project, w)| Wait::of(project, w)).collect(),
        unplaced: reasons.into_iter().collect(),
        samples,
    }
}

fn sample(now: u64, nodes: &[NodeSnapshot], queued: usize, running: usize, median_cpu: u32, median_memory: u32) -> Sample {
    let (mut cap_cpu, mut cap_mem, mut used_cpu, mut used_mem, mut free_cpu, mut stranded) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for node in nodes {
        cap_cpu += u64::from(node.capacity.cpu_millicores);
        cap_mem += u64::from(node.capacity.memory_mib);
        used_cpu += u64::from(node.allocated.cpu_millicores);
        used_mem += u64::from(node.allocated.memory_mib);
        let free = node.free();
        free_cpu += u64::from(free.cpu_millicores);
        // Free CPU no typical task can use: the node lacks room for one.
        if free.cpu_millicores < median_cpu || free.memory_mib < median_memory {
            stranded += u64::from(free.cpu_millicores);
        }
    }
    Sample {
        at_seconds: now as f64 / 1000.0,
        cpu_utilization: used_cpu as f64 / cap_cpu.max(1) as f64,
        memory_utilization: used_mem as f64 / cap_mem.max(1) as f64,
        fragmentation: if free_cpu == 0 { 0.0 } else { stranded as f64 / free_cpu as f64 },
        queued,
        running,
    }
}

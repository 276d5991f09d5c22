//! An autoscaled pool on the virtual clock: the same scale-up planner as
//! the server's autoscaler ([`shepherd_sched::autoscale::plan`]), machines
//! that join a fixed delay after they are asked for, and idle machines
//! retired, against a fixed pool sized for the peak. Reports machine-hours
//! (machines being made count: they are paid for) and queue wait.

use crate::report::percentile;
use crate::workload::WorkloadTask;
use serde::Serialize;
use shepherd_core::{Resources, TaskId};
use shepherd_sched::autoscale::PoolOption;
use shepherd_sched::{Engine, NodeSnapshot, PendingTask, QuotaLedger};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The pool and its autoscaler.
#[derive(Debug, Clone)]
pub struct PoolSim {
    /// Each machine's CPU (millicores), memory (MiB) and task limit.
    pub machine_cpu: u32,
    pub machine_memory: u32,
    pub machine_tasks: u32,
    pub min: u32,
    pub max: u32,
    pub max_creating: u32,
    /// From the ask to the machine's node taking tasks.
    pub provision_seconds: f64,
    /// A machine idle this long is retired.
    pub idle_seconds: f64,
    /// How often the autoscaler looks.
    pub interval_seconds: f64,
    /// Virtual seconds between scheduling passes.
    pub tick_seconds: f64,
}

/// One instant: machines (made and being made), queued and running tasks.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSample {
    pub at_seconds: f64,
    pub machines: u32,
    pub queued: usize,
    pub running: usize,
}

/// What a run came to.
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    pub mode: String,
    pub tasks: usize,
    pub placed: usize,
    pub machine_hours: f64,
    pub peak_machines: u32,
    pub machines_made: u32,
    pub wait_mean_seconds: f64,
    pub wait_p50_seconds: f64,
    pub wait_p99_seconds: f64,
    pub wait_max_seconds: f64,
    pub makespan_seconds: f64,
    pub samples: Vec<PoolSample>,
}

struct Machine {
    node: NodeSnapshot,
    ready_at: u64,
    idle_since: Option<u64>,
}

fn pending(index: usize, task: &WorkloadTask) -> PendingTask {
    let mut p = PendingTask::new(TaskId(ulid::Ulid(index as u128 + 1)), Resources { cpu_millicores: task.cpu, memory_mib: task.memory });
    p.project = task.project.clone();
    p.priority = task.priority;
    p.pool = Some("pool".into());
    p
}

fn node(id: usize, pool: &PoolSim) -> NodeSnapshot {
    let mut node = NodeSnapshot::new(format!("m-{id:05}"), Resources { cpu_millicores: pool.machine_cpu, memory_mib: pool.machine_memory });
    node.max_tasks = pool.machine_tasks;
    node.pool = Some("pool".into());
    node
}

/// Replays `workload` on a pool: autoscaled when `fixed` is `None`, else
/// `fixed` machines all the time.
pub fn simulate_pool(engine: &Engine, workload: &[WorkloadTask], pool: &PoolSim, fixed: Option<u32>) -> PoolReport {
    let ms = |seconds: f64| (seconds * 1000.0).round() as u64;
    let tick = ms(pool.tick_seconds).max(1);
    let interval = ms(pool.interval_seconds).max(tick);
    let mut machines: Vec<Machine> = Vec::new();
    let mut made = 0u32;
    let start_with = fixed.unwrap_or(pool.min);
    for _ in 0..start_with {
        machines.push(Machine { node: node(made as usize, pool), ready_at: 0, idle_since: Some(0) });
        made += 1;
    }
    let mut queue: Vec<PendingTask> = Vec::new();
    // (end, machine id, task index)
    let mut running: BinaryHeap<Reverse<(u64, String, usize)>> = BinaryHeap::new();
    let mut waits: Vec<f64> = Vec::new();
    let mut samples = Vec::new();
    let (mut next, mut now, mut last_end, mut machine_ms, mut peak) = (0usize, 0u64, 0u64, 0u128, 0u32);
    let mut next_look = 0u64;
    loop {
        // Ends free their machines.
        while let Some(Reverse((end, id, index))) = running.peek().cloned() {
            if end > now {
                break;
            }
            running.pop();
            if let Some(m) = machines.iter_mut().find(|m| m.node.id == id) {
                let r = pending(index, &workload[index]).resources;
                m.node.allocated.cpu_millicores -= r.cpu_millicores;
                m.node.allocated.memory_mib -= r.memory_mib;
                m.node.task_count -= 1;
            }
        }
        while next < workload.len() && ms(workload[next].at) <= now {
            queue.push(pending(next, &workload[next]));
            next += 1;
        }
        // Place on the machines that are up.
        if !queue.is_empty() {
            let up: Vec<NodeSnapshot> = machines.iter().filter(|m| m.ready_at <= now).map(|m| m.node.clone()).collect();
            if !up.is_empty() {
                let plan = engine.place_batch(up, std::mem::take(&mut queue), &HashMap::new(), now);
                for placement in &plan.placements {
                    let index = (placement.task_id.0 .0 - 1) as usize;
                    let task = &workload[index];
                    if let Some(m) = machines.iter_mut().find(|m| m.node.id == placement.node_id) {
                        m.node.allocated.cpu_millicores += task.cpu;
                        m.node.allocated.memory_mib += task.memory;
                        m.node.task_count += 1;
                    }
                    let end = now + ms(task.duration);
                    last_end = last_end.max(end);
                    running.push(Reverse((end, placement.node_id.clone(), index)));
                    waits.push(now.saturating_sub(ms(task.at)) as f64 / 1000.0);
                }
                queue = plan
                    .unplaced
                    .iter()
                    .map(|u| {
                        let index = (u.task_id.0 .0 - 1) as usize;
                        pending(index, &workload[index])
                    })
                    .collect();
            }
        }
        // The autoscaler.
        if fixed.is_none() && now >= next_look {
            next_look = now + interval;
            for m in machines.iter_mut() {
                if m.ready_at <= now && m.node.task_count == 0 {
                    m.idle_since.get_or_insert(now);
                } else {
                    m.idle_since = None;
                }
            }
            // Retire the longest idle first, never below min.
            let idle_limit = ms(pool.idle_seconds);
            let mut retire = machines.len().saturating_sub(pool.min as usize);
            machines.retain(|m| {
                let go = retire > 0 && m.idle_since.is_some_and(|since| now - since >= idle_limit);
                if go {
                    retire -= 1;
                }
                !go
            });
            if !queue.is_empty() {
                let creating = machines.iter().filter(|m| m.ready_at > now).count() as u32;
                let total = machines.len() as u32;
                let room = pool.max.saturating_sub(total).min(pool.max_creating.saturating_sub(creating));
                let nodes: Vec<NodeSnapshot> = machines.iter().filter(|m| m.ready_at <= now).map(|m| m.node.clone()).collect();
                let coming: Vec<NodeSnapshot> = machines.iter().filter(|m| m.ready_at > now).map(|m| m.node.clone()).collect();
                let option = PoolOption { name: "pool".into(), template: node(usize::MAX, pool), room, limited_by: None };
                let plan = shepherd_sched::autoscale::plan(
                    engine,
                    nodes,
                    coming,
                    &HashMap::new(),
                    QuotaLedger::default(),
                    queue.clone(),
                    std::slice::from_ref(&option),
                    now,
                );
                for _ in 0..plan.create.get("pool").copied().unwrap_or(0) {
                    machines.push(Machine {
                        node: node(made as usize, pool),
                        ready_at: now + ms(pool.provision_seconds),
                        idle_since: None,
                    });
                    made += 1;
                }
            }
        }
        let count = machines.len() as u32;
        peak = peak.max(count);
        machine_ms += u128::from(count) * u128::from(tick);
        if samples.last().is_none_or(|s: &PoolSample| now as f64 / 1000.0 - s.at_seconds >= 60.0) {
            samples.push(PoolSample { at_seconds: now as f64 / 1000.0, machines: count, queued: queue.len(), running: running.len() });
        }
        if next == workload.len() && running.is_empty() && queue.is_empty() {
            break;
        }
        now += tick;
        // Nothing to do until the next arrival: jump there, paying for the machines kept.
        if queue.is_empty() && running.is_empty() && next < workload.len() {
            let jump_to = (ms(workload[next].at) / tick * tick).max(now);
            let kept_for = if fixed.is_some() { jump_to - now } else { (jump_to - now).min(ms(pool.idle_seconds) + interval) };
            machine_ms += u128::from(count) * u128::from(kept_for);
            if fixed.is_none() && jump_to - now > ms(pool.idle_seconds) + interval {
                // Every idle machine above min retires meanwhile.
                machines.truncate(pool.min as usize);
                machine_ms += u128::from(pool.min) * u128::from(jump_to - now - kept_for);
            }
            now = jump_to;
        }
        if now > ms(workload.last().map_or(0.0, |t| t.at)) + 30 * 86_400_000 {
            break; // a task no machine fits: give up after 30 days
        }
    }
    waits.sort_by(|a, b| a.total_cmp(b));
    PoolReport {
        mode: match fixed {
            Some(n) => format!("fixed {n} machines"),
            None => format!("autoscaled {}..{}", pool.min, pool.max),
        },
        tasks: workload.len(),
        placed: waits.len(),
        machine_hours: machine_ms as f64 / 3_600_000.0,
        peak_machines: peak,
        machines_made: made,
        wait_mean_seconds: if waits.is_empty() { 0.0 } else { waits.iter().sum::<f64>() / waits.len() as f64 },
        wait_p50_seconds: percentile(&waits, 50.0),
        wait_p99_seconds: percentile(&waits, 99.0),
        wait_max_seconds: waits.last().copied().unwrap_or(0.0),
        makespan_seconds: last_end as f64 / 1000.0,
        samples,
    }
}

/// A bursty day: a trickle all day and `bursts` bursts of `burst_tasks`
/// tasks, each arriving within five minutes at a seeded hour.
pub fn bursty_day(seed: u64, trickle_per_hour: usize, bursts: usize, burst_tasks: usize, mean_duration: f64) -> Vec<WorkloadTask> {
    let mut state = seed;
    let mut unit = move || {
        state = shepherd_sched::rng::mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let day = 86_400.0;
    let mut tasks = Vec::new();
    let mut push = |at: f64, unit: &mut dyn FnMut() -> f64, project: &str| {
        tasks.push(WorkloadTask {
            at,
            duration: (-mean_duration * (1.0 - unit()).max(1e-9).ln()).max(1.0),
            cpu: 250 * (1 + (unit() * 4.0) as u32),
            memory: 256 * (1 + (unit() * 4.0) as u32),
            project: project.into(),
            priority: 0,
            constraints: Vec::new(),
            gpus: 0,
        });
    };
    for _ in 0..trickle_per_hour * 24 {
        let at = unit() * day;
        push(at, &mut unit, "steady");
    }
    for _ in 0..bursts {
        let start = unit() * (day - 600.0);
        for _ in 0..burst_tasks {
            let at = start + unit() * 300.0;
            push(at, &mut unit, "burst");
        }
    }
    tasks.sort_by(|a, b| a.at.total_cmp(&b.at));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolSim {
        PoolSim {
            machine_cpu: 4000,
            machine_memory: 8192,
            machine_tasks: 32,
            min: 0,
            max: 20,
            max_creating: 20,
            provision_seconds: 60.0,
            idle_seconds: 300.0,
            interval_seconds: 10.0,
            tick_seconds: 1.0,
        }
    }

    #[test]
    fn autoscaling_pays_for_less_and_waits_for_its_machines() {
        let workload = bursty_day(7, 20, 3, 400, 60.0);
        let engine = Engine::default();
        let auto = simulate_pool(&engine, &workload, &pool(), None);
        let fixed = simulate_pool(&engine, &workload, &pool(), Some(auto.peak_machines.max(1)));
        assert_eq!((auto.placed, fixed.placed), (workload.len(), workload.len()));
        assert!(auto.peak_machines <= 20);
        assert!(auto.machine_hours < fixed.machine_hours / 2.0, "{} vs {}", auto.machine_hours, fixed.machine_hours);
        // A burst waits at least one machine's provisioning time.
        assert!(auto.wait_max_seconds >= 60.0, "{}", auto.wait_max_seconds);
        assert!(fixed.wait_p99_seconds <= auto.wait_p99_seconds);
    }

    #[test]
    fn never_more_than_max() {
        let workload = bursty_day(3, 0, 1, 300, 120.0);
        let mut small = pool();
        small.max = 4;
        let report = simulate_pool(&Engine::default(), &workload, &small, None);
        assert_eq!(report.peak_machines, 4);
        assert_eq!(report.placed, workload.len());
    }
}

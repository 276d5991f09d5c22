//! Replays a cluster's own history ([`shepherd_core::history`]) through the
//! real engine on the virtual clock, beside what really happened.
//!
//! The history is read as a stream: node records first (the inventory over
//! time), then tasks in order of arrival, each pulled in only when the
//! clock reaches it, so memory holds the queue and what runs, not the
//! history. A task holds its node in the replay for as long as its last
//! attempt really held one (placement to end; earlier attempts were lost
//! or retried); tasks that never ran (cancelled in the queue, still
//! queued) are counted and left out. A node that goes away puts the tasks
//! the replay ran there back in the queue, as a lost attempt would be.
//!
//! Events move the clock: arrivals, ends and node changes, each rounded up
//! to the next scheduling pass (`tick`). A pass takes at most
//! [`PASS_TASKS`] tasks from the queue, the projects taking turns, in the
//! store's order within a project (priority, then arrival), as the
//! server's scheduler reads its queue; the engine orders them by fair
//! share and places them.

mod autoscaled;
mod outcome;
mod overlay;
mod pass;
mod read;
mod table;

pub use outcome::{PoolHours, ReplayReport};
use overlay::{inventory, Node};
pub use overlay::{AddNodes, AutoscaleOverlay, Overlay, QuotaOverlay};
use pass::{PassOrder, Queues};
pub use read::read_history;
pub use table::table;

use crate::report::{ProfileReport, Sample, Wait};
use autoscaled::Autoscaled;
use shepherd_core::history::{
    HistoryError, HistoryRecord, MachineRecord, NodeHistoryState, NodeRecord, PoolRecord, QuotaRecord, TaskRecord,
};
use shepherd_core::{Constraint, ProjectLimits, Resources, TaskId};
use shepherd_sched::quota::ProjectUsage;
use shepherd_sched::{Engine, NodeSnapshot, PendingTask, Placer, QuotaLedger};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// The most tasks one pass reads from the queue (the server's 10 pages of 1,000).
pub const PASS_TASKS: usize = 10_000;

/// A pass ends after this many tasks in a row found no node (the cluster
/// is full for them); the rest wait for the next.
pub const PASS_MISSES: usize = 256;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Virtual seconds between scheduling passes.
    pub tick_seconds: f64,
    pub seed: u64,
    /// Place every task with this profile (default: each task's own, else
    /// its project's, else the engine's default).
    pub profile: Option<String>,
    /// Changes to try: nodes added or removed, pools resized.
    pub overlay: Overlay,
    /// Take each pass's whole batch from the queues and order it at once,
    /// as the server does, instead of lazily as far as the pass gets (the
    /// same placements, slower on a contended history: for checking).
    pub whole_batches: bool,
}

impl Default for ReplayConfig {
    fn default() -> ReplayConfig {
        ReplayConfig { tick_seconds: 0.05, seed: 42, profile: None, overlay: Overlay::default(), whole_batches: false }
    }
}

const HEAD_FIRST: &str = "a node, machine, pool or quota line after the first task: they come first";

/// The most machine lines a history may hold.
pub const MAX_MACHINES: usize = 1_000_000;

/// A task waiting or running in the replay.
#[derive(Clone)]
struct Job {
    task: PendingTask,
    at_ms: i64,
    service_ms: i64,
    /// Placed before (and lost since): its wait is counted already.
    placed: bool,
    /// Its profile sorts its batch (largest first).
    sorts: bool,
    /// Its shape: tasks of one shape fit the same nodes.
    shape: u32,
}

/// What decides where a task fits (two tasks with the same fit the same
/// nodes): compared whole.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ShapeKey {
    cpu: u32,
    memory: u32,
    gpus: u32,
    pool: Option<String>,
    profile: Option<String>,
    constraints: Vec<String>,
}

/// The shapes of the tasks waiting, and how many of each.
#[derive(Default)]
struct Shapes {
    ids: HashMap<ShapeKey, u32>,
    waiting: HashMap<u32, usize>,
}

impl Shapes {
    fn of(&mut self, task: &TaskRecord, profile: Option<&String>) -> u32 {
        let key = ShapeKey {
            cpu: task.cpu,
            memory: task.memory,
            gpus: task.gpus,
            pool: task.pool.clone(),
            profile: profile.cloned(),
            constraints: task.constraints.clone(),
        };
        let next = self.ids.len() as u32;
        *self.ids.entry(key).or_insert(next)
    }

    fn add(&mut self, shape: u32) {
        *self.waiting.entry(shape).or_default() += 1;
    }

    fn remove(&mut self, shape: u32) {
        if let Some(n) = self.waiting.get_mut(&shape) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&shape);
            }
        }
    }
}

/// How long before `now` (and after `origin`) something at `at` happened.
fn since(at: i64, now: i64, origin: i64) -> i64 {
    (now - at.max(origin)).max(0)
}

/// Rounds `t` up to the next pass.
fn pass_at(t: i64, origin: i64, tick: i64) -> i64 {
    origin + (t - origin + tick - 1).div_euclid(tick) * tick
}

/// Replays `records` (a history, header first) under `engine`.
pub fn replay(
    engine: &Engine,
    records: impl IntoIterator<Item = Result<HistoryRecord, HistoryError>>,
    config: &ReplayConfig,
) -> Result<ReplayReport, HistoryError> {
    let started = std::time::Instant::now();
    let mut records = records.into_iter().peekable();
    let header = match records.next().transpose()? {
        Some(HistoryRecord::Header(h)) => h,
        _ => return Err(HistoryError("a history starts with its header".into())),
    };
    // The settings and the inventory: every quota, pool, machine and node
    // record, before the first task.
    let mut node_records: Vec<NodeRecord> = Vec::new();
    let mut machines: Vec<MachineRecord> = Vec::new();
    let mut pool_records: BTreeMap<String, PoolRecord> = BTreeMap::new();
    let mut limits: HashMap<String, ProjectLimits> = HashMap::new();
    while let Some(Ok(HistoryRecord::Node(_) | HistoryRecord::Machine(_) | HistoryRecord::Pool(_) | HistoryRecord::Quota(_))) =
        records.peek()
    {
        match records.next() {
            Some(Ok(HistoryRecord::Node(n))) if node_records.len() < shepherd_core::history::MAX_NODES * 4 => node_records.push(n),
            Some(Ok(HistoryRecord::Machine(m))) if machines.len() < MAX_MACHINES => machines.push(m),
            Some(Ok(HistoryRecord::Pool(p))) if pool_records.len() < 10_000 => {
                pool_records.insert(p.pool.clone(), p);
            }
            Some(Ok(HistoryRecord::Quota(q))) if limits.len() < 100_000 => {
                limits.insert(q.project.clone(), q.limits());
            }
            _ => return Err(HistoryError("too many node, machine, pool or quota lines".into())),
        }
    }
    for (project, q) in &config.overlay.quotas {
        limits.insert(project.clone(), q.limits());
    }
    limits.retain(|project, l| QuotaRecord::of(project.clone(), l).is_some());
    // The real inventory over time (for the real side's utilization),
    // whatever the overlay changes.
    let mut real_changes: Vec<(i64, String, NodeHistoryState, Resources)> =
        node_records.iter().map(|r| (r.at, r.node.clone(), r.state, Resources { cpu_millicores: r.cpu, memory_mib: r.memory })).collect();
    config.overlay.check()?;
    let (mut nodes, real_nodes) = inventory(node_records, &config.overlay);
    if real_nodes.len() > shepherd_core::history::MAX_NODES {
        return Err(HistoryError(format!("more than {} nodes", shepherd_core::history::MAX_NODES)));
    }
    // The pools the replay scales itself, their machines after the rest.
    let mut scaled: Vec<Autoscaled> = Vec::new();
    let mut slot_nodes: Vec<NodeSnapshot> = Vec::new();
    for (name, changes) in &config.overlay.autoscale {
        let record = changes.apply(name, pool_records.get(name))?;
        if nodes.len() + slot_nodes.len() + record.max as usize > shepherd_core::history::MAX_NODES {
            return Err(HistoryError(format!("autoscale.{name}: the pools make more than {} nodes", shepherd_core::history::MAX_NODES)));
        }
        let (pool, made) = Autoscaled::new(record, nodes.len() + slot_nodes.len(), changes.provision_seconds, &machines);
        slot_nodes.extend(made);
        scaled.push(pool);
    }
    if nodes.len() > shepherd_core::history::MAX_NODES {
        return Err(HistoryError(format!("the overlay makes {} nodes (at most {})", nodes.len(), shepherd_core::history::MAX_NODES)));
    }
    if nodes.len() + slot_nodes.len() > shepherd_core::history::MAX_NODES {
        return Err(HistoryError(format!("the autoscaled pools make more than {} nodes", shepherd_core::history::MAX_NODES)));
    }
    if nodes.is_empty() && slot_nodes.is_empty() {
        return Err(HistoryError("the history has no node (nor does the overlay add one)".into()));
    }
    real_changes.sort_by_key(|c| c.0);
    let mut changes: Vec<(i64, usize, NodeHistoryState, Resources)> =
        nodes.iter().enumerate().flat_map(|(i, n)| n.changes.iter().map(move |(at, s, r)| (*at, i, *s, *r))).collect();
    changes.sort_by_key(|c| (c.0, c.1));
    for node in &mut nodes {
        node.snapshot.ready = false;
    }
    nodes.extend(slot_nodes.into_iter().map(|snapshot| Node { snapshot, changes: Vec::new() }));
    let mut placer = engine.placer(nodes.iter().map(|n| n.snapshot.clone()).collect(), config.seed);
    // Whether a task fits is all a pass needs; why not, only at the end.
    placer.explain = false;
    let tick = ((config.tick_seconds * 1000.0).round() as i64).max(1);
    // The clock starts with the first task (a window's quiet start would
    // only dilute the figures), or the header's start without one.
    let mut next_task: Option<TaskRecord> = match records.next().transpose()? {
        None => None,
        Some(HistoryRecord::Task(t)) => Some(t),
        Some(HistoryRecord::Header(_)) => return Err(HistoryError("a second header".into())),
        Some(_) => return Err(HistoryError(HEAD_FIRST.into())),
    };
    let origin = next_task.as_ref().map_or(header.from, |t| t.at);

    // The replay's state.
    let mut queues: Queues = BTreeMap::new();
    let mut waiting: HashMap<u64, Job> = HashMap::new();
    let mut running: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut on_node: HashMap<u64, (usize, Job, i64)> = HashMap::new();
    // What each project holds (its fair share's usage and its quota's).
    let mut held: HashMap<String, ProjectUsage> = HashMap::new();
    let mut unfit: Vec<PendingTask> = Vec::new();
    // Waiting tasks whose profile sorts its batch: passes read whole batches.
    let mut sorting = 0usize;
    let mut shapes = Shapes::default();
    let mut replay_waits: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    // The real side.
    // (time, Δcpu, Δqueued, node): the real attempts' holds, per node.
    let mut real_events: BinaryHeap<Reverse<RealEvent>> = BinaryHeap::new();
    let real_index: HashMap<String, usize> = real_nodes.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
    let mut real_held: Vec<i64> = vec![0; real_nodes.len() + 1];
    let mut real_memory: Vec<i64> = vec![0; real_nodes.len() + 1];
    // Each real node's capacity while it is up.
    let mut real_up: Vec<Option<Resources>> = vec![None; real_nodes.len() + 1];
    // A typical task (the median of the first 10,000): free CPU on a node
    // without room for one is stranded (fragmentation).
    let mut typical = Typical::default();
    let mut real_waits: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let (mut real_queued, mut real_running, mut real_capacity, mut real_cpu) = (0i64, 0i64, 0i64, 0i64);
    let (mut replay_used, mut replay_cap) = (0i64, 0i64);
    let mut integrals = [0f64; 4];
    let mut real_ready: HashMap<String, i64> = HashMap::new();
    let mut real_change = 0usize;

    let (mut real_samples, mut replay_samples) = (Vec::new(), Vec::new());
    let mut change = 0usize;
    let mut seq: u64 = 0;
    let mut never_ran = 0usize;
    let mut tasks = 0usize;
    let mut placed = 0usize;
    let mut decisions = 0usize;
    let mut decision_seconds = 0.0f64;
    let mut last_end = origin;
    let mut now = origin;
    let mut input_done = next_task.is_none();
    let pull = |records: &mut std::iter::Peekable<_>| -> Result<Option<TaskRecord>, HistoryError> {
        match records.next() {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(HistoryRecord::Task(t))) => Ok(Some(t)),
            Some(Ok(HistoryRecord::Header(_))) => Err(HistoryError("a second header".into())),
            Some(Ok(_)) => Err(HistoryError(HEAD_FIRST.into())),
        }
    };
    let mut counted = vec![false; placer.cluster.nodes.len()];
    for pool in &mut scaled {
        for i in pool.start(origin) {
            turn(&mut placer, &mut counted, &mut replay_cap, i, true);
        }
    }
    let mut sample_every = tick.max(1000);
    let mut last_sample = i64::MIN;
    loop {
        if next_task.is_none() && !input_done {
            next_task = pull(&mut records)?;
            input_done = next_task.is_none();
        }
        // Node changes due.
        while let Some((at, i, state, resources)) = changes.get(change).copied() {
            if at > now {
                break;
            }
            change += 1;
            let node = &mut placer.cluster.nodes[i];
            match state {
                // (Changes land at their own time in the integrals, though
                // the loop sees them at the pass after.)
                // A node's capacity counts while it is up (ready or
                // draining), as on the real side.
                NodeHistoryState::Ready => {
                    let before = if counted[i] { i64::from(node.capacity.cpu_millicores) } else { 0 };
                    node.ready = true;
                    node.capacity = resources;
                    counted[i] = true;
                    let delta = i64::from(resources.cpu_millicores) - before;
                    replay_cap += delta;
                    integrals[3] += (delta * since(at, now, origin)) as f64;
                }
                NodeHistoryState::Draining => {
                    // No new tasks; what runs there finishes.
                    node.ready = false;
                }
                NodeHistoryState::Gone => {
                    if std::mem::replace(&mut counted[i], false) {
                        replay_cap -= i64::from(node.capacity.cpu_millicores);
                        integrals[3] -= (i64::from(node.capacity.cpu_millicores) * since(at, now, origin)) as f64;
                    }
                    node.ready = false;
                    // What the replay ran there is lost: back to the queue.
                    let lost: Vec<u64> = on_node.iter().filter(|(_, (n, ..))| *n == i).map(|(k, _)| *k).collect();
                    for key in lost {
                        if let Some((n, job, _)) = on_node.remove(&key) {
                            placer.release(n, &job.task);
                            replay_used -= i64::from(job.task.resources.cpu_millicores);
                            integrals[2] -= (i64::from(job.task.resources.cpu_millicores) * since(at, now, origin)) as f64;
                            unhold(&mut held, &job.task);
                            queues.entry(job.task.project.clone()).or_default().push((job.task.priority, Reverse(key)));
                            sorting += usize::from(job.sorts);
                            shapes.add(job.shape);
                            waiting.insert(key, job);
                        }
                    }
                }
            }
        }
        // Ends due (an entry whose task was lost meanwhile is stale).
        while let Some(Reverse((end, key))) = running.peek().copied() {
            if end > now {
                break;
            }
            running.pop();
            if on_node.get(&key).is_some_and(|(.., e)| *e == end) {
                if let Some((n, job, _)) = on_node.remove(&key) {
                    placer.release(n, &job.task);
                    replay_used -= i64::from(job.task.resources.cpu_millicores);
                    // Free from its end, though the next pass places on it.
                    integrals[2] -= (i64::from(job.task.resources.cpu_millicores) * since(end, now, origin)) as f64;
                    unhold(&mut held, &job.task);
                    scaled.iter_mut().for_each(Autoscaled::wake);
                }
            }
        }
        // Machines made by the replay's autoscaler that are ready now.
        for pool in &mut scaled {
            for i in pool.joins(now) {
                turn(&mut placer, &mut counted, &mut replay_cap, i, true);
            }
        }
        // Arrivals due.
        while let Some(task) = next_task.take() {
            if task.at > now {
                next_task = Some(task);
                break;
            }
            tasks += 1;
            for a in &task.attempts {
                // (An attempt on a node the history lacks counts on none.)
                let node = real_index.get(&a.node).copied().unwrap_or(real_nodes.len());
                real_events.push(Reverse((a.placed, i64::from(task.cpu), i64::from(task.memory), 0, node)));
                if let Some(end) = a.ended {
                    real_events.push(Reverse((end, -i64::from(task.cpu), -i64::from(task.memory), 0, node)));
                }
            }
            real_events.push(Reverse((task.at, 0, 0, 1, real_nodes.len())));
            typical.see(task.cpu, task.memory);
            if let Some(first) = task.attempts.first() {
                real_events.push(Reverse((first.placed.max(task.at), 0, 0, -1, real_nodes.len())));
            }
            let (Some(service), Some(wait)) = (task.service_ms(), task.wait_ms()) else {
                never_ran += 1;
                continue;
            };
            real_waits.entry(task.project.clone()).or_default().push(wait as f32 / 1000.0);
            seq += 1;
            let pending = pending(seq, &task, config.profile.as_deref());
            let sorts = engine.sorts_batch_of(&pending);
            let shape = shapes.of(&task, pending.profile.as_ref());
            let job = Job { task: pending, at_ms: task.at, service_ms: service, placed: false, sorts, shape };
            queues.entry(task.project.clone()).or_default().push((task.priority, Reverse(seq)));
            sorting += usize::from(job.sorts);
            shapes.add(job.shape);
            waiting.insert(seq, job);
            scaled.iter_mut().for_each(Autoscaled::wake);
            if next_task.is_none() && !input_done {
                next_task = pull(&mut records)?;
                input_done = next_task.is_none();
            }
        }
        // A pass.
        if !waiting.is_empty() {
            placer.new_pass();
            let usage = usage_of(&held);
            let mut order = PassOrder::new(
                engine,
                &placer.cluster.nodes,
                &usage,
                &mut queues,
                |k| waiting.get(&k).map(|j| j.task.clone()),
                PASS_TASKS,
                config.whole_batches || sorting > 0,
            );
            let pass_started = std::time::Instant::now();
            let mut misses = 0usize;
            let mut quota = (!limits.is_empty()).then(|| QuotaLedger::new(held.clone(), limits.clone()));
            unfit.clear();
            // Tasks tried and left waiting: back in their queues after the pass.
            let mut back: Vec<u64> = Vec::new();
            // The shapes that found no node in this pass.
            let mut failed: std::collections::HashSet<u32> = std::collections::HashSet::new();
            while misses < PASS_MISSES {
                let Some(key) = order.next(&mut queues, |k| waiting.get(&k).map(|j| j.task.resources)) else { break };
                let Some(job) = waiting.get(&key) else { continue };
                if quota.as_ref().is_some_and(|q| q.check(&job.task).is_some()) {
                    // Held by its project's quota: waits, found no node.
                    back.push(key);
                    continue;
                }
                decisions += 1;
                match placer.place(&job.task) {
                    Ok(n) => {
                        let Some(mut job) = waiting.remove(&key) else { continue };
                        sorting -= usize::from(job.sorts);
                        shapes.remove(job.shape);
                        let task = &job.task;
                        if let Some(quota) = &mut quota {
                            quota.charge(task);
                        }
                        hold(&mut held, task);
                        replay_used += i64::from(task.resources.cpu_millicores);
                        if !std::mem::replace(&mut job.placed, true) {
                            replay_waits.entry(job.task.project.clone()).or_default().push((now - job.at_ms).max(0) as f32 / 1000.0);
                            placed += 1;
                        }
                        let end = now + job.service_ms;
                        last_end = last_end.max(end);
                        running.push(Reverse((end, key)));
                        on_node.insert(key, (n, job, end));
                        misses = 0;
                    }
                    Err(_) => {
                        misses += 1;
                        back.push(key);
                        if unfit.len() < autoscaled::PLAN_TASKS && !scaled.is_empty() {
                            unfit.push(job.task.clone());
                        }
                        // Every shape waiting has found no node: nothing
                        // more can be placed in this pass (what fits no node
                        // now fits none until the pass ends).
                        failed.insert(job.shape);
                        if failed.len() == shapes.waiting.len() {
                            break;
                        }
                    }
                }
            }
            // The cluster is full for this pass: the rest wait (what an
            // autoscaled pool could run is planned for).
            while !scaled.is_empty() && unfit.len() < autoscaled::PLAN_TASKS {
                let Some(key) = order.next(&mut queues, |k| waiting.get(&k).map(|j| j.task.resources)) else { break };
                back.push(key);
                unfit.extend(waiting.get(&key).map(|j| j.task.clone()));
            }
            back.extend(order.untaken());
            for key in back {
                if let Some(job) = waiting.get(&key) {
                    queues.entry(job.task.project.clone()).or_default().push((job.task.priority, Reverse(key)));
                }
            }
            decision_seconds += pass_started.elapsed().as_secs_f64();
        } else {
            unfit.clear();
        }
        // The replay's autoscaler.
        if !scaled.is_empty() {
            let usage = usage_of(&held);
            for pool in &mut scaled {
                let ledger = QuotaLedger::new(held.clone(), limits.clone());
                for i in pool.look(now, &placer.cluster.nodes, engine, &usage, ledger, &unfit, config.seed) {
                    turn(&mut placer, &mut counted, &mut replay_cap, i, false);
                }
            }
        }
        // The real side up to now.
        while let Some((at, id, state, r)) = real_changes.get(real_change).cloned() {
            if at > now {
                break;
            }
            real_change += 1;
            let i = real_index.get(&id).copied().unwrap_or(real_nodes.len());
            real_up[i] = (state != NodeHistoryState::Gone).then_some(r);
            if let Some(before) = real_ready.remove(&id) {
                real_capacity -= before;
                real_cpu -= real_held[i];
                integrals[1] -= (before * since(at, now, origin)) as f64;
                integrals[0] -= (real_held[i] * since(at, now, origin)) as f64;
            }
            if state != NodeHistoryState::Gone {
                real_ready.insert(id, i64::from(r.cpu_millicores));
                real_capacity += i64::from(r.cpu_millicores);
                real_cpu += real_held[i];
                integrals[1] += (i64::from(r.cpu_millicores) * since(at, now, origin)) as f64;
                integrals[0] += (real_held[i] * since(at, now, origin)) as f64;
            }
        }
        while let Some(Reverse((at, cpu, memory, queued, node))) = real_events.peek().copied() {
            if at > now {
                break;
            }
            real_events.pop();
            real_held[node] += cpu;
            real_memory[node] += memory;
            // What attempts hold on nodes that are up (a dead node's
            // attempts are held until the server notices: not on a node).
            if real_nodes.get(node).is_some_and(|id| real_ready.contains_key(id)) {
                real_cpu += cpu;
                integrals[0] += (cpu * since(at, now, origin)) as f64;
            }
            real_queued += queued;
            real_running += cpu.signum();
        }
        if now.saturating_sub(last_sample) >= sample_every {
            last_sample = now;
            let at_seconds = (now - origin) as f64 / 1000.0;
            let median = typical.median();
            let real_nodes_now = real_up.iter().enumerate().filter_map(|(i, up)| {
                up.map(|capacity| {
                    (
                        capacity,
                        Resources {
                            cpu_millicores: real_held[i].clamp(0, i64::from(u32::MAX)) as u32,
                            memory_mib: real_memory[i].clamp(0, i64::from(u32::MAX)) as u32,
                        },
                    )
                })
            });
            let (real_memory_use, real_fragmentation) = spread(real_nodes_now, median);
            let replay_nodes_now = placer.cluster.nodes.iter().zip(&counted).filter(|(_, up)| **up).map(|(n, _)| (n.capacity, n.allocated));
            let (replay_memory_use, replay_fragmentation) = spread(replay_nodes_now, median);
            real_samples.push(Sample {
                at_seconds,
                cpu_utilization: real_cpu.max(0) as f64 / real_capacity.max(1) as f64,
                memory_utilization: real_memory_use,
                fragmentation: real_fragmentation,
                queued: real_queued.max(0) as usize,
                running: real_running.max(0) as usize,
            });
            replay_samples.push(Sample {
                at_seconds,
                cpu_utilization: replay_used.max(0) as f64 / replay_cap.max(1) as f64,
                memory_utilization: replay_memory_use,
                fragmentation: replay_fragmentation,
                queued: waiting.len(),
                running: on_node.len(),
            });
            // About 2,000 samples whatever the history's length.
            if real_samples.len() >= 4000 {
                sample_every *= 2;
                for samples in [&mut real_samples, &mut replay_samples] {
                    let kept: Vec<Sample> = samples.iter().step_by(2).cloned().collect();
                    *samples = kept;
                }
            }
        }
        // The next event.
        let mut next = i64::MAX;
        if let Some(t) = &next_task {
            next = next.min(t.at);
        }
        if let Some(Reverse((end, _))) = running.peek() {
            next = next.min(*end);
        }
        if let Some((at, ..)) = changes.get(change) {
            next = next.min(*at);
        }
        if let Some(Reverse((at, ..))) = real_events.peek() {
            next = next.min(*at);
        }
        if let Some((at, ..)) = real_changes.get(real_change) {
            next = next.min(*at);
        }
        for pool in &scaled {
            if let Some(at) = pool.next_event(&placer.cluster.nodes, !waiting.is_empty()) {
                next = next.min(at);
            }
        }
        if next == i64::MAX {
            // Nothing will change any more (what still waits fits nowhere).
            break;
        }
        // Sample the quiet stretches too.
        next = next.min(now + sample_every);
        let then = pass_at(next.max(now + 1), origin, tick);
        // Both sides' CPU held and offered, over time (the means are
        // these integrals' ratios, not averages of instants).
        let dt = (then - now) as f64;
        integrals[0] += real_cpu.max(0) as f64 * dt;
        integrals[1] += real_capacity.max(0) as f64 * dt;
        integrals[2] += replay_used.max(0) as f64 * dt;
        integrals[3] += replay_cap.max(0) as f64 * dt;
        for pool in &mut scaled {
            pool.machine_ms += f64::from(pool.count()) * dt;
        }
        now = then;
    }
    let unplaced = {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        placer.explain = true;
        placer.new_pass();
        for job in waiting.values() {
            if let Err(unfit) = placer.place(&job.task) {
                *reasons.entry(unfit.to_string()).or_default() += 1;
            }
        }
        reasons.into_iter().collect::<Vec<_>>()
    };
    let span = ((last_end - origin).max(0) as f64 / 1000.0).max(real_samples.last().map_or(0.0, |s| s.at_seconds));
    let waits = |w: BTreeMap<String, Vec<f32>>| -> Vec<Wait> {
        w.into_iter().map(|(project, w)| Wait::of(project, w.into_iter().map(f64::from).collect())).collect()
    };
    let real_mean = integrals[0] / integrals[1].max(1.0);
    let replay_mean = integrals[2] / integrals[3].max(1.0);
    let peak = |s: &[Sample]| s.iter().map(|s| s.cpu_utilization).fold(0.0, f64::max);
    let real_placed: usize = real_waits.values().map(Vec::len).sum();
    let report =
        |name: &str, placed: usize, mean: f64, waits: Vec<Wait>, samples: Vec<Sample>, unplaced: Vec<(String, usize)>| ProfileReport {
            profile: name.to_string(),
            tasks,
            placed,
            decisions: 0,
            decisions_per_second: 0.0,
            decision_p50_us: 0.0,
            decision_p99_us: 0.0,
            makespan_seconds: span,
            mean_cpu_utilization: mean,
            peak_cpu_utilization: peak(&samples),
            mean_fragmentation: samples.iter().map(|s| s.fragmentation).sum::<f64>() / samples.len().max(1) as f64,
            waits,
            unplaced,
            samples,
        };
    let real = report("real", real_placed, real_mean, waits(real_waits), real_samples, Vec::new());
    let mut replayed = report("replay", placed, replay_mean, waits(replay_waits), replay_samples, unplaced);
    replayed.decisions = decisions;
    replayed.decisions_per_second = decisions as f64 / decision_seconds.max(1e-9);
    // Machine-hours up to the history's end (or the replay's, if later).
    let horizon = header.to.max(now);
    let mut pools: Vec<PoolHours> = Vec::new();
    let mut names: Vec<&String> = pool_records.keys().chain(machines.iter().map(|m| &m.pool)).collect();
    names.extend(scaled.iter().map(|p| &p.record.pool));
    names.sort();
    names.dedup();
    for name in names {
        let (real_hours, real_peak, real_machines) = autoscaled::real_hours(&machines, name, origin, horizon);
        let mut hours = PoolHours {
            pool: name.clone(),
            scaled_by_replay: false,
            real_machine_hours: real_hours,
            replay_machine_hours: real_hours,
            real_machines,
            replay_machines: real_machines,
            real_peak,
            replay_peak: real_peak,
        };
        if let Some(pool) = scaled.iter().find(|p| &p.record.pool == name) {
            hours.scaled_by_replay = true;
            hours.replay_machine_hours = (pool.machine_ms + f64::from(pool.count()) * (horizon - now) as f64) / 3_600_000.0;
            hours.replay_machines = pool.made;
            hours.replay_peak = pool.peak;
        }
        pools.push(hours);
    }
    let mut quotas: Vec<QuotaRecord> = limits.into_iter().filter_map(|(project, l)| QuotaRecord::of(project, &l)).collect();
    quotas.sort_by(|a, b| a.project.cmp(&b.project));
    Ok(ReplayReport {
        real,
        replay: replayed,
        never_ran,
        nodes: real_nodes.len(),
        replay_nodes: nodes.len(),
        pools,
        quotas,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn hold(held: &mut HashMap<String, ProjectUsage>, task: &PendingTask) {
    let now = held.entry(task.project.clone()).or_insert(ProjectUsage::NONE);
    now.tasks += 1;
    now.resources.cpu_millicores = now.resources.cpu_millicores.saturating_add(task.resources.cpu_millicores);
    now.resources.memory_mib = now.resources.memory_mib.saturating_add(task.resources.memory_mib);
    now.gpus = now.gpus.saturating_add(task.gpus);
}

fn unhold(held: &mut HashMap<String, ProjectUsage>, task: &PendingTask) {
    if let Some(now) = held.get_mut(&task.project) {
        now.tasks = now.tasks.saturating_sub(1);
        now.resources.cpu_millicores = now.resources.cpu_millicores.saturating_sub(task.resources.cpu_millicores);
        now.resources.memory_mib = now.resources.memory_mib.saturating_sub(task.resources.memory_mib);
        now.gpus = now.gpus.saturating_sub(task.gpus);
    }
}

/// What each project holds, as fair share reads it.
fn usage_of(held: &HashMap<String, ProjectUsage>) -> HashMap<String, Resources> {
    held.iter().map(|(p, u)| (p.clone(), u.resources)).collect()
}

/// (time, Δcpu, Δmemory, Δqueued, node): a change on the real side (an
/// attempt's hold on its node; a task arriving or first placed).
type RealEvent = (i64, i64, i64, i64, usize);

/// The median task of the first [`Typical::KEPT`] seen.
#[derive(Default)]
struct Typical {
    seen: Vec<(u32, u32)>,
    fixed: Option<(u32, u32)>,
}

impl Typical {
    const KEPT: usize = 10_000;

    fn see(&mut self, cpu: u32, memory: u32) {
        if self.seen.len() < Self::KEPT {
            self.seen.push((cpu, memory));
            if self.seen.len() == Self::KEPT {
                self.fixed = Some(self.compute());
            }
        }
    }

    fn compute(&self) -> (u32, u32) {
        let mut cpu: Vec<u32> = self.seen.iter().map(|s| s.0).collect();
        let mut memory: Vec<u32> = self.seen.iter().map(|s| s.1).collect();
        cpu.sort_unstable();
        memory.sort_unstable();
        (cpu.get(cpu.len() / 2).copied().unwrap_or(0), memory.get(memory.len() / 2).copied().unwrap_or(0))
    }

    fn median(&self) -> (u32, u32) {
        self.fixed.unwrap_or_else(|| self.compute())
    }
}

/// Memory allocated over offered, and the share of free CPU stranded on
/// nodes without room for a typical task, of nodes (capacity, allocated).
fn spread(nodes: impl Iterator<Item = (Resources, Resources)>, typical: (u32, u32)) -> (f64, f64) {
    let (mut memory, mut used, mut free_cpu, mut stranded) = (0u64, 0u64, 0u64, 0u64);
    for (capacity, allocated) in nodes {
        memory += u64::from(capacity.memory_mib);
        used += u64::from(allocated.memory_mib.min(capacity.memory_mib));
        let free =
            (capacity.cpu_millicores.saturating_sub(allocated.cpu_millicores), capacity.memory_mib.saturating_sub(allocated.memory_mib));
        free_cpu += u64::from(free.0);
        if free.0 < typical.0 || free.1 < typical.1 {
            stranded += u64::from(free.0);
        }
    }
    (used as f64 / memory.max(1) as f64, if free_cpu == 0 { 0.0 } else { stranded as f64 / free_cpu as f64 })
}

/// Turns a node on (it takes tasks, its capacity counts) or off, now.
fn turn(placer: &mut Placer<'_>, counted: &mut [bool], capacity: &mut i64, i: usize, on: bool) {
    let node = &mut placer.cluster.nodes[i];
    node.ready = on;
    if counted[i] != on {
        counted[i] = on;
        let cpu = i64::from(node.capacity.cpu_millicores);
        *capacity += if on { cpu } else { -cpu };
    }
}

fn pending(key: u64, task: &TaskRecord, profile: Option<&str>) -> PendingTask {
    let mut p = PendingTask::new(TaskId(ulid::Ulid(u128::from(key))), Resources { cpu_millicores: task.cpu, memory_mib: task.memory });
    p.project = task.project.clone();
    p.priority = task.priority;
    p.constraints = task.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect();
    p.pool = task.pool.clone();
    p.profile = profile.map(String::from).or_else(|| task.profile.clone());
    p.gpus = task.gpus;
    p
}

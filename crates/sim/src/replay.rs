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

use crate::report::{ProfileReport, Sample, Wait};
use shepherd_core::history::{HistoryError, HistoryRecord, NodeHistoryState, NodeRecord, TaskRecord};
use shepherd_core::{Constraint, Resources, TaskId};
use shepherd_sched::{Engine, NodeSnapshot, PendingTask};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

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
}

impl Default for ReplayConfig {
    fn default() -> ReplayConfig {
        ReplayConfig { tick_seconds: 0.05, seed: 42, profile: None, overlay: Overlay::default() }
    }
}

/// Changes to the real inventory for a what-if replay.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Nodes added for the whole replay (`count` copies of a shape).
    #[serde(default)]
    pub add_nodes: Vec<AddNodes>,
    /// Nodes left out of the replay, by id.
    #[serde(default)]
    pub remove_nodes: Vec<String>,
    /// Pools scaled: `pool name = factor` (0.5 keeps every second node of
    /// the pool, 2 doubles each node of it).
    #[serde(default)]
    pub scale_pools: BTreeMap<String, f64>,
}

impl Overlay {
    /// Refuses sizes a replay could not hold.
    pub fn check(&self) -> Result<(), HistoryError> {
        let max = shepherd_core::history::MAX_NODES as u64;
        let added: u64 = self.add_nodes.iter().map(|a| u64::from(a.count)).sum();
        if added > max {
            return Err(HistoryError(format!("add_nodes: {added} nodes (at most {max})")));
        }
        if self.add_nodes.iter().any(|a| a.cpu == 0 || a.memory == 0) {
            return Err(HistoryError("add_nodes: cpu and memory must be > 0".into()));
        }
        if let Some((pool, f)) = self.scale_pools.iter().find(|(_, f)| !(0.0..=100.0).contains(*f)) {
            return Err(HistoryError(format!("scale_pools.{pool}: {f} (0 to 100)")));
        }
        Ok(())
    }
}

/// A history read from JSON Lines, line by line, each at most
/// [`shepherd_core::history::MAX_LINE`] bytes (never more is held), each
/// checked; an error names its line.
pub fn read_history(reader: impl std::io::BufRead) -> impl Iterator<Item = Result<HistoryRecord, HistoryError>> {
    let mut reader = reader;
    let mut number = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        number += 1;
        let mut line = Vec::new();
        let limit = shepherd_core::history::MAX_LINE as u64 + 1;
        match std::io::BufRead::read_until(&mut std::io::Read::take(&mut reader, limit), b'\n', &mut line) {
            Ok(0) => None,
            Err(e) => {
                done = true;
                Some(Err(HistoryError(format!("line {number}: {e}"))))
            }
            Ok(_) if line.len() as u64 == limit && line.last() != Some(&b'\n') => {
                done = true;
                Some(Err(HistoryError(format!("line {number}: longer than {} bytes", shepherd_core::history::MAX_LINE))))
            }
            Ok(_) => {
                let text = match std::str::from_utf8(&line) {
                    Ok(text) => text.trim_end_matches(['\n', '\r']),
                    Err(e) => {
                        done = true;
                        return Some(Err(HistoryError(format!("line {number}: {e}"))));
                    }
                };
                Some(HistoryRecord::parse(text).map_err(|e| {
                    done = true;
                    HistoryError(format!("line {number}: {}", e.0))
                }))
            }
        }
    })
}

/// Nodes an overlay adds.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodes {
    pub count: u32,
    pub cpu: u32,
    pub memory: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a replay found beside what really happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// The history as it happened (waits, utilization, queue over time).
    pub real: ProfileReport,
    /// The same arrivals under the replay's settings.
    pub replay: ProfileReport,
    /// Tasks of the history that never ran (no attempt ended): left out.
    pub never_ran: usize,
    /// Nodes in the real inventory, and in the replay's.
    pub nodes: usize,
    pub replay_nodes: usize,
    /// Wall-clock seconds the replay took.
    pub seconds: f64,
}

/// A task waiting or running in the replay.
#[derive(Clone)]
struct Job {
    task: PendingTask,
    at_ms: i64,
    service_ms: i64,
    /// Placed before (and lost since): its wait is counted already.
    placed: bool,
}

struct Node {
    snapshot: NodeSnapshot,
    /// Changes from the history, in time order.
    changes: Vec<(i64, NodeHistoryState, Resources)>,
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
    // The inventory: every node record, before the first task.
    let mut node_records: Vec<NodeRecord> = Vec::new();
    while let Some(Ok(HistoryRecord::Node(_))) = records.peek() {
        if let Some(Ok(HistoryRecord::Node(n))) = records.next() {
            node_records.push(n);
        }
    }
    // The real inventory over time (for the real side's utilization),
    // whatever the overlay changes.
    let mut real_changes: Vec<(i64, String, NodeHistoryState, Resources)> =
        node_records.iter().map(|r| (r.at, r.node.clone(), r.state, Resources { cpu_millicores: r.cpu, memory_mib: r.memory })).collect();
    if node_records.len() > shepherd_core::history::MAX_NODES {
        return Err(HistoryError(format!("more than {} node lines", shepherd_core::history::MAX_NODES)));
    }
    config.overlay.check()?;
    let (mut nodes, real_nodes) = inventory(node_records, &config.overlay);
    if nodes.len() > shepherd_core::history::MAX_NODES {
        return Err(HistoryError(format!("the overlay makes {} nodes (at most {})", nodes.len(), shepherd_core::history::MAX_NODES)));
    }
    if nodes.is_empty() {
        return Err(HistoryError("the history has no node (nor does the overlay add one)".into()));
    }
    real_changes.sort_by_key(|c| c.0);
    let mut changes: Vec<(i64, usize, NodeHistoryState, Resources)> =
        nodes.iter().enumerate().flat_map(|(i, n)| n.changes.iter().map(move |(at, s, r)| (*at, i, *s, *r))).collect();
    changes.sort_by_key(|c| (c.0, c.1));
    for node in &mut nodes {
        node.snapshot.ready = false;
    }
    let mut placer = engine.placer(nodes.iter().map(|n| n.snapshot.clone()).collect(), config.seed);
    let tick = ((config.tick_seconds * 1000.0).round() as i64).max(1);
    // The clock starts with the first task (a window's quiet start would
    // only dilute the figures), or the header's start without one.
    let mut next_task: Option<TaskRecord> = match records.next().transpose()? {
        None => None,
        Some(HistoryRecord::Task(t)) => Some(t),
        Some(HistoryRecord::Node(n)) => return Err(HistoryError(format!("node {} after the first task: node lines come first", n.node))),
        Some(HistoryRecord::Header(_)) => return Err(HistoryError("a second header".into())),
    };
    let origin = next_task.as_ref().map_or(header.from, |t| t.at);

    // The replay's state.
    let mut queues: BTreeMap<String, BinaryHeap<(i32, Reverse<u64>)>> = BTreeMap::new();
    let mut waiting: HashMap<u64, Job> = HashMap::new();
    let mut running: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut on_node: HashMap<u64, (usize, Job, i64)> = HashMap::new();
    let mut usage: HashMap<String, Resources> = HashMap::new();
    let mut replay_waits: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    // The real side.
    // (time, Δcpu, Δqueued, node): the real attempts' holds, per node.
    let mut real_events: BinaryHeap<Reverse<(i64, i64, i64, usize)>> = BinaryHeap::new();
    let real_index: HashMap<String, usize> = real_nodes.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
    let mut real_held: Vec<i64> = vec![0; real_nodes.len() + 1];
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
            Some(Ok(HistoryRecord::Node(n))) => Err(HistoryError(format!("node {} after the first task: node lines come first", n.node))),
            Some(Ok(HistoryRecord::Header(_))) => Err(HistoryError("a second header".into())),
        }
    };
    let mut counted = vec![false; placer.cluster.nodes.len()];
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
                            unhold(&mut usage, &job.task);
                            queues.entry(job.task.project.clone()).or_default().push((job.task.priority, Reverse(key)));
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
                    unhold(&mut usage, &job.task);
                }
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
                real_events.push(Reverse((a.placed, i64::from(task.cpu), 0, node)));
                if let Some(end) = a.ended {
                    real_events.push(Reverse((end, -i64::from(task.cpu), 0, node)));
                }
            }
            real_events.push(Reverse((task.at, 0, 1, real_nodes.len())));
            if let Some(first) = task.attempts.first() {
                real_events.push(Reverse((first.placed.max(task.at), 0, -1, real_nodes.len())));
            }
            let (Some(service), Some(wait)) = (task.service_ms(), task.wait_ms()) else {
                never_ran += 1;
                continue;
            };
            real_waits.entry(task.project.clone()).or_default().push(wait as f32 / 1000.0);
            seq += 1;
            let job = Job { task: pending(seq, &task, config.profile.as_deref()), at_ms: task.at, service_ms: service, placed: false };
            queues.entry(task.project.clone()).or_default().push((task.priority, Reverse(seq)));
            waiting.insert(seq, job);
            if next_task.is_none() && !input_done {
                next_task = pull(&mut records)?;
                input_done = next_task.is_none();
            }
        }
        // A pass.
        if !waiting.is_empty() {
            placer.new_pass();
            let batch = take_fairly(&mut queues, PASS_TASKS);
            let tasks_in: Vec<PendingTask> = batch.iter().filter_map(|k| waiting.get(k).map(|j| j.task.clone())).collect();
            let ordered = engine.order(tasks_in, &placer.cluster.nodes, &usage);
            let pass_started = std::time::Instant::now();
            let mut misses = 0usize;
            for task in ordered {
                let key = task.id.0 .0 as u64;
                if misses >= PASS_MISSES {
                    // The cluster is full for this pass: the rest wait.
                    queues.entry(task.project.clone()).or_default().push((task.priority, Reverse(key)));
                    continue;
                }
                decisions += 1;
                match placer.place(&task) {
                    Ok(n) => {
                        let Some(mut job) = waiting.remove(&key) else { continue };
                        if !std::mem::replace(&mut job.placed, true) {
                            replay_waits.entry(task.project.clone()).or_default().push((now - job.at_ms).max(0) as f32 / 1000.0);
                            placed += 1;
                        }
                        let held = usage.entry(task.project.clone()).or_insert(Resources { cpu_millicores: 0, memory_mib: 0 });
                        held.cpu_millicores += task.resources.cpu_millicores;
                        held.memory_mib += task.resources.memory_mib;
                        replay_used += i64::from(task.resources.cpu_millicores);
                        let end = now + job.service_ms;
                        last_end = last_end.max(end);
                        running.push(Reverse((end, key)));
                        on_node.insert(key, (n, job, end));
                        misses = 0;
                    }
                    Err(_) => {
                        misses += 1;
                        queues.entry(task.project.clone()).or_default().push((task.priority, Reverse(key)));
                    }
                }
            }
            decision_seconds += pass_started.elapsed().as_secs_f64();
        }
        // The real side up to now.
        while let Some((at, id, state, r)) = real_changes.get(real_change).cloned() {
            if at > now {
                break;
            }
            real_change += 1;
            let i = real_index.get(&id).copied().unwrap_or(real_nodes.len());
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
        while let Some(Reverse((at, cpu, queued, node))) = real_events.peek().copied() {
            if at > now {
                break;
            }
            real_events.pop();
            real_held[node] += cpu;
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
            real_samples.push(Sample {
                at_seconds,
                cpu_utilization: real_cpu.max(0) as f64 / real_capacity.max(1) as f64,
                memory_utilization: 0.0,
                fragmentation: 0.0,
                queued: real_queued.max(0) as usize,
                running: real_running.max(0) as usize,
            });
            replay_samples.push(Sample {
                at_seconds,
                cpu_utilization: replay_used.max(0) as f64 / replay_cap.max(1) as f64,
                memory_utilization: 0.0,
                fragmentation: 0.0,
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
        now = then;
    }
    let unplaced = {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
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
            mean_fragmentation: 0.0,
            waits,
            unplaced,
            samples,
        };
    let real = report("real", real_placed, real_mean, waits(real_waits), real_samples, Vec::new());
    let mut replayed = report("replay", placed, replay_mean, waits(replay_waits), replay_samples, unplaced);
    replayed.decisions = decisions;
    replayed.decisions_per_second = decisions as f64 / decision_seconds.max(1e-9);
    Ok(ReplayReport {
        real,
        replay: replayed,
        never_ran,
        nodes: real_nodes.len(),
        replay_nodes: nodes.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn unhold(usage: &mut HashMap<String, Resources>, task: &PendingTask) {
    if let Some(held) = usage.get_mut(&task.project) {
        held.cpu_millicores = held.cpu_millicores.saturating_sub(task.resources.cpu_millicores);
        held.memory_mib = held.memory_mib.saturating_sub(task.resources.memory_mib);
    }
}

/// Up to `limit` queued tasks, the projects taking turns, each in its own
/// order (priority, then arrival).
fn take_fairly(queues: &mut BTreeMap<String, BinaryHeap<(i32, Reverse<u64>)>>, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut projects: VecDeque<String> = queues.iter().filter(|(_, q)| !q.is_empty()).map(|(p, _)| p.clone()).collect();
    while out.len() < limit {
        let Some(project) = projects.pop_front() else { break };
        let Some(queue) = queues.get_mut(&project) else { continue };
        if let Some((_, Reverse(key))) = queue.pop() {
            out.push(key);
            if !queue.is_empty() {
                projects.push_back(project);
            }
        }
    }
    out
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

/// The nodes of the history as the overlay changes them; and the ids of
/// the real ones.
fn inventory(records: Vec<NodeRecord>, overlay: &Overlay) -> (Vec<Node>, Vec<String>) {
    let mut by_id: BTreeMap<String, Node> = BTreeMap::new();
    for r in records {
        let resources = Resources { cpu_millicores: r.cpu, memory_mib: r.memory };
        let node = by_id.entry(r.node.clone()).or_insert_with(|| {
            let mut snapshot = NodeSnapshot::new(r.node.clone(), resources);
            snapshot.pool = r.labels.get("pool").cloned();
            snapshot.labels = r.labels.clone();
            snapshot.gpus = r.gpus;
            if r.max_tasks > 0 {
                snapshot.max_tasks = r.max_tasks;
            }
            Node { snapshot, changes: Vec::new() }
        });
        node.changes.push((r.at, r.state, resources));
    }
    let real: Vec<String> = by_id.keys().cloned().collect();
    for id in &overlay.remove_nodes {
        by_id.remove(id);
    }
    for (pool, factor) in &overlay.scale_pools {
        let members: Vec<String> =
            by_id.values().filter(|n| n.snapshot.pool.as_deref() == Some(pool.as_str())).map(|n| n.snapshot.id.clone()).collect();
        let keep = ((members.len() as f64) * factor.max(0.0)).round() as usize;
        if keep < members.len() {
            for id in members.iter().skip(keep) {
                by_id.remove(id);
            }
        } else {
            for k in 0..keep - members.len() {
                let source = &by_id[&members[k % members.len()]];
                let mut copy = Node { snapshot: source.snapshot.clone(), changes: source.changes.clone() };
                copy.snapshot.id = format!("{}+{k}", source.snapshot.id);
                copy.snapshot.hostname = copy.snapshot.id.clone();
                by_id.insert(copy.snapshot.id.clone(), copy);
            }
        }
    }
    let mut nodes: Vec<Node> = by_id.into_values().collect();
    for (g, add) in overlay.add_nodes.iter().enumerate() {
        for k in 0..add.count {
            let resources = Resources { cpu_millicores: add.cpu, memory_mib: add.memory };
            let mut snapshot = NodeSnapshot::new(format!("added-{g}-{k}"), resources);
            snapshot.pool = add.labels.get("pool").cloned();
            snapshot.labels = add.labels.clone();
            snapshot.gpus = add.gpus;
            nodes.push(Node { snapshot, changes: vec![(i64::MIN, NodeHistoryState::Ready, resources)] });
        }
    }
    (nodes, real)
}

/// The replay beside the real run, per project and for the cluster, as a
/// Markdown table a person reads (project names and reasons with control
/// characters shown escaped).
pub fn table(r: &ReplayReport, same_settings: bool) -> String {
    let mut out = format!(
        "replayed {} of {} tasks ({} never ran: left out) on {} nodes ({} real) in {:.1} s\n\n",
        r.replay.placed, r.real.tasks, r.never_ran, r.replay_nodes, r.nodes, r.seconds
    );
    out.push_str(
        "| project | tasks | wait p50 real | replay | p99 real | replay | max real | replay |\n|---|---|---|---|---|---|---|---|\n",
    );
    for real in &r.real.waits {
        let replay = r.replay.waits.iter().find(|w| w.project == real.project);
        let (p50, p99, max) = replay.map_or((f64::NAN, f64::NAN, f64::NAN), |w| (w.p50_seconds, w.p99_seconds, w.max_seconds));
        out.push_str(&format!(
            "| {} | {} | {:.2}s | {:.2}s | {:.2}s | {:.2}s | {:.2}s | {:.2}s |\n",
            safe(&real.project),
            real.tasks,
            real.p50_seconds,
            p50,
            real.p99_seconds,
            p99,
            real.max_seconds,
            max
        ));
    }
    out.push_str(&format!(
        "\nmean CPU allocated: real {:.1}%, replay {:.1}% ({:+.1} points); peak: real {:.1}%, replay {:.1}%\n",
        r.real.mean_cpu_utilization * 100.0,
        r.replay.mean_cpu_utilization * 100.0,
        (r.replay.mean_cpu_utilization - r.real.mean_cpu_utilization) * 100.0,
        r.real.peak_cpu_utilization * 100.0,
        r.replay.peak_cpu_utilization * 100.0
    ));
    let unplaced: usize = r.replay.unplaced.iter().map(|(_, n)| n).sum();
    out.push_str(&format!("tasks that fit no node in the replay: {unplaced}\n"));
    for (reason, n) in &r.replay.unplaced {
        out.push_str(&format!("  {n}: {}\n", safe(reason)));
    }
    if same_settings {
        out.push_str(
            "\nThese are the settings the history ran under (nothing changed for the replay): the differences above are \
             the replay's own error. Read a replay under other settings against them.\n",
        );
    }
    out
}

/// Text with control characters escaped (names come from tenants).
fn safe(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() || c == '|' { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

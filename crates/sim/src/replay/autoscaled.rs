//! An autoscaled pool that a what-if replay scales itself
//! (`[autoscale.NAME]` in the overlay): machines asked for by the same
//! planner as the server's autoscaler ([`shepherd_sched::autoscale::plan`])
//! for the tasks the last pass left waiting, taking tasks a provisioning
//! time later, and retired when idle for the pool's idle time, never
//! below its min. Machines are paid for from the ask to the retirement:
//! the pool's machine-hours.
//!
//! The pool's machines are slots in the replay's node list (`max` of
//! them, made once), each off, being made or up.

use shepherd_core::history::{MachineRecord, PoolRecord};
use shepherd_core::Resources;
use shepherd_sched::autoscale::PoolOption;
use shepherd_sched::{Engine, NodeSnapshot, PendingTask, QuotaLedger};
use std::collections::HashMap;

/// The most waiting tasks one look of the autoscaler plans for.
pub const PLAN_TASKS: usize = 1_000;

/// Provisioning time when the history has no machine of the pool.
pub const DEFAULT_PROVISION_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Off,
    /// Asked for; takes tasks from then.
    Creating(i64),
    /// Up; idle since then (`None`: busy when last looked at).
    Up(Option<i64>),
}

/// One pool the replay scales.
pub(super) struct Autoscaled {
    pub record: PoolRecord,
    provision_ms: i64,
    interval_ms: i64,
    idle_ms: i64,
    cooldown_ms: i64,
    /// Each machine: its node's index in the replay's node list, its state.
    slots: Vec<(usize, Slot)>,
    last_up: Option<i64>,
    next_look: i64,
    /// The last look could make nothing; nothing changed since.
    stalled: bool,
    /// Machines asked for in all.
    pub made: usize,
    pub peak: u32,
    /// Machines (made or being made) times milliseconds.
    pub machine_ms: f64,
}

impl Autoscaled {
    /// The pool with `record`'s settings and its machine nodes (all off),
    /// numbered from `first`; its provisioning time is the median of its
    /// recorded machines' (asked to joined), else `provision_ms`.
    pub fn new(record: PoolRecord, first: usize, provision_ms: Option<f64>, machines: &[MachineRecord]) -> (Autoscaled, Vec<NodeSnapshot>) {
        let ms = |s: f64| (s * 1000.0).round() as i64;
        let mut recorded: Vec<i64> =
            machines.iter().filter(|m| m.pool == record.pool).filter_map(|m| m.joined.map(|j| j - m.asked)).collect();
        recorded.sort_unstable();
        let provision_ms =
            provision_ms.map(ms).unwrap_or_else(|| recorded.get(recorded.len() / 2).copied().unwrap_or(DEFAULT_PROVISION_MS));
        let nodes: Vec<NodeSnapshot> = (0..record.max as usize)
            .map(|k| {
                let mut node = template(&record, &format!("{}~{k}", record.pool));
                node.ready = false;
                node
            })
            .collect();
        let pool = Autoscaled {
            provision_ms,
            interval_ms: ms(record.interval_seconds).max(1),
            idle_ms: ms(record.idle_seconds),
            cooldown_ms: ms(record.cooldown_seconds),
            slots: (first..first + nodes.len()).map(|i| (i, Slot::Off)).collect(),
            last_up: None,
            next_look: i64::MIN,
            stalled: false,
            made: 0,
            peak: 0,
            machine_ms: 0.0,
            record,
        };
        (pool, nodes)
    }

    /// Its first `min` machines, up from the start: the nodes to turn on.
    pub fn start(&mut self, now: i64) -> Vec<usize> {
        let min = self.record.min as usize;
        for slot in self.slots.iter_mut().take(min) {
            slot.1 = Slot::Up(Some(now));
        }
        self.made += min.min(self.slots.len());
        self.note_peak();
        self.slots.iter().take(min).map(|s| s.0).collect()
    }

    /// Machines made and being made.
    pub fn count(&self) -> u32 {
        self.slots.iter().filter(|(_, s)| *s != Slot::Off).count() as u32
    }

    fn note_peak(&mut self) {
        self.peak = self.peak.max(self.count());
    }

    /// Something changed (tasks arrived or ended): look again.
    pub fn wake(&mut self) {
        self.stalled = false;
    }

    /// Machines ready by `now`: the nodes to turn on.
    pub fn joins(&mut self, now: i64) -> Vec<usize> {
        let mut on = Vec::new();
        for (i, slot) in &mut self.slots {
            if matches!(slot, Slot::Creating(at) if *at <= now) {
                *slot = Slot::Up(None);
                on.push(*i);
            }
        }
        on
    }

    /// The autoscaler's look at `now`, if one is due: idle machines above
    /// min retire (the nodes to turn off are returned), and machines are
    /// asked for what `unfit` (the last pass's tasks that found no node)
    /// needs.
    #[allow(clippy::too_many_arguments)]
    pub fn look(
        &mut self,
        now: i64,
        nodes: &[NodeSnapshot],
        engine: &Engine,
        usage: &HashMap<String, Resources>,
        quota: QuotaLedger,
        unfit: &[PendingTask],
        seed: u64,
    ) -> Vec<usize> {
        if now < self.next_look {
            return Vec::new();
        }
        self.next_look = now + self.interval_ms;
        // Idle machines: the longest idle go first, never below min.
        let mut idle: Vec<(i64, usize)> = Vec::new();
        for (k, (i, slot)) in self.slots.iter_mut().enumerate() {
            if let Slot::Up(since) = slot {
                if nodes[*i].task_count == 0 {
                    let since = *since.get_or_insert(now);
                    if now - since >= self.idle_ms {
                        idle.push((since, k));
                    }
                } else {
                    *since = None;
                }
            }
        }
        idle.sort_unstable();
        let mut off = Vec::new();
        let mut count = self.count();
        for (_, k) in idle {
            if count <= self.record.min {
                break;
            }
            self.slots[k].1 = Slot::Off;
            off.push(self.slots[k].0);
            count -= 1;
        }
        // Scale up.
        if unfit.is_empty() || self.last_up.is_some_and(|t| now - t < self.cooldown_ms) {
            return off;
        }
        let creating: Vec<usize> = self.slots.iter().filter(|(_, s)| matches!(s, Slot::Creating(_))).map(|(i, _)| *i).collect();
        let room = self.record.max.saturating_sub(count).min(self.record.max_creating.saturating_sub(creating.len() as u32));
        let mut asked = 0;
        if room > 0 {
            let coming: Vec<NodeSnapshot> = creating
                .iter()
                .map(|i| {
                    let mut node = nodes[*i].clone();
                    node.ready = true;
                    node
                })
                .collect();
            let option =
                PoolOption { name: self.record.pool.clone(), template: template(&self.record, "template"), room, limited_by: None };
            let tasks: Vec<PendingTask> = unfit.iter().take(PLAN_TASKS).cloned().collect();
            let plan = shepherd_sched::autoscale::plan(engine, Vec::new(), coming, usage, quota, tasks, &[option], seed);
            asked = plan.create.get(&self.record.pool).copied().unwrap_or(0).min(room);
            for slot in self.slots.iter_mut().filter(|(_, s)| *s == Slot::Off).take(asked as usize) {
                slot.1 = Slot::Creating(now + self.provision_ms);
            }
        }
        if asked > 0 {
            self.last_up = Some(now);
            self.made += asked as usize;
            self.note_peak();
        } else {
            self.stalled = true;
        }
        off
    }

    /// When this pool next needs the clock to stop: a machine being made
    /// is ready, or a look that could change something.
    pub fn next_event(&self, nodes: &[NodeSnapshot], waiting: bool) -> Option<i64> {
        let ready = self.slots.iter().filter_map(|(_, s)| if let Slot::Creating(at) = s { Some(*at) } else { None }).min();
        let idle_above_min =
            self.count() > self.record.min && self.slots.iter().any(|(i, s)| matches!(s, Slot::Up(_)) && nodes[*i].task_count == 0);
        let look = (idle_above_min || ready.is_some() || (waiting && !self.stalled)).then_some(self.next_look);
        [ready, look].into_iter().flatten().min()
    }
}

/// A machine of the pool as a node: ready, empty, with the pool's shape.
fn template(pool: &PoolRecord, id: &str) -> NodeSnapshot {
    let mut node = NodeSnapshot::new(id.to_string(), Resources { cpu_millicores: pool.cpu, memory_mib: pool.memory });
    node.max_tasks = pool.max_tasks;
    node.labels = pool.labels.clone();
    node.labels.insert("pool".into(), pool.pool.clone());
    node.pool = Some(pool.pool.clone());
    node
}

/// The real pool's machine-hours in `[from, to)` (a machine counts from
/// its ask to its destruction) and the most machines at once.
pub(super) fn real_hours(machines: &[MachineRecord], pool: &str, from: i64, to: i64) -> (f64, u32, usize) {
    let mut ms = 0i64;
    let mut edges: Vec<(i64, i32)> = Vec::new();
    let mut count = 0;
    for m in machines.iter().filter(|m| m.pool == pool) {
        let (start, end) = (m.asked.max(from), m.gone.unwrap_or(to).min(to));
        if end > start {
            ms += end - start;
            edges.push((start, 1));
            edges.push((end, -1));
            count += 1;
        }
    }
    edges.sort_unstable();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    (ms as f64 / 3_600_000.0, peak.max(0) as u32, count)
}

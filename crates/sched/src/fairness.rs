//! The order in which a batch is placed: priorities first; within a
//! priority, projects take turns by weighted dominant resource fairness
//! (the project whose weighted dominant share of the cluster is smallest
//! goes next), so one project with a million queued tasks cannot starve
//! another.

use crate::model::PendingTask;
use shepherd_core::Resources;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The fair order one task at a time, for callers that read their queue
/// lazily (a replay's pass tries a few hundred tasks of a long queue):
/// given each project's next task, [`FairMerge::pick`] says whose goes
/// next, and [`FairMerge::took`] charges it. Each project's tasks must come
/// in its own order (priority descending, then as queued); the highest
/// priority goes first, then the project whose weighted dominant share of
/// what it holds plus what was taken before is smallest, then the first
/// in the caller's order. [`order`] is this over a whole batch.
pub struct FairMerge<'a> {
    usage: &'a HashMap<String, Resources>,
    capacity: Resources,
    weights: &'a HashMap<String, f64>,
    taken: HashMap<String, (u64, u64)>,
}

impl<'a> FairMerge<'a> {
    /// A merge over `usage` (what each project holds), the cluster's
    /// `capacity` and the projects' `weights` (default 1).
    pub fn new(usage: &'a HashMap<String, Resources>, capacity: Resources, weights: &'a HashMap<String, f64>) -> FairMerge<'a> {
        FairMerge { usage, capacity, weights, taken: HashMap::new() }
    }

    fn share(&self, project: &str) -> f64 {
        let held = self.usage.get(project).copied().unwrap_or(Resources { cpu_millicores: 0, memory_mib: 0 });
        let (cpu, mem) = self.taken.get(project).copied().unwrap_or((0, 0));
        let cpu = (u64::from(held.cpu_millicores) + cpu).min(u64::from(u32::MAX)) as f64 / f64::from(self.capacity.cpu_millicores.max(1));
        let mem = (u64::from(held.memory_mib) + mem).min(u64::from(u32::MAX)) as f64 / f64::from(self.capacity.memory_mib.max(1));
        let weight = self.weights.get(project).copied().filter(|w| *w > 0.0).unwrap_or(1.0);
        cpu.max(mem) / weight
    }

    /// Of the projects' next tasks (`(project, priority)`, in the caller's
    /// order), the position of the one that goes next.
    pub fn pick<'p>(&self, heads: impl IntoIterator<Item = (&'p str, i32)>) -> Option<usize> {
        let mut best: Option<(usize, i32, f64)> = None;
        for (i, (project, priority)) in heads.into_iter().enumerate() {
            let better = match best {
                None => true,
                Some((_, p, _)) if priority != p => priority > p,
                Some((_, _, share)) => self.share(project) < share,
            };
            if better {
                best = Some((i, priority, self.share(project)));
            }
        }
        best.map(|(i, ..)| i)
    }

    /// Charges a task of `project` taken.
    pub fn took(&mut self, project: &str, resources: Resources) {
        let entry = self.taken.entry(project.to_string()).or_default();
        entry.0 += u64::from(resources.cpu_millicores);
        entry.1 += u64::from(resources.memory_mib);
    }
}

/// Reorders `tasks` for placement. `usage` is what each project already
/// holds, `capacity` the cluster's total, `weights` the projects' shares
/// (default 1). `largest_first(task)` says whether a task's profile packs
/// largest first within its project.
pub fn order(
    tasks: Vec<PendingTask>,
    usage: &HashMap<String, Resources>,
    capacity: Resources,
    weights: &HashMap<String, f64>,
    largest_first: impl Fn(&PendingTask) -> bool,
) -> Vec<PendingTask> {
    let size = |t: &PendingTask| {
        let cpu = f64::from(t.resources.cpu_millicores) / f64::from(capacity.cpu_millicores.max(1));
        let mem = f64::from(t.resources.memory_mib) / f64::from(capacity.memory_mib.max(1));
        cpu.max(mem)
    };
    // Each project's tasks by priority (stable: as given within one), a
    // priority's tasks largest first where all their profiles say so.
    let mut projects: BTreeMap<String, Vec<PendingTask>> = BTreeMap::new();
    let count = tasks.len();
    for task in tasks {
        projects.entry(task.project.clone()).or_default().push(task);
    }
    let mut queues: Vec<(String, VecDeque<PendingTask>)> = Vec::with_capacity(projects.len());
    for (project, mut list) in projects {
        list.sort_by_key(|t| std::cmp::Reverse(t.priority));
        for level in list.chunk_by_mut(|a, b| a.priority == b.priority) {
            if level.iter().all(&largest_first) {
                level.sort_by(|a, b| size(b).total_cmp(&size(a)));
            }
        }
        queues.push((project, list.into()));
    }
    let mut merge = FairMerge::new(usage, capacity, weights);
    let mut ordered = Vec::with_capacity(count);
    loop {
        let heads: Vec<(usize, &str, i32)> =
            queues.iter().enumerate().filter_map(|(i, (p, q))| q.front().map(|t| (i, p.as_str(), t.priority))).collect();
        let Some(k) = merge.pick(heads.iter().map(|(_, p, prio)| (*p, *prio))) else { break };
        let i = heads[k].0;
        if let Some(task) = queues[i].1.pop_front() {
            merge.took(&queues[i].0, task.resources);
            ordered.push(task);
        }
    }
    ordered
}

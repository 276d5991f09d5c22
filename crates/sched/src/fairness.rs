//! The order in which a batch is placed: priorities first; within a
//! priority, projects take turns by weighted dominant resource fairness
//! (the project whose weighted dominant share of the cluster is smallest
//! goes next), so one project with a million queued tasks cannot starve
//! another.

use crate::model::PendingTask;
use shepherd_core::Resources;
use std::collections::{BTreeMap, HashMap, VecDeque};

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
    let share = |r: Resources| -> f64 {
        let cpu = f64::from(r.cpu_millicores) / f64::from(capacity.cpu_millicores.max(1));
        let mem = f64::from(r.memory_mib) / f64::from(capacity.memory_mib.max(1));
        cpu.max(mem)
    };
    let mut by_priority: BTreeMap<std::cmp::Reverse<i32>, BTreeMap<String, VecDeque<PendingTask>>> = BTreeMap::new();
    for task in tasks {
        by_priority.entry(std::cmp::Reverse(task.priority)).or_default().entry(task.project.clone()).or_default().push_back(task);
    }
    let mut dominant: HashMap<String, (u64, u64)> = HashMap::new();
    let mut ordered = Vec::new();
    for (_, projects) in by_priority {
        let mut queues: Vec<(String, VecDeque<PendingTask>)> = projects.into_iter().collect();
        for (_, queue) in &mut queues {
            if queue.iter().all(&largest_first) {
                queue.make_contiguous().sort_by(|a, b| {
                    let size = |t: &PendingTask| share(t.resources);
                    size(b).total_cmp(&size(a))
                });
            }
        }
        loop {
            // The project with the smallest weighted dominant share goes next.
            let next = queues
                .iter()
                .enumerate()
                .filter(|(_, (_, q))| !q.is_empty())
                .map(|(i, (project, _))| {
                    let held = usage.get(project).copied().unwrap_or(Resources { cpu_millicores: 0, memory_mib: 0 });
                    let (cpu, mem) = dominant.get(project).copied().unwrap_or((0, 0));
                    let total = Resources {
                        cpu_millicores: held.cpu_millicores.saturating_add(cpu.min(u64::from(u32::MAX)) as u32),
                        memory_mib: held.memory_mib.saturating_add(mem.min(u64::from(u32::MAX)) as u32),
                    };
                    let weight = weights.get(project).copied().filter(|w| *w > 0.0).unwrap_or(1.0);
                    (i, share(total) / weight)
                })
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let Some((i, _)) = next else { break };
            let (project, queue) = &mut queues[i];
            if let Some(task) = queue.pop_front() {
                let entry = dominant.entry(project.clone()).or_default();
                entry.0 += u64::from(task.resources.cpu_millicores);
                entry.1 += u64::from(task.resources.memory_mib);
                ordered.push(task);
            }
        }
    }
    ordered
}

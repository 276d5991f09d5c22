//! Project quotas: a project's queued task is placed only while the
//! project stays within its limits on running tasks, CPU and memory; quota
//! is charged when a task is placed, not when it is considered. The rest
//! wait in the queue, with the reason, and are never dropped.

use crate::model::{PendingTask, QuotaHold};
use shepherd_core::{ProjectLimits, Resources};
use std::collections::HashMap;

/// What a project holds now: its scheduled and running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectUsage {
    pub tasks: u32,
    pub resources: Resources,
}

impl ProjectUsage {
    /// Nothing held. (Not `Default`: `Resources::default()` is a task's
    /// default request, not zero.)
    pub const NONE: ProjectUsage = ProjectUsage { tasks: 0, resources: Resources { cpu_millicores: 0, memory_mib: 0 } };
}

/// What each project holds against its quota during a pass: charged as
/// tasks are placed, so a task that fits nowhere never uses up quota that a
/// task behind it could use.
#[derive(Debug, Clone, Default)]
pub struct QuotaLedger {
    usage: HashMap<String, ProjectUsage>,
    limits: HashMap<String, ProjectLimits>,
}

impl QuotaLedger {
    /// A ledger starting from what projects hold now (their scheduled and running tasks).
    pub fn new(usage: HashMap<String, ProjectUsage>, limits: HashMap<String, ProjectLimits>) -> QuotaLedger {
        QuotaLedger { usage, limits }
    }

    /// The quota that placing `task` would exceed, if any.
    pub fn check(&self, task: &PendingTask) -> Option<QuotaHold> {
        let limit = self.limits.get(&task.project)?;
        let now = self.usage.get(&task.project).copied().unwrap_or(ProjectUsage::NONE);
        let cpu = u64::from(now.resources.cpu_millicores) + u64::from(task.resources.cpu_millicores);
        let memory = u64::from(now.resources.memory_mib) + u64::from(task.resources.memory_mib);
        if let Some(max) = limit.max_running.filter(|max| now.tasks + 1 > *max) {
            Some(QuotaHold { what: "running tasks", used: u64::from(now.tasks), max: u64::from(max) })
        } else if let Some(max) = limit.max_cpu_millicores.filter(|max| cpu > *max) {
            Some(QuotaHold { what: "millicores", used: u64::from(now.resources.cpu_millicores), max })
        } else {
            limit.max_memory_mib.filter(|max| memory > *max).map(|max| QuotaHold {
                what: "MiB",
                used: u64::from(now.resources.memory_mib),
                max,
            })
        }
    }

    /// Records that `task` was placed.
    pub fn charge(&mut self, task: &PendingTask) {
        let now = self.usage.entry(task.project.clone()).or_insert(ProjectUsage::NONE);
        now.tasks += 1;
        now.resources.cpu_millicores = now.resources.cpu_millicores.saturating_add(task.resources.cpu_millicores);
        now.resources.memory_mib = now.resources.memory_mib.saturating_add(task.resources.memory_mib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_core::TaskId;

    fn task(n: u128, project: &str, cpu: u32) -> PendingTask {
        let mut t = PendingTask::new(TaskId(ulid::Ulid(n)), Resources { cpu_millicores: cpu, memory_mib: 64 });
        t.project = project.into();
        t
    }

    #[test]
    fn running_cpu_and_memory_limits_hold_back_the_rest_in_order() {
        let limits = HashMap::from([
            ("a".to_string(), ProjectLimits { max_running: Some(3), ..Default::default() }),
            ("b".to_string(), ProjectLimits { max_cpu_millicores: Some(1000), ..Default::default() }),
            ("c".to_string(), ProjectLimits { max_memory_mib: Some(100), ..Default::default() }),
        ]);
        let usage =
            HashMap::from([("a".to_string(), ProjectUsage { tasks: 2, resources: Resources { cpu_millicores: 0, memory_mib: 0 } })]);
        let pending = vec![
            task(1, "a", 100),
            task(2, "a", 100),
            task(3, "b", 600),
            task(4, "b", 600),
            task(5, "b", 400),
            task(6, "c", 1),
            task(7, "c", 1),
            task(8, "free", 1),
        ];
        // Placing in queue order, each admitted task charged as if placed.
        let mut ledger = QuotaLedger::new(usage, limits);
        let (mut admitted, mut waiting) = (Vec::new(), Vec::new());
        for task in pending {
            match ledger.check(&task) {
                Some(hold) => waiting.push((task.id, hold.to_string())),
                None => {
                    ledger.charge(&task);
                    admitted.push(task);
                }
            }
        }
        let ids: Vec<u128> = admitted.iter().map(|t| t.id.0 .0).collect();
        assert_eq!(ids, vec![1, 3, 5, 6, 8]);
        let held: Vec<u128> = waiting.iter().map(|(id, _)| id.0 .0).collect();
        assert_eq!(held, vec![2, 4, 7]);
        assert!(waiting[0].1.contains("3 of 3"), "{}", waiting[0].1);
        assert!(waiting[1].1.contains("millicores"));
        assert!(waiting[2].1.contains("MiB"));
    }
}

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
    pub gpus: u32,
}

impl ProjectUsage {
    /// Nothing held. (Not `Default`: `Resources::default()` is a task's
    /// default request, not zero.)
    pub const NONE: ProjectUsage = ProjectUsage { tasks: 0, resources: Resources { cpu_millicores: 0, memory_mib: 0 }, gpus: 0 };
}

/// What each project holds against its quota during a pass: charged as
/// tasks are placed, so a task that fits nowhere never uses up quota that a
/// task behind it could use.
#[derive(Debug, Clone, Default)]
pub struct QuotaLedger {
    usage: HashMap<String, ProjectUsage>,
    limits: HashMap<String, ProjectLimits>,
    /// Tasks of each (project, code) holding a node, and codes' `max_concurrency`.
    code_usage: HashMap<(String, String), u32>,
    code_limits: HashMap<(String, String), u32>,
}

impl QuotaLedger {
    /// A ledger starting from what projects hold now (their scheduled and running tasks).
    pub fn new(usage: HashMap<String, ProjectUsage>, limits: HashMap<String, ProjectLimits>) -> QuotaLedger {
        QuotaLedger { usage, limits, code_usage: HashMap::new(), code_limits: HashMap::new() }
    }

    /// Adds codes' concurrency limits: what each (project, code) holds now,
    /// and its `max_concurrency`.
    pub fn with_codes(mut self, usage: HashMap<(String, String), u32>, limits: HashMap<(String, String), u32>) -> QuotaLedger {
        self.code_usage = usage;
        self.code_limits = limits;
        self
    }

    fn code_key(task: &PendingTask) -> Option<(String, String)> {
        task.code.as_ref().map(|code| (task.project.clone(), code.clone()))
    }

    /// The quota that placing `task` would exceed, if any.
    pub fn check(&self, task: &PendingTask) -> Option<QuotaHold> {
        if let Some(key) = Self::code_key(task).filter(|_| !self.code_limits.is_empty()) {
            if let Some(max) = self.code_limits.get(&key) {
                let used = self.code_usage.get(&key).copied().unwrap_or(0);
                if used >= *max {
                    return Some(QuotaHold { what: "running tasks", used: u64::from(used), max: u64::from(*max), code: Some(key.1) });
                }
            }
        }
        let limit = self.limits.get(&task.project)?;
        let now = self.usage.get(&task.project).copied().unwrap_or(ProjectUsage::NONE);
        let cpu = u64::from(now.resources.cpu_millicores) + u64::from(task.resources.cpu_millicores);
        let memory = u64::from(now.resources.memory_mib) + u64::from(task.resources.memory_mib);
        if let Some(max) = limit.max_running.filter(|max| now.tasks + 1 > *max) {
            Some(QuotaHold { what: "running tasks", used: u64::from(now.tasks), max: u64::from(max), code: None })
        } else if let Some(max) = limit.max_cpu_millicores.filter(|max| cpu > *max) {
            Some(QuotaHold { what: "millicores", used: u64::from(now.resources.cpu_millicores), max, code: None })
        } else if let Some(max) = limit.max_memory_mib.filter(|max| memory > *max) {
            Some(QuotaHold { what: "MiB", used: u64::from(now.resources.memory_mib), max, code: None })
        } else {
            let gpus = u64::from(now.gpus) + u64::from(task.gpus);
            limit.max_gpus.filter(|max| task.gpus > 0 && gpus > *max).map(|max| QuotaHold {
                what: "gpus",
                used: u64::from(now.gpus),
                max,
                code: None,
            })
        }
    }

    /// Records that `task` was placed.
    pub fn charge(&mut self, task: &PendingTask) {
        if let Some(key) = Self::code_key(task) {
            *self.code_usage.entry(key).or_default() += 1;
        }
        let now = self.usage.entry(task.project.clone()).or_insert(ProjectUsage::NONE);
        now.tasks += 1;
        now.resources.cpu_millicores = now.resources.cpu_millicores.saturating_add(task.resources.cpu_millicores);
        now.resources.memory_mib = now.resources.memory_mib.saturating_add(task.resources.memory_mib);
        now.gpus = now.gpus.saturating_add(task.gpus);
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
        let usage = HashMap::from([(
            "a".to_string(),
            ProjectUsage { tasks: 2, resources: Resources { cpu_millicores: 0, memory_mib: 0 }, gpus: 0 },
        )]);
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

    #[test]
    fn a_code_s_max_concurrency_holds_its_tasks_only_in_its_project() {
        let coded = |n: u128, project: &str, code: &str| {
            let mut t = task(n, project, 10);
            t.code = Some(code.into());
            t
        };
        let key = |p: &str, c: &str| (p.to_string(), c.to_string());
        let mut ledger = QuotaLedger::new(HashMap::new(), HashMap::new())
            .with_codes(HashMap::from([(key("a", "resize"), 1)]), HashMap::from([(key("a", "resize"), 2)]));
        let mut admitted = Vec::new();
        let mut reasons = Vec::new();
        for t in [coded(1, "a", "resize"), coded(2, "a", "resize"), coded(3, "b", "resize"), coded(4, "a", "other"), task(5, "a", 1)] {
            match ledger.check(&t) {
                Some(hold) => reasons.push(hold.to_string()),
                None => {
                    ledger.charge(&t);
                    admitted.push(t.id.0 .0);
                }
            }
        }
        assert_eq!(admitted, vec![1, 3, 4, 5]);
        assert_eq!(reasons, vec!["code `resize` runs at most 2 tasks at once: 2 scheduled or running".to_string()]);
    }
}

//! # shepherd-sched
//!
//! Placement: given a snapshot of the cluster and a batch of pending tasks,
//! decide which node runs each task, and for each task that fits nowhere,
//! say why in the style of "0/3 nodes fit: 2 insufficient memory, 1 not ready".
//!
//! Invariants: a pure library. No I/O, no async, no clock, no randomness
//! that is not passed in: the same snapshot and batch always give the same
//! placements. A node is never committed past its capacity or task limit,
//! and a constraint is never violated.
//!
//! This is the spine's placement: feasibility (state, resources, task
//! limit, constraints) and a spread score (least allocated first). The
//! pluggable filter/score pipeline and profiles grow here.

use shepherd_core::{Constraint, Resources, TaskId};
use std::collections::{BTreeMap, HashMap};

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub id: String,
    pub hostname: String,
    pub pool: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Only ready nodes receive tasks.
    pub ready: bool,
    pub capacity: Resources,
    /// Reserved by tasks already scheduled or running there.
    pub allocated: Resources,
    pub max_tasks: u32,
    pub task_count: u32,
}

impl NodeSnapshot {
    /// The node's value for a constraint attribute.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "node.id" => Some(&self.id),
            "node.hostname" => Some(&self.hostname),
            "node.pool" => self.pool.as_deref(),
            _ => name.strip_prefix("node.labels.").and_then(|key| self.labels.get(key)).map(String::as_str),
        }
    }

    fn load(&self) -> f64 {
        let cpu = f64::from(self.allocated.cpu_millicores) / f64::from(self.capacity.cpu_millicores.max(1));
        let mem = f64::from(self.allocated.memory_mib) / f64::from(self.capacity.memory_mib.max(1));
        cpu.max(mem)
    }
}

/// A task waiting for a node.
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub id: TaskId,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
}

/// A decision: run this task on that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub task_id: TaskId,
    pub node_id: String,
}

/// The result of placing a batch.
#[derive(Debug, Clone, Default)]
pub struct PlacementPlan {
    pub placements: Vec<Placement>,
    /// Tasks that fit nowhere, with the reason.
    pub unplaced: Vec<(TaskId, String)>,
}

/// Why one node cannot take one task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Rejection {
    NotReady,
    TooManyTasks,
    InsufficientCpu,
    InsufficientMemory,
    Constraint(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("not ready"),
            Rejection::TooManyTasks => f.write_str("at task limit"),
            Rejection::InsufficientCpu => f.write_str("insufficient cpu"),
            Rejection::InsufficientMemory => f.write_str("insufficient memory"),
            Rejection::Constraint(c) => write!(f, "constraint {c}"),
        }
    }
}

fn check(node: &NodeSnapshot, task: &PendingTask) -> Result<(), Rejection> {
    // Cheap checks first: most rejections in a busy cluster are capacity.
    if !node.ready {
        return Err(Rejection::NotReady);
    }
    if node.task_count >= node.max_tasks {
        return Err(Rejection::TooManyTasks);
    }
    if node.allocated.cpu_millicores + task.resources.cpu_millicores > node.capacity.cpu_millicores {
        return Err(Rejection::InsufficientCpu);
    }
    if node.allocated.memory_mib + task.resources.memory_mib > node.capacity.memory_mib {
        return Err(Rejection::InsufficientMemory);
    }
    if let Some(c) = task.constraints.iter().find(|c| !c.matches(|name| node.attribute(name))) {
        return Err(Rejection::Constraint(c.to_string()));
    }
    Ok(())
}

/// Places `tasks` in order, updating `nodes`' allocations as it goes.
pub fn place_batch(nodes: &mut [NodeSnapshot], tasks: &[PendingTask]) -> PlacementPlan {
    let mut plan = PlacementPlan::default();
    for task in tasks {
        let mut best: Option<(usize, f64)> = None;
        let mut rejections: HashMap<Rejection, usize> = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            match check(node, task) {
                Ok(()) => {
                    let load = node.load();
                    if best.is_none_or(|(_, l)| load < l) {
                        best = Some((index, load));
                    }
                }
                Err(why) => *rejections.entry(why).or_default() += 1,
            }
        }
        match best {
            Some((index, _)) => {
                let node = &mut nodes[index];
                node.allocated.cpu_millicores += task.resources.cpu_millicores;
                node.allocated.memory_mib += task.resources.memory_mib;
                node.task_count += 1;
                plan.placements.push(Placement { task_id: task.id, node_id: node.id.clone() });
            }
            None => {
                let mut counts: Vec<(Rejection, usize)> = rejections.into_iter().collect();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let detail: Vec<String> = counts.iter().map(|(why, n)| format!("{n} {why}")).collect();
                let reason = if nodes.is_empty() {
                    "no nodes in the cluster".to_string()
                } else {
                    format!("0/{} nodes fit: {}", nodes.len(), detail.join(", "))
                };
                plan.unplaced.push((task.id, reason));
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cpu: u32, memory: u32) -> NodeSnapshot {
        NodeSnapshot {
            id: id.into(),
            hostname: id.into(),
            pool: None,
            labels: BTreeMap::new(),
            ready: true,
            capacity: Resources { cpu_millicores: cpu, memory_mib: memory },
            allocated: Resources { cpu_millicores: 0, memory_mib: 0 },
            max_tasks: 100,
            task_count: 0,
        }
    }

    fn task(cpu: u32, memory: u32, constraints: &[&str]) -> PendingTask {
        PendingTask {
            id: TaskId(ulid::Ulid::new()),
            resources: Resources { cpu_millicores: cpu, memory_mib: memory },
            constraints: constraints.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
        }
    }

    #[test]
    fn spreads_and_never_overcommits() {
        let mut nodes = vec![node("a", 1000, 1000), node("b", 1000, 1000)];
        let tasks: Vec<_> = (0..5).map(|_| task(400, 100, &[])).collect();
        let plan = place_batch(&mut nodes, &tasks);
        assert_eq!(plan.placements.len(), 4);
        assert_eq!(plan.unplaced.len(), 1);
        assert_eq!(plan.unplaced[0].1, "0/2 nodes fit: 2 insufficient cpu");
        assert!(nodes.iter().all(|n| n.allocated.cpu_millicores <= n.capacity.cpu_millicores));
        assert_eq!(plan.placements.iter().filter(|p| p.node_id == "a").count(), 2);
    }

    #[test]
    fn constraints_pick_the_node_and_explain_misses() {
        let mut eu = node("eu1", 1000, 1000);
        eu.labels.insert("region".into(), "eu".into());
        let mut nodes = vec![node("us1", 1000, 1000), eu];
        let plan = place_batch(&mut nodes, &[task(100, 100, &["node.labels.region==eu"]), task(100, 100, &["node.labels.region==ap"])]);
        assert_eq!(plan.placements[0].node_id, "eu1");
        assert_eq!(plan.unplaced[0].1, "0/2 nodes fit: 2 constraint node.labels.region==ap");
    }

    #[test]
    fn not_ready_nodes_and_task_limits_are_respected() {
        let mut down = node("down", 1000, 1000);
        down.ready = false;
        let mut full = node("full", 1000, 1000);
        full.max_tasks = 0;
        let plan = place_batch(&mut [down, full], &[task(1, 4, &[])]);
        assert_eq!(plan.unplaced[0].1, "0/2 nodes fit: 1 not ready, 1 at task limit");
    }
}

//! What placement reads and returns.

use shepherd_core::{Constraint, Resources, TaskId};
use std::collections::{BTreeMap, HashMap};

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub id: String,
    pub hostname: String,
    /// The node pool, if the node belongs to one.
    pub pool: Option<String>,
    /// Projects the node is dedicated to; empty: shared by all.
    pub dedicated_to: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Only ready nodes receive tasks (not draining, not down).
    pub ready: bool,
    pub capacity: Resources,
    /// Reserved by tasks already scheduled or running there.
    pub allocated: Resources,
    pub max_tasks: u32,
    pub task_count: u32,
    /// Images the node's engine holds, and the keys of its idle warm
    /// containers (`warm=…`), sorted.
    pub images: Vec<String>,
    /// Tasks there per label `key=value`, for anti-affinity.
    pub label_counts: HashMap<String, u32>,
    /// GPUs the node has (`shepherd agent --gpus`), and those reserved.
    pub gpus: u32,
    pub gpus_allocated: u32,
    /// Devices the node offers by name (`--device /dev/fuse` → `fuse`), sorted.
    pub devices: Vec<String>,
}

impl NodeSnapshot {
    /// A ready node with no labels, pool, images or tasks.
    pub fn new(id: impl Into<String>, capacity: Resources) -> NodeSnapshot {
        let id = id.into();
        NodeSnapshot {
            hostname: id.clone(),
            id,
            pool: None,
            dedicated_to: Vec::new(),
            labels: BTreeMap::new(),
            ready: true,
            capacity,
            allocated: Resources { cpu_millicores: 0, memory_mib: 0 },
            max_tasks: u32::MAX,
            task_count: 0,
            images: Vec::new(),
            label_counts: HashMap::new(),
            gpus: 0,
            gpus_allocated: 0,
            devices: Vec::new(),
        }
    }

    /// The node's value for a constraint attribute.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "node.id" => Some(&self.id),
            "node.hostname" => Some(&self.hostname),
            "node.pool" => self.pool.as_deref(),
            _ => name.strip_prefix("node.labels.").and_then(|key| self.labels.get(key)).map(String::as_str),
        }
    }

    /// Free CPU and memory.
    pub fn free(&self) -> Resources {
        Resources {
            cpu_millicores: self.capacity.cpu_millicores.saturating_sub(self.allocated.cpu_millicores),
            memory_mib: self.capacity.memory_mib.saturating_sub(self.allocated.memory_mib),
        }
    }

    /// Share of the node in use, by its most used resource, in [0, 1].
    pub fn load(&self) -> f64 {
        let cpu = f64::from(self.allocated.cpu_millicores) / f64::from(self.capacity.cpu_millicores.max(1));
        let mem = f64::from(self.allocated.memory_mib) / f64::from(self.capacity.memory_mib.max(1));
        cpu.max(mem).min(1.0)
    }
}

/// "At most `max_per_node` tasks with the same value of label `label` on one node."
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AntiAffinity {
    /// `key=value`: the task's own label it counts.
    pub label: String,
    pub max_per_node: u32,
}

/// A node-scoped volume a task mounts (`local`, say): the node it lives
/// on, once a task used it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeVolume {
    /// The volume's name in the task's project.
    pub name: String,
    pub node: Option<String>,
}

/// A task waiting for a node.
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub id: TaskId,
    pub project: String,
    pub priority: i32,
    pub resources: Resources,
    pub image: String,
    pub constraints: Vec<Constraint>,
    /// The pool the task must run in, if any.
    pub pool: Option<String>,
    pub anti_affinity: Option<AntiAffinity>,
    /// The profile the task names, if any.
    pub profile: Option<String>,
    /// The key of the warm containers it may run in (a task with `reuse`;
    /// see `shepherd_core::shape::warm_key`).
    pub warm_key: Option<String>,
    /// The code it was made from, whose `max_concurrency` limits how many
    /// of its project's tasks of that code hold a node at once.
    pub code: Option<String>,
    /// Its node-scoped volumes: it runs where they live.
    pub volumes: Vec<NodeVolume>,
    /// GPUs it needs.
    pub gpus: u32,
    /// Devices it needs, by name.
    pub devices: Vec<String>,
}

impl PendingTask {
    /// A task with only resources set: no constraints, project `default`.
    pub fn new(id: TaskId, resources: Resources) -> PendingTask {
        PendingTask {
            id,
            project: "default".into(),
            priority: 0,
            resources,
            image: String::new(),
            constraints: Vec::new(),
            pool: None,
            anti_affinity: None,
            profile: None,
            warm_key: None,
            code: None,
            volumes: Vec::new(),
            gpus: 0,
            devices: Vec::new(),
        }
    }
}

/// A decision: run this task on that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub task_id: TaskId,
    pub node_id: String,
}

/// The outcome of placing a batch.
#[derive(Debug, Clone, Default)]
pub struct PlacementPlan {
    pub placements: Vec<Placement>,
    /// Tasks that stay queued, each with why.
    pub unplaced: Vec<Unplaced>,
    /// For each placed task, how its best candidates scored (when asked).
    pub scores: Vec<(TaskId, Vec<NodeScore>)>,
}

/// How one candidate node scored for a task (as Nomad's score metadata):
/// the weighted score of each plugin and their sum.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeScore {
    /// The candidate node.
    pub node_id: String,
    /// The sum of `scores`.
    pub total: f64,
    /// Plugin name → weight × its score in [0, 1].
    pub scores: Vec<(String, f64)>,
}

/// A task that stays queued after a pass, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub task_id: TaskId,
    pub hold: Hold,
}

impl Unplaced {
    /// What it waits for.
    pub fn wait(&self) -> Wait {
        match &self.hold {
            Hold::Unfit(unfit) => unfit.wait,
            Hold::Quota(_) => Wait::Quota,
        }
    }
}

/// Why a task was not placed: structured, rendered to text only at the
/// edge (`Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// No node took it.
    Unfit(Unfit),
    /// Its project's quota.
    Quota(QuotaHold),
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Unfit(unfit) => unfit.fmt(f),
            Hold::Quota(quota) => quota.fmt(f),
        }
    }
}

/// A project quota that holds a task back: `used` of `max` `what` in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaHold {
    /// "running tasks", "millicores", "MiB".
    pub what: &'static str,
    pub used: u64,
    pub max: u64,
    /// Set when the limit is a code's `max_concurrency`, not the project's.
    pub code: Option<String>,
}

impl std::fmt::Display for QuotaHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "code `{code}` runs at most {} tasks at once: {} scheduled or running", self.max, self.used),
            None => write!(f, "project quota: {} of {} {} in use", self.used, self.max, self.what),
        }
    }
}

/// Why no node took a task: how many nodes turned it down for each reason
/// (the first filter that refused, per node), most common first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    /// Nodes in the cluster.
    pub nodes: usize,
    pub rejections: Vec<(Rejection, usize)>,
    /// [`Wait::Room`], or [`Wait::NeverFits`] when the counts are of the
    /// nodes as they would be with nothing running on them.
    pub wait: Wait,
    /// What the task asks, and the most any node has (for "too little in all").
    pub asks: Resources,
    pub largest: Resources,
    /// GPUs the task asks.
    pub asks_gpus: u32,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes in the cluster");
        }
        let detail: Vec<String> = self
            .rejections
            .iter()
            .map(|(why, n)| match (self.wait, why) {
                (Wait::NeverFits, Rejection::InsufficientCpu) => format!(
                    "{n} too little cpu in all (the task asks {} millicores; the largest node has {})",
                    self.asks.cpu_millicores, self.largest.cpu_millicores
                ),
                (Wait::NeverFits, Rejection::InsufficientMemory) => format!(
                    "{n} too little memory in all (the task asks {} MiB; the largest node has {})",
                    self.asks.memory_mib, self.largest.memory_mib
                ),
                (Wait::NeverFits, Rejection::TooManyTasks) => format!("{n} take no tasks at all (task limit 0)"),
                (Wait::NeverFits, Rejection::InsufficientGpu) => format!("{n} too few gpus in all (the task asks {})", self.asks_gpus),
                _ => format!("{n} {why}"),
            })
            .collect();
        match self.wait {
            Wait::NeverFits => {
                write!(f, "no node can ever run this task (0/{} fit even with nothing running): {}", self.nodes, detail.join(", "))
            }
            _ => write!(f, "0/{} nodes fit: {}", self.nodes, detail.join(", ")),
        }
    }
}

/// What an unplaced task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Room: some node could take it if tasks there ended (or it came back).
    Room,
    /// A different cluster: no node there is could take it even idle (too
    /// small in all, wrong labels or pool). Only new or changed nodes help.
    NeverFits,
    /// Its project's quota.
    Quota,
}

/// Why one node cannot take one task; counted into "0/N nodes fit: ...".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    NotReady,
    TooManyTasks,
    InsufficientCpu,
    InsufficientMemory,
    InsufficientGpu,
    /// The node does not offer this device.
    MissingDevice(String),
    /// The task's volume lives on another node (its name, that node).
    VolumeElsewhere {
        volume: String,
        node: String,
    },
    Constraint(String),
    Pool,
    Dedicated,
    AntiAffinity(String),
    /// A filter outside this list (a plugin loaded at run time, or one of
    /// an embedding program): its name and why ("rejected by licences: no
    /// licence.matlab left"); also a run-time plugin that failed.
    Other {
        filter: String,
        reason: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("not ready"),
            Rejection::TooManyTasks => f.write_str("at task limit"),
            Rejection::InsufficientCpu => f.write_str("insufficient cpu"),
            Rejection::InsufficientMemory => f.write_str("insufficient memory"),
            Rejection::InsufficientGpu => f.write_str("insufficient gpu"),
            Rejection::MissingDevice(device) => write!(f, "no device {device}"),
            Rejection::VolumeElsewhere { volume, node } => write!(f, "volume {volume} lives on node {node}"),
            Rejection::Constraint(c) => write!(f, "constraint {c}"),
            Rejection::Pool => f.write_str("other pool"),
            Rejection::Dedicated => f.write_str("dedicated to other projects"),
            Rejection::AntiAffinity(label) => write!(f, "anti-affinity {label}"),
            Rejection::Other { filter, reason } => write!(f, "rejected by {filter}: {reason}"),
        }
    }
}

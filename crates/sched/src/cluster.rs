//! The cluster during one placement pass: the nodes (updated as tasks are
//! placed) plus ordered indexes so that candidate search does not scan every
//! node: free CPU and free memory ascending (best fit, for binpack: the range
//! starts at the task's request, so full nodes are never visited) and load
//! ascending (least loaded first, for spread).

use crate::model::{NodeSnapshot, PendingTask};
use std::collections::{BTreeSet, HashMap};

/// How a profile walks the nodes looking for candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateOrder {
    /// Least free memory first among nodes with enough: best fit.
    MostAllocated,
    /// Least loaded first.
    LeastAllocated,
    /// From a seeded random node onwards.
    Random,
    /// Node order.
    Scan,
}

/// The nodes of one pass plus their indexes (`sched::NodeIndex`; the
/// server's `Cluster` is the running all-in-one assembly).
pub struct NodeIndex {
    pub nodes: Vec<NodeSnapshot>,
    by_free_memory: BTreeSet<(u32, u32, u32)>,
    by_free_cpu: BTreeSet<(u32, u32, u32)>,
    /// Mean node capacity: says which resource a task mostly asks for.
    mean_capacity: (f64, f64),
    by_load: BTreeSet<(u32, u32)>,
    /// Tasks per topology key, per value (`zone` → `a` → 12).
    topology: HashMap<String, HashMap<String, u32>>,
    pub seed: u64,
}

/// What score plugins may read about the whole cluster.
pub struct ClusterView<'a> {
    cluster: &'a NodeIndex,
    pub seed: u64,
}

impl ClusterView<'_> {
    /// Tasks in the `key=value` domain, and in the fullest domain of `key`.
    pub fn topology_counts(&self, key: &str, value: &str) -> (u32, u32) {
        match self.cluster.topology.get(key) {
            Some(domains) => (domains.get(value).copied().unwrap_or(0), domains.values().copied().max().unwrap_or(0)),
            None => (0, 0),
        }
    }
}

fn load_key(node: &NodeSnapshot) -> u32 {
    (node.load() * 1_000_000.0) as u32
}

impl NodeIndex {
    /// Indexes `nodes`; `topology_keys` are the node labels whose task
    /// counts topology scorers need.
    pub fn new(nodes: Vec<NodeSnapshot>, topology_keys: &[String], seed: u64) -> NodeIndex {
        let count = nodes.len().max(1) as f64;
        let mean_capacity = (
            nodes.iter().map(|n| f64::from(n.capacity.cpu_millicores)).sum::<f64>() / count,
            nodes.iter().map(|n| f64::from(n.capacity.memory_mib)).sum::<f64>() / count,
        );
        let mut cluster = NodeIndex {
            by_free_memory: BTreeSet::new(),
            by_free_cpu: BTreeSet::new(),
            mean_capacity,
            by_load: BTreeSet::new(),
            topology: HashMap::new(),
            nodes,
            seed,
        };
        for key in topology_keys {
            let mut domains: HashMap<String, u32> = HashMap::new();
            for node in &cluster.nodes {
                if let Some(value) = node.labels.get(key) {
                    *domains.entry(value.clone()).or_default() += node.task_count;
                }
            }
            cluster.topology.insert(key.clone(), domains);
        }
        for index in 0..cluster.nodes.len() {
            cluster.index(index);
        }
        cluster
    }

    fn index(&mut self, i: usize) {
        let node = &self.nodes[i];
        let free = node.free();
        self.by_free_memory.insert((free.memory_mib, free.cpu_millicores, i as u32));
        self.by_free_cpu.insert((free.cpu_millicores, free.memory_mib, i as u32));
        self.by_load.insert((load_key(node), i as u32));
    }

    fn unindex(&mut self, i: usize) {
        let node = &self.nodes[i];
        let free = node.free();
        self.by_free_memory.remove(&(free.memory_mib, free.cpu_millicores, i as u32));
        self.by_free_cpu.remove(&(free.cpu_millicores, free.memory_mib, i as u32));
        self.by_load.remove(&(load_key(node), i as u32));
    }

    /// The most CPU and the most memory free on any node (each on its
    /// own: a task asking more of either fits no node).
    pub fn most_free(&self) -> (u32, u32) {
        (self.by_free_cpu.last().map_or(0, |k| k.0), self.by_free_memory.last().map_or(0, |k| k.0))
    }

    /// The read-only view score plugins get.
    pub fn view(&self) -> ClusterView<'_> {
        ClusterView { cluster: self, seed: self.seed }
    }

    /// Reserves `task` on node `i`.
    pub fn assign(&mut self, i: usize, task: &PendingTask) {
        self.unindex(i);
        let node = &mut self.nodes[i];
        node.allocated.cpu_millicores += task.resources.cpu_millicores;
        node.allocated.memory_mib += task.resources.memory_mib;
        node.gpus_allocated += task.gpus;
        node.task_count += 1;
        if let Some(rule) = &task.anti_affinity {
            *node.label_counts.entry(rule.label.clone()).or_default() += 1;
        }
        for (key, domains) in &mut self.topology {
            if let Some(value) = node.labels.get(key) {
                *domains.entry(value.clone()).or_default() += 1;
            }
        }
        self.index(i);
    }

    /// Frees what `task` reserved on node `i` (the simulator, when a task ends).
    pub fn release(&mut self, i: usize, task: &PendingTask) {
        self.unindex(i);
        let node = &mut self.nodes[i];
        node.allocated.cpu_millicores = node.allocated.cpu_millicores.saturating_sub(task.resources.cpu_millicores);
        node.allocated.memory_mib = node.allocated.memory_mib.saturating_sub(task.resources.memory_mib);
        node.gpus_allocated = node.gpus_allocated.saturating_sub(task.gpus);
        node.task_count = node.task_count.saturating_sub(1);
        if let Some(rule) = &task.anti_affinity {
            if let Some(count) = node.label_counts.get_mut(&rule.label) {
                *count = count.saturating_sub(1);
            }
        }
        for (key, domains) in &mut self.topology {
            if let Some(count) = node.labels.get(key).and_then(|value| domains.get_mut(value)) {
                *count = count.saturating_sub(1);
            }
        }
        self.index(i);
    }

    /// Node indexes in the order a profile visits them. `start` rotates the
    /// `Random` order.
    pub fn candidates<'a>(&'a self, order: CandidateOrder, task: &PendingTask, start: usize) -> Box<dyn Iterator<Item = usize> + 'a> {
        let n = self.nodes.len();
        match order {
            CandidateOrder::MostAllocated => {
                // Best fit on the resource the task mostly asks for.
                let cpu_share = f64::from(task.resources.cpu_millicores) / self.mean_capacity.0.max(1.0);
                let mem_share = f64::from(task.resources.memory_mib) / self.mean_capacity.1.max(1.0);
                if cpu_share >= mem_share {
                    Box::new(self.by_free_cpu.range((task.resources.cpu_millicores, 0, 0)..).map(|&(_, _, i)| i as usize))
                } else {
                    Box::new(self.by_free_memory.range((task.resources.memory_mib, 0, 0)..).map(|&(_, _, i)| i as usize))
                }
            }
            CandidateOrder::LeastAllocated => Box::new(self.by_load.iter().map(|&(_, i)| i as usize)),
            CandidateOrder::Random => {
                let start = if n == 0 { 0 } else { start % n };
                Box::new((start..n).chain(0..start))
            }
            CandidateOrder::Scan => Box::new(0..n),
        }
    }
}

//! What a what-if replay changes: the overlay file (`--overlay`, TOML)
//! and the inventory it makes of the history's nodes.

use shepherd_core::history::{HistoryError, HistoryRecord, NodeHistoryState, NodeRecord, PoolRecord};
use shepherd_core::Resources;
use shepherd_sched::NodeSnapshot;
use std::collections::BTreeMap;

/// A node of the replay and its changes over time.
pub(crate) struct Node {
    pub(crate) snapshot: NodeSnapshot,
    /// Changes from the history, in time order.
    pub(crate) changes: Vec<(i64, NodeHistoryState, Resources)>,
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
    /// Projects' quotas replaced: `[quotas.NAME]` with the limits to try
    /// (a limit left out is no limit; an empty table removes the quota).
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaOverlay>,
    /// Autoscaled pools the replay scales itself (`[autoscale.NAME]`, with
    /// any of the pool's recorded settings changed): the pool's recorded
    /// machines are left out and the replay's autoscaler makes and retires
    /// machines as its own queue needs them.
    #[serde(default)]
    pub autoscale: BTreeMap<String, AutoscaleOverlay>,
}

/// A project's quota in a what-if replay.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverlay {
    pub max_running: Option<u32>,
    pub max_cpu_millicores: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_gpus: Option<u64>,
}

impl QuotaOverlay {
    /// The limits it sets.
    pub fn limits(&self) -> shepherd_core::ProjectLimits {
        shepherd_core::ProjectLimits {
            max_running: self.max_running,
            max_cpu_millicores: self.max_cpu_millicores,
            max_memory_mib: self.max_memory_mib,
            max_gpus: self.max_gpus,
            ..Default::default()
        }
    }
}

/// An autoscaled pool's settings in a what-if replay: each left out is the
/// recorded one (a pool the history lacks needs `max`, `cpu` and `memory`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleOverlay {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub max_creating: Option<u32>,
    pub cpu: Option<u32>,
    pub memory: Option<u32>,
    pub max_tasks: Option<u32>,
    pub labels: Option<BTreeMap<String, String>>,
    pub cooldown_seconds: Option<f64>,
    pub idle_seconds: Option<f64>,
    pub interval_seconds: Option<f64>,
    /// From the ask to the machine taking tasks (default: the median of
    /// the pool's recorded machines, else 60 s).
    pub provision_seconds: Option<f64>,
}

impl AutoscaleOverlay {
    /// The pool's settings: the recorded ones with this overlay's changes.
    pub fn apply(&self, name: &str, recorded: Option<&PoolRecord>) -> Result<PoolRecord, HistoryError> {
        let need = |what: &str| HistoryError(format!("autoscale.{name}: the history has no such pool: give `{what}`"));
        let pool = PoolRecord {
            pool: name.to_string(),
            min: self.min.or(recorded.map(|r| r.min)).unwrap_or(0),
            max: self.max.or(recorded.map(|r| r.max)).ok_or_else(|| need("max"))?,
            max_creating: self.max_creating.or(recorded.map(|r| r.max_creating)).unwrap_or(4),
            cpu: self.cpu.or(recorded.map(|r| r.cpu)).ok_or_else(|| need("cpu"))?,
            memory: self.memory.or(recorded.map(|r| r.memory)).ok_or_else(|| need("memory"))?,
            max_tasks: self.max_tasks.or(recorded.map(|r| r.max_tasks)).unwrap_or(256),
            labels: self.labels.clone().or(recorded.map(|r| r.labels.clone())).unwrap_or_default(),
            cooldown_seconds: self.cooldown_seconds.or(recorded.map(|r| r.cooldown_seconds)).unwrap_or(5.0),
            idle_seconds: self.idle_seconds.or(recorded.map(|r| r.idle_seconds)).unwrap_or(300.0),
            interval_seconds: self.interval_seconds.or(recorded.map(|r| r.interval_seconds)).unwrap_or(1.0),
        };
        // The same bounds as a recorded pool's.
        let line = serde_json::to_string(&HistoryRecord::Pool(pool.clone())).map_err(|e| HistoryError(e.to_string()))?;
        HistoryRecord::parse(&line).map_err(|e| HistoryError(format!("autoscale.{name}: {}", e.0)))?;
        if pool.max_creating == 0 || pool.max_tasks == 0 || pool.interval_seconds < 0.001 {
            return Err(HistoryError(format!("autoscale.{name}: max_creating, max_tasks and interval_seconds must be > 0")));
        }
        Ok(pool)
    }
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
        if let Some(pool) = self.autoscale.keys().find(|p| self.scale_pools.contains_key(*p)) {
            return Err(HistoryError(format!("autoscale.{pool}: the pool is also in scale_pools (scale it one way)")));
        }
        for (name, a) in &self.autoscale {
            let durations = [a.cooldown_seconds, a.idle_seconds, a.interval_seconds, a.provision_seconds];
            if durations.iter().flatten().any(|s| !(0.0..=shepherd_core::history::MAX_SECONDS).contains(s)) {
                return Err(HistoryError(format!("autoscale.{name}: durations 0 to {} seconds", shepherd_core::history::MAX_SECONDS)));
            }
        }
        if self.autoscale.len() + self.quotas.len() > 10_000 {
            return Err(HistoryError("at most 10,000 pools and quotas".into()));
        }
        Ok(())
    }
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

/// The nodes of the history as the overlay changes them; and the ids of
/// the real ones.
pub(super) fn inventory(records: Vec<NodeRecord>, overlay: &Overlay) -> (Vec<Node>, Vec<String>) {
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
    // The replay makes the machines of the pools it scales itself.
    by_id.retain(|_, n| n.snapshot.pool.as_ref().is_none_or(|p| !overlay.autoscale.contains_key(p)));
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

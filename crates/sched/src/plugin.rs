//! The extension points. A filter decides whether a node can take a task;
//! a scorer ranks the nodes that can, with a score normalized to [0, 1] so
//! that plugins compose by weight without knowing each other.
//!
//! To add a plugin: implement one of these traits in its own file under
//! `plugins/` with a `NAME`, an `Args` struct if it takes settings, and a
//! `factory`, and add it to the registry (`Registry::builtin`, or
//! `Registry::with_filter`/`with_scorer` from outside the crate). Profiles in
//! the TOML config can then name it and give it settings. Plugins loaded at
//! run time (WebAssembly, HTTP extenders: the `shepherd-plugins` crate) are
//! *batched*: the engine hands them the task and many nodes in one call
//! instead of one call per node. See `docs/scheduling.md` and
//! `docs/plugins.md`.

use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask, Rejection};

/// Feasibility: `Err` says why the node cannot take the task.
pub trait FilterPlugin: Send + Sync {
    /// The name used in profiles.
    fn name(&self) -> &str;
    /// Whether `node` can take `task`.
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection>;
    /// Whether the engine should call [`FilterPlugin::filter_batch`] with
    /// many nodes at once rather than `filter` per node: for plugins whose
    /// every call crosses a boundary (a WebAssembly sandbox, the network).
    fn batched(&self) -> bool {
        false
    }
    /// The verdict for each of `nodes`, in order, pushed onto `out` (which
    /// the caller has cleared). A plugin that fails as a whole rejects
    /// every node with the reason.
    fn filter_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], out: &mut Vec<Result<(), Rejection>>) {
        out.extend(nodes.iter().map(|node| self.filter(task, node)));
    }
}

/// `FilterPlugin::filter` of a batched plugin: one node through
/// `filter_batch` (a plugin that gives no verdict rejects the node).
pub fn filter_one(plugin: &dyn FilterPlugin, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
    let mut out = Vec::with_capacity(1);
    plugin.filter_batch(task, &[node], &mut out);
    out.pop().unwrap_or_else(|| Err(Rejection::Other { filter: plugin.name().to_string(), reason: "gave no verdict".into() }))
}

/// `ScorePlugin::score` of a batched plugin: one node through
/// `score_batch` (0 when the plugin fails).
pub fn score_one(plugin: &dyn ScorePlugin, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
    let mut out = Vec::with_capacity(1);
    match plugin.score_batch(task, &[node], cluster, &mut out) {
        Ok(()) => out.pop().unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// Ranking: higher is better, always within [0, 1].
pub trait ScorePlugin: Send + Sync {
    /// The name used in profiles.
    fn name(&self) -> &str;
    /// How good `node` is for `task`, in [0, 1]. `cluster` gives the
    /// cluster-wide context some scorers need (topology counts, a seeded
    /// random source).
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64;
    /// Node labels whose per-value task counts this scorer reads through
    /// [`ClusterView::topology_counts`]: the pass indexes them.
    fn topology_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the engine should call [`ScorePlugin::score_batch`] once
    /// for all candidates rather than `score` per node.
    fn batched(&self) -> bool {
        false
    }
    /// The score of each of `nodes`, in order, pushed onto `out` (cleared
    /// by the caller), each in [0, 1]. `Err`: the plugin failed (it
    /// trapped, ran out of fuel, answered garbage, is disabled); the task
    /// then waits with that reason instead of being placed on a guess.
    fn score_batch(
        &self,
        task: &PendingTask,
        nodes: &[&NodeSnapshot],
        cluster: &ClusterView<'_>,
        out: &mut Vec<f64>,
    ) -> Result<(), Rejection> {
        out.extend(nodes.iter().map(|node| self.score(task, node, cluster)));
        Ok(())
    }
}

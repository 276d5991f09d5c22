//! The extension points. A filter decides whether a node can take a task;
//! a scorer ranks the nodes that can, with a score normalized to [0, 1] so
//! that plugins compose by weight without knowing each other.
//!
//! To add a plugin: implement one of these traits in its own file under
//! `plugins/` with a `NAME`, an `Args` struct if it takes settings, and a
//! `factory`, and add it to the registry (`Registry::builtin`, or
//! `Registry::with_filter`/`with_scorer` from outside the crate). Profiles in
//! the TOML config can then name it and give it settings. See
//! `docs/scheduling.md`.

use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask, Rejection};

/// Feasibility: `Err` says why the node cannot take the task.
pub trait FilterPlugin: Send + Sync {
    /// The name used in profiles.
    fn name(&self) -> &'static str;
    /// Whether `node` can take `task`.
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection>;
}

/// Ranking: higher is better, always within [0, 1].
pub trait ScorePlugin: Send + Sync {
    /// The name used in profiles.
    fn name(&self) -> &'static str;
    /// How good `node` is for `task`, in [0, 1]. `cluster` gives the
    /// cluster-wide context some scorers need (topology counts, a seeded
    /// random source).
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64;
    /// Node labels whose per-value task counts this scorer reads through
    /// [`ClusterView::topology_counts`]: the pass indexes them.
    fn topology_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

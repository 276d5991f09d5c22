//! Score `spread`: prefer the node that would be least allocated.
use super::shares_after;
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Spread;

impl ScorePlugin for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let (cpu, mem) = shares_after(task, node);
        1.0 - cpu.max(mem)
    }
}

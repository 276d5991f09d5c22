//! Score `balanced`: prefer nodes whose CPU and memory shares stay close,
//! so neither resource is stranded.
use super::shares_after;
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Balanced;

impl ScorePlugin for Balanced {
    fn name(&self) -> &'static str {
        "balanced"
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let (cpu, mem) = shares_after(task, node);
        1.0 - (cpu - mem).abs()
    }
}

//! Score `binpack`: prefer the node that would be most allocated, to keep
//! whole nodes free.
use super::shares_after;
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Binpack;

impl ScorePlugin for Binpack {
    fn name(&self) -> &'static str {
        "binpack"
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let (cpu, mem) = shares_after(task, node);
        (cpu + mem) / 2.0
    }
}

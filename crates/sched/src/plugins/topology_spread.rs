//! Score `topology_spread`: prefer nodes in the topology domain (the value
//! of a node label, `zone` unless the profile says otherwise) that holds the
//! fewest tasks, so a zone outage takes the fewest.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct TopologySpread {
    pub key: String,
}

impl ScorePlugin for TopologySpread {
    fn name(&self) -> &'static str {
        "topology_spread"
    }
    fn score(&self, _task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
        let Some(domain) = node.labels.get(&self.key) else { return 0.0 };
        let (here, most) = cluster.topology_counts(&self.key, domain);
        if most == 0 { 1.0 } else { 1.0 - f64::from(here) / f64::from(most) }
    }
}

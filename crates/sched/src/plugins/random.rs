//! Score `random`: a seeded pseudo-random score, reproducible per seed.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Random;

/// The name profiles use.
pub const NAME: &str = "random";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::ScorePlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Random))
}

impl ScorePlugin for Random {
    fn name(&self) -> &str {
        NAME
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
        let mut h = cluster.seed ^ (task.id.0 .0 as u64) ^ ((task.id.0 .0 >> 64) as u64);
        for byte in node.id.bytes() {
            h = crate::rng::mix(h ^ u64::from(byte));
        }
        (crate::rng::mix(h) >> 11) as f64 / (1u64 << 53) as f64
    }
}

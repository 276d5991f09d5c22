//! Score `binpack`: prefer the node that would be most allocated, to keep
//! whole nodes free.
use super::shares_after;
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Binpack;

/// The name profiles use.
pub const NAME: &str = "binpack";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::ScorePlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Binpack))
}

impl ScorePlugin for Binpack {
    fn name(&self) -> &str {
        NAME
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let (cpu, mem) = shares_after(task, node);
        (cpu + mem) / 2.0
    }
}

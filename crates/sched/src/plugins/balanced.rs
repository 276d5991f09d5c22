//! Score `balanced`: prefer nodes whose CPU and memory shares stay close,
//! so neither resource is stranded.
use super::shares_after;
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct Balanced;

/// The name profiles use.
pub const NAME: &str = "balanced";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::ScorePlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Balanced))
}

impl ScorePlugin for Balanced {
    fn name(&self) -> &str {
        NAME
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let (cpu, mem) = shares_after(task, node);
        1.0 - (cpu - mem).abs()
    }
}

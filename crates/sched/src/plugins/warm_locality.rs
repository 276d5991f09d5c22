//! Score `warm_locality`: prefer nodes that hold an idle warm container of
//! the task's key (a task with `reuse`), which runs it without creating a
//! container. Agents report their idle keys with their images.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct WarmLocality;

/// The name profiles use.
pub const NAME: &str = "warm_locality";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::ScorePlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(WarmLocality))
}

impl ScorePlugin for WarmLocality {
    fn name(&self) -> &str {
        NAME
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        match &task.warm_key {
            Some(key) if node.images.binary_search(key).is_ok() => 1.0,
            _ => 0.0,
        }
    }
}

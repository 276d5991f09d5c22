//! Filter `anti_affinity`: at most N tasks with the same label value per node.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct AntiAffinityFilter;

/// The name profiles use.
pub const NAME: &str = "anti_affinity";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(AntiAffinityFilter))
}

impl FilterPlugin for AntiAffinityFilter {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        match &task.anti_affinity {
            Some(rule) if node.label_counts.get(&rule.label).copied().unwrap_or(0) >= rule.max_per_node => {
                Err(Rejection::AntiAffinity(rule.label.clone()))
            }
            _ => Ok(()),
        }
    }
}

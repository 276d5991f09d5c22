//! Filter `resources`: the task's CPU, memory and GPUs fit in what is free.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct ResourcesFit;

/// The name profiles use.
pub const NAME: &str = "resources";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(ResourcesFit))
}

impl FilterPlugin for ResourcesFit {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        let free = node.free();
        if task.resources.cpu_millicores > free.cpu_millicores {
            Err(Rejection::InsufficientCpu)
        } else if task.resources.memory_mib > free.memory_mib {
            Err(Rejection::InsufficientMemory)
        } else if task.gpus > node.gpus.saturating_sub(node.gpus_allocated) {
            Err(Rejection::InsufficientGpu)
        } else {
            Ok(())
        }
    }
}

//! Filter `task_limit`: the node's most tasks at once.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct TaskLimit;

/// The name profiles use.
pub const NAME: &str = "task_limit";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(TaskLimit))
}

impl FilterPlugin for TaskLimit {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, _task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if node.task_count < node.max_tasks {
            Ok(())
        } else {
            Err(Rejection::TooManyTasks)
        }
    }
}

//! Filter `task_limit`: the node's most tasks at once.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct TaskLimit;

impl FilterPlugin for TaskLimit {
    fn name(&self) -> &'static str {
        "task_limit"
    }
    fn filter(&self, _task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if node.task_count < node.max_tasks { Ok(()) } else { Err(Rejection::TooManyTasks) }
    }
}

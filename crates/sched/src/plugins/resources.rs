//! Filter `resources`: the task's CPU and memory fit in what is free.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct ResourcesFit;

impl FilterPlugin for ResourcesFit {
    fn name(&self) -> &'static str {
        "resources"
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        let free = node.free();
        if task.resources.cpu_millicores > free.cpu_millicores {
            Err(Rejection::InsufficientCpu)
        } else if task.resources.memory_mib > free.memory_mib {
            Err(Rejection::InsufficientMemory)
        } else {
            Ok(())
        }
    }
}

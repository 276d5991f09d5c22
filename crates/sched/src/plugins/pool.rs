//! Filter `pool`: a task that names a pool runs only there, and a node
//! dedicated to some projects takes no other project's task.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Pool;

impl FilterPlugin for Pool {
    fn name(&self) -> &'static str {
        "pool"
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if !node.dedicated_to.is_empty() && !node.dedicated_to.iter().any(|p| *p == task.project) {
            return Err(Rejection::Dedicated);
        }
        match &task.pool {
            Some(pool) if node.pool.as_deref() != Some(pool.as_str()) => Err(Rejection::Pool),
            _ => Ok(()),
        }
    }
}

//! Filter `node_ready`: only ready nodes (not draining, not down).
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct NodeReady;

impl FilterPlugin for NodeReady {
    fn name(&self) -> &'static str {
        "node_ready"
    }
    fn filter(&self, _task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if node.ready { Ok(()) } else { Err(Rejection::NotReady) }
    }
}

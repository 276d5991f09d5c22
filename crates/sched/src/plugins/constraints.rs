//! Filter `constraints`: every placement constraint holds on the node.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Constraints;

impl FilterPlugin for Constraints {
    fn name(&self) -> &'static str {
        "constraints"
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        match task.constraints.iter().find(|c| !c.matches(|name| node.attribute(name))) {
            Some(c) => Err(Rejection::Constraint(c.to_string())),
            None => Ok(()),
        }
    }
}

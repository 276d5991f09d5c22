//! Filter `anti_affinity`: at most N tasks with the same label value per node.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct AntiAffinityFilter;

impl FilterPlugin for AntiAffinityFilter {
    fn name(&self) -> &'static str {
        "anti_affinity"
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

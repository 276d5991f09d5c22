//! Score `image_locality`: prefer nodes that already hold the task's image.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct ImageLocality;

impl ScorePlugin for ImageLocality {
    fn name(&self) -> &'static str {
        "image_locality"
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        if node.images.binary_search(&task.image).is_ok() { 1.0 } else { 0.0 }
    }
}

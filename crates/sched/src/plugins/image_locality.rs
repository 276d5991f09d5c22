//! Score `image_locality`: prefer nodes that already hold the task's image
//! for the task's project: an image some projects pulled with their
//! registry logins is listed by its node as `for=PROJECT=IMAGE` for each
//! of them, and another project's task would have to pull it anyway.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct ImageLocality;

/// The name profiles use.
pub const NAME: &str = "image_locality";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::ScorePlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(ImageLocality))
}

impl ScorePlugin for ImageLocality {
    fn name(&self) -> &str {
        NAME
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let held = node.images.binary_search(&task.image).is_ok()
            || node.images.binary_search(&format!("for={}={}", task.project, task.image)).is_ok();
        if held {
            1.0
        } else {
            0.0
        }
    }
}

//! Filter `volume_locality`: a task that mounts a node-scoped volume (the
//! `local` driver's) runs on the node the volume lives on, once a task has
//! used it; before that, anywhere, and the pass binds the volume to where
//! its first task goes. Volumes of multi-host drivers (`cluster` scope) do
//! not pin. Every profile has this filter (a task that ran elsewhere would
//! find its volume empty).
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct VolumeLocality;

/// The name profiles use.
pub const NAME: &str = "volume_locality";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(VolumeLocality))
}

impl FilterPlugin for VolumeLocality {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        for volume in &task.volumes {
            match &volume.node {
                Some(at) if *at != node.id => return Err(Rejection::VolumeElsewhere { volume: volume.name.clone(), node: at.clone() }),
                _ => {}
            }
        }
        Ok(())
    }
}

//! Filter `devices`: the node offers every device the task asks for (by
//! name: an agent's `--device /dev/fuse` offers `fuse`). Every profile has
//! this filter.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Devices;

/// The name profiles use.
pub const NAME: &str = "devices";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Devices))
}

impl FilterPlugin for Devices {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        match task.devices.iter().find(|d| node.devices.binary_search(d).is_err()) {
            Some(missing) => Err(Rejection::MissingDevice(missing.clone())),
            None => Ok(()),
        }
    }
}

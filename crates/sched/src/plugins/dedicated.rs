//! Filter `dedicated`: a node dedicated to some projects (`--dedicated-to`,
//! the node label `dedicated_to`) takes no other project's task. Every
//! profile has it, whatever filters it lists: it is a tenant boundary, not
//! a placement preference.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Dedicated;

/// The name profiles use.
pub const NAME: &str = "dedicated";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Dedicated))
}

impl FilterPlugin for Dedicated {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if !node.dedicated_to.is_empty() && !node.dedicated_to.contains(&task.project) {
            return Err(Rejection::Dedicated);
        }
        Ok(())
    }
}

//! Filter `constraints`: every placement constraint holds on the node.
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Constraints;

/// The name profiles use.
pub const NAME: &str = "constraints";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Constraints))
}

impl FilterPlugin for Constraints {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        match task.constraints.iter().find(|c| !c.matches(|name| node.attribute(name))) {
            Some(c) => Err(Rejection::Constraint(c.to_string())),
            None => Ok(()),
        }
    }
}

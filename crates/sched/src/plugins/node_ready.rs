//! Filter `node_ready`: only ready nodes (not draining, not down).
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct NodeReady;

/// The name profiles use.
pub const NAME: &str = "node_ready";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(NodeReady))
}

impl FilterPlugin for NodeReady {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, _task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if node.ready {
            Ok(())
        } else {
            Err(Rejection::NotReady)
        }
    }
}

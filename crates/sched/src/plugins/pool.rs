//! Filter `pool`: a task runs only in the pool it names, or, naming none,
//! only on nodes in no pool (the default pool), as Nomad's node pools.
//! (Nodes dedicated to projects are the `dedicated` filter's.)
use crate::model::{NodeSnapshot, PendingTask, Rejection};
use crate::plugin::FilterPlugin;

pub struct Pool;

/// The name profiles use.
pub const NAME: &str = "pool";

/// Makes the plugin; it takes no settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn crate::plugin::FilterPlugin>, crate::registry::ArgsError> {
    crate::registry::no_args(NAME, args)?;
    Ok(std::sync::Arc::new(Pool))
}

impl FilterPlugin for Pool {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if task.pool == node.pool {
            Ok(())
        } else {
            Err(Rejection::Pool)
        }
    }
}

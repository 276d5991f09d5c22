//! Every in-tree plugin, by the name profiles use. Adding a plugin adds one line here.

use crate::plugin::{FilterPlugin, ScorePlugin};
use crate::plugins::*;
use std::sync::Arc;

/// Filters in the order the default pipeline runs them: cheap structural
/// checks first (a node in the wrong pool is wrong whatever it has free, and
/// saying so makes the better reason), then capacity, where most rejections
/// in a busy cluster fall, then the string-matching constraints.
pub const DEFAULT_FILTERS: [&str; 6] = ["node_ready", "pool", "task_limit", "resources", "constraints", "anti_affinity"];

/// The filter plugin called `name`.
pub fn filter(name: &str) -> Option<Arc<dyn FilterPlugin>> {
    Some(match name {
        "node_ready" => Arc::new(node_ready::NodeReady),
        "task_limit" => Arc::new(task_limit::TaskLimit),
        "resources" => Arc::new(resources::ResourcesFit),
        "pool" => Arc::new(pool::Pool),
        "constraints" => Arc::new(constraints::Constraints),
        "anti_affinity" => Arc::new(anti_affinity::AntiAffinityFilter),
        _ => return None,
    })
}

/// The score plugin called `name`; `topology_key` configures `topology_spread`.
pub fn scorer(name: &str, topology_key: &str) -> Option<Arc<dyn ScorePlugin>> {
    Some(match name {
        "binpack" => Arc::new(binpack::Binpack),
        "spread" => Arc::new(spread::Spread),
        "balanced" => Arc::new(balanced::Balanced),
        "image_locality" => Arc::new(image_locality::ImageLocality),
        "topology_spread" => Arc::new(topology_spread::TopologySpread { key: topology_key.to_string() }),
        "random" => Arc::new(random::Random),
        _ => return None,
    })
}

/// Names of every filter plugin.
pub const FILTERS: [&str; 6] = DEFAULT_FILTERS;
/// Names of every score plugin.
pub const SCORERS: [&str; 6] = ["binpack", "spread", "balanced", "image_locality", "topology_spread", "random"];

//! Score `topology_spread`: prefer nodes in the topology domain (the value
//! of a node label, `zone` unless the profile says otherwise) that holds the
//! fewest tasks, so a zone outage takes the fewest.
use crate::cluster::ClusterView;
use crate::model::{NodeSnapshot, PendingTask};
use crate::plugin::ScorePlugin;

pub struct TopologySpread {
    pub key: String,
}

/// The name profiles use.
pub const NAME: &str = "topology_spread";

/// Its settings: `[profiles.P.args.topology_spread] key = "rack"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The node label whose values are the domains (default `zone`).
    #[serde(default = "Args::default_key")]
    pub key: String,
}

impl Args {
    fn default_key() -> String {
        "zone".into()
    }
}

/// Makes the plugin from its settings.
pub fn factory(args: Option<&toml::Value>) -> Result<std::sync::Arc<dyn ScorePlugin>, crate::registry::ArgsError> {
    let args: Args = crate::registry::parse_args(NAME, args)?;
    Ok(std::sync::Arc::new(TopologySpread { key: args.key }))
}

impl ScorePlugin for TopologySpread {
    fn name(&self) -> &str {
        NAME
    }
    fn topology_keys(&self) -> Vec<String> {
        vec![self.key.clone()]
    }
    fn score(&self, _task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
        let Some(domain) = node.labels.get(&self.key) else { return 0.0 };
        let (here, most) = cluster.topology_counts(&self.key, domain);
        if most == 0 {
            1.0
        } else {
            1.0 - f64::from(here) / f64::from(most)
        }
    }
}

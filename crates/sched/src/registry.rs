//! The plugin registry: names to factories, in the manner of the
//! Kubernetes scheduling framework's `registry.go`. A factory makes a plugin
//! from its settings in a profile (`[profiles.P.args.NAME]`), so settings
//! specific to one plugin live with that plugin. [`Registry::builtin`]
//! holds every in-tree plugin; a program embedding the engine adds its own
//! with [`Registry::with_filter`] and [`Registry::with_scorer`].

use crate::plugin::{FilterPlugin, ScorePlugin};
use crate::plugins::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Filters in the order the default pipeline runs them: cheap structural
/// checks first (a node in the wrong pool is wrong whatever it has free, and
/// saying so makes the better reason), then capacity, where most rejections
/// in a busy cluster fall, then the string-matching constraints.
pub const DEFAULT_FILTERS: [&str; 9] = [
    node_ready::NAME,
    dedicated::NAME,
    pool::NAME,
    volume_locality::NAME,
    task_limit::NAME,
    resources::NAME,
    devices::NAME,
    constraints::NAME,
    anti_affinity::NAME,
];

/// Filters every profile has, added to those it lists: without them a task
/// would run on a draining or down node, on a node dedicated to other
/// projects (a tenant boundary an operator's profile must not open by
/// leaving a filter out), where its volume is not, or without the device
/// it needs.
pub const REQUIRED_FILTERS: [&str; 4] = [node_ready::NAME, dedicated::NAME, volume_locality::NAME, devices::NAME];

/// Makes a filter plugin from its settings (`None`: none given).
pub type FilterFactory = Arc<dyn Fn(Option<&toml::Value>) -> Result<Arc<dyn FilterPlugin>, ArgsError> + Send + Sync>;
/// Makes a score plugin from its settings (`None`: none given).
pub type ScoreFactory = Arc<dyn Fn(Option<&toml::Value>) -> Result<Arc<dyn ScorePlugin>, ArgsError> + Send + Sync>;

/// A plugin's settings that it cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("settings of `{plugin}`: {message}")]
pub struct ArgsError {
    pub plugin: String,
    pub message: String,
}

/// For plugins without settings: refuses any.
pub fn no_args(plugin: &str, args: Option<&toml::Value>) -> Result<(), ArgsError> {
    match args {
        None => Ok(()),
        Some(toml::Value::Table(t)) if t.is_empty() => Ok(()),
        Some(_) => Err(ArgsError { plugin: plugin.into(), message: "this plugin takes no settings".into() }),
    }
}

/// Decodes a plugin's settings into its `Args` (defaults when none are given).
pub fn parse_args<A: serde::de::DeserializeOwned>(plugin: &str, args: Option<&toml::Value>) -> Result<A, ArgsError> {
    let value = args.cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
    value.try_into().map_err(|e: toml::de::Error| ArgsError { plugin: plugin.into(), message: e.to_string() })
}

/// Plugin names to factories.
#[derive(Clone)]
pub struct Registry {
    filters: BTreeMap<String, FilterFactory>,
    scorers: BTreeMap<String, ScoreFactory>,
}

impl Registry {
    /// Every in-tree plugin.
    pub fn builtin() -> Registry {
        Registry { filters: BTreeMap::new(), scorers: BTreeMap::new() }
            .with_filter(node_ready::NAME, node_ready::factory)
            .with_filter(task_limit::NAME, task_limit::factory)
            .with_filter(resources::NAME, resources::factory)
            .with_filter(pool::NAME, pool::factory)
            .with_filter(constraints::NAME, constraints::factory)
            .with_filter(anti_affinity::NAME, anti_affinity::factory)
            .with_filter(dedicated::NAME, dedicated::factory)
            .with_filter(volume_locality::NAME, volume_locality::factory)
            .with_filter(devices::NAME, devices::factory)
            .with_scorer(binpack::NAME, binpack::factory)
            .with_scorer(spread::NAME, spread::factory)
            .with_scorer(balanced::NAME, balanced::factory)
            .with_scorer(image_locality::NAME, image_locality::factory)
            .with_scorer(warm_locality::NAME, warm_locality::factory)
            .with_scorer(topology_spread::NAME, topology_spread::factory)
            .with_scorer(random::NAME, random::factory)
    }

    /// The registry with one more filter (or another factory for a name).
    pub fn with_filter(
        mut self,
        name: impl Into<String>,
        factory: impl Fn(Option<&toml::Value>) -> Result<Arc<dyn FilterPlugin>, ArgsError> + Send + Sync + 'static,
    ) -> Registry {
        self.filters.insert(name.into(), Arc::new(factory));
        self
    }

    /// The registry with one more score plugin (or another factory for a name).
    pub fn with_scorer(
        mut self,
        name: impl Into<String>,
        factory: impl Fn(Option<&toml::Value>) -> Result<Arc<dyn ScorePlugin>, ArgsError> + Send + Sync + 'static,
    ) -> Registry {
        self.scorers.insert(name.into(), Arc::new(factory));
        self
    }

    /// Whether a plugin of that name is registered, as a filter or a scorer.
    pub fn contains(&self, name: &str) -> bool {
        self.filters.contains_key(name) || self.scorers.contains_key(name)
    }

    /// The filter called `name`, made with `args`; `None` if there is no such filter.
    pub fn filter(&self, name: &str, args: Option<&toml::Value>) -> Option<Result<Arc<dyn FilterPlugin>, ArgsError>> {
        self.filters.get(name).map(|factory| factory(args))
    }

    /// The score plugin called `name`, made with `args`; `None` if there is no such plugin.
    pub fn scorer(&self, name: &str, args: Option<&toml::Value>) -> Option<Result<Arc<dyn ScorePlugin>, ArgsError>> {
        self.scorers.get(name).map(|factory| factory(args))
    }

    /// Every filter's name, sorted.
    pub fn filter_names(&self) -> Vec<&str> {
        self.filters.keys().map(String::as_str).collect()
    }

    /// Every score plugin's name, sorted.
    pub fn scorer_names(&self) -> Vec<&str> {
        self.scorers.keys().map(String::as_str).collect()
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

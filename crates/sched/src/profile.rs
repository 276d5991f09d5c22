//! Profiles: named compositions of filters and weighted scorers, with the
//! order candidates are visited in and how many feasible candidates are
//! scored. `spread`, `binpack` and `random` are built in; more come from a
//! TOML file (`SchedulerConfig`).

use crate::cluster::CandidateOrder;
use crate::plugin::{FilterPlugin, ScorePlugin};
use crate::registry::{self, Registry};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How a batch is ordered within one project and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchOrder {
    /// Oldest first (FIFO).
    Submission,
    /// Largest first (first-fit decreasing packs tighter).
    LargestFirst,
}

/// A compiled profile.
#[derive(Clone)]
pub struct Profile {
    pub name: String,
    pub filters: Vec<Arc<dyn FilterPlugin>>,
    pub scorers: Vec<(Arc<dyn ScorePlugin>, f64)>,
    pub order: CandidateOrder,
    /// Feasible candidates scored before choosing (power of K choices).
    pub candidates: usize,
    pub batch_order: BatchOrder,
}

impl Profile {
    /// Whether any of its plugins is batched (a run-time plugin).
    pub fn batched(&self) -> bool {
        self.filters.iter().any(|f| f.batched()) || self.scorers.iter().any(|(s, _)| s.batched())
    }
}

/// A profile as written in the TOML config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Filters to run, in order (default: all of them).
    pub filters: Option<Vec<String>>,
    /// Score plugin name → weight.
    pub scores: BTreeMap<String, f64>,
    #[serde(default = "ProfileConfig::default_order")]
    pub order: CandidateOrder,
    #[serde(default = "ProfileConfig::default_candidates")]
    pub candidates: usize,
    #[serde(default = "ProfileConfig::default_batch_order")]
    pub batch_order: BatchOrder,
    /// Each plugin's settings, by plugin name (`[profiles.P.args.topology_spread] key = "rack"`).
    #[serde(default)]
    pub args: BTreeMap<String, toml::Value>,
    /// Older spelling of `args.topology_spread.key`; still read.
    #[serde(default)]
    pub topology_key: Option<String>,
}

impl ProfileConfig {
    fn default_order() -> CandidateOrder {
        CandidateOrder::Random
    }
    fn default_candidates() -> usize {
        16
    }
    fn default_batch_order() -> BatchOrder {
        BatchOrder::Submission
    }
}

/// A project's scheduling settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The profile of the project's tasks that name none.
    pub profile: Option<String>,
    /// Weight in the fair share (default 1).
    pub weight: Option<f64>,
}

/// The scheduler's TOML configuration.
///
/// ```toml
/// default_profile = "spread"
///
/// [profiles.pack-near-images]
/// order = "most_allocated"
/// candidates = 8
/// scores = { binpack = 2.0, image_locality = 1.0 }
///
/// [projects.analytics]
/// profile = "binpack"
/// weight = 2.0
/// ```
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectConfig>,
    /// Plugins loaded at run time (`[plugins.NAME] wasm = "…"` or
    /// `http = "…"`), kept as written: the engine itself loads nothing;
    /// `shepherd-plugins` reads these and registers them.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Table>,
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("scheduler config is not valid TOML: {0}")]
    Toml(String),
    #[error("profile `{profile}`: unknown filter `{name}` (known: {known})")]
    UnknownFilter { profile: String, name: String, known: String },
    #[error("profile `{profile}`: unknown score plugin `{name}` (known: {known})")]
    UnknownScorer { profile: String, name: String, known: String },
    #[error("profile `{profile}`: {error}")]
    Args { profile: String, error: registry::ArgsError },
    #[error("profile `{profile}`: {message}")]
    Invalid { profile: String, message: String },
    #[error("unknown profile `{0}`")]
    UnknownProfile(String),
}

impl SchedulerConfig {
    /// Parses the TOML text.
    pub fn from_toml(text: &str) -> Result<SchedulerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }
}

fn builtin(registry: &Registry, name: &str, order: CandidateOrder, scorer: &str, batch_order: BatchOrder) -> Profile {
    Profile {
        name: name.into(),
        filters: registry::DEFAULT_FILTERS.iter().filter_map(|f| registry.filter(f, None)).filter_map(Result::ok).collect(),
        // Every built-in profile also prefers a node with an idle warm
        // container of the task's key (0 for every node otherwise).
        scorers: [scorer, crate::plugins::warm_locality::NAME]
            .into_iter()
            .filter_map(|name| registry.scorer(name, None).and_then(Result::ok))
            .map(|s| (s, 1.0))
            .collect(),
        order,
        // The index already visits the best node first; a few more let ties break by score.
        candidates: 4,
        batch_order,
    }
}

/// The built-in profiles: `spread`, `binpack`, `random`.
pub fn builtins(registry: &Registry) -> HashMap<String, Profile> {
    [
        builtin(registry, "spread", CandidateOrder::LeastAllocated, "spread", BatchOrder::Submission),
        builtin(registry, "binpack", CandidateOrder::MostAllocated, "binpack", BatchOrder::LargestFirst),
        builtin(registry, "random", CandidateOrder::Random, "random", BatchOrder::Submission),
    ]
    .into_iter()
    .map(|p| (p.name.clone(), p))
    .collect()
}

/// Compiles a configured profile with the plugins of `registry`.
pub fn compile(name: &str, config: &ProfileConfig, registry: &Registry) -> Result<Profile, ConfigError> {
    let mut args = config.args.clone();
    if let Some(key) = &config.topology_key {
        args.entry(crate::plugins::topology_spread::NAME.to_string())
            .or_insert_with(|| toml::Value::Table([("key".to_string(), toml::Value::String(key.clone()))].into_iter().collect()));
    }
    for plugin in args.keys() {
        let used = config.scores.contains_key(plugin)
            || config.filters.as_ref().map_or(registry::DEFAULT_FILTERS.contains(&plugin.as_str()), |f| f.contains(plugin));
        if !used {
            return Err(ConfigError::Invalid {
                profile: name.into(),
                message: format!("settings for `{plugin}`, which the profile does not use"),
            });
        }
    }
    let args_error = |error| ConfigError::Args { profile: name.into(), error };
    let mut filter_names: Vec<String> =
        config.filters.clone().unwrap_or_else(|| registry::DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect());
    for required in registry::REQUIRED_FILTERS {
        if !filter_names.iter().any(|f| f == required) {
            filter_names.push(required.to_string());
        }
    }
    let filters = filter_names
        .iter()
        .map(|f| match registry.filter(f, args.get(f)) {
            Some(made) => made.map_err(args_error),
            None => Err(ConfigError::UnknownFilter { profile: name.into(), name: f.clone(), known: registry.filter_names().join(", ") }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.scores.is_empty() {
        return Err(ConfigError::Invalid { profile: name.into(), message: "needs at least one score plugin".into() });
    }
    let scorers = config
        .scores
        .iter()
        .map(|(s, weight)| {
            if !(weight.is_finite() && *weight > 0.0) {
                return Err(ConfigError::Invalid { profile: name.into(), message: format!("weight of `{s}` must be a positive number") });
            }
            match registry.scorer(s, args.get(s)) {
                Some(made) => made.map(|plugin| (plugin, *weight)).map_err(args_error),
                None => {
                    Err(ConfigError::UnknownScorer { profile: name.into(), name: s.clone(), known: registry.scorer_names().join(", ") })
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.candidates == 0 {
        return Err(ConfigError::Invalid { profile: name.into(), message: "candidates must be at least 1".into() });
    }
    Ok(Profile { name: name.into(), filters, scorers, order: config.order, candidates: config.candidates, batch_order: config.batch_order })
}

//! # shepherd-sched
//!
//! Placement: given a snapshot of the cluster and a batch of pending tasks,
//! decide which node runs each task, and for each task that fits nowhere,
//! say why ("0/120 nodes fit: 80 insufficient memory, 40 constraint
//! node.labels.region==eu").
//!
//! The pipeline, like Nomad's stack and the Kubernetes framework:
//! [`fairness`] orders the batch (priority, then weighted dominant resource
//! fairness across projects); for each task its [`Profile`] walks candidate
//! nodes in an indexed order ([`CandidateOrder`]: best fit, least loaded,
//! random), keeps those every [`FilterPlugin`] accepts until it has
//! `candidates` of them, scores them with weighted [`ScorePlugin`]s
//! (normalized to [0, 1]) and takes the best. Plugins live in [`plugins`],
//! listed by name in [`registry`]; profiles come built in (`spread`,
//! `binpack`, `random`) or from TOML ([`SchedulerConfig`]).
//!
//! Invariants: a pure library. No I/O, no async, no clock, no randomness
//! that is not seeded by the caller: the same snapshot, batch and seed
//! always give the same placements. A node is never committed past its
//! capacity or task limit, a constraint is never violated, and a dedicated
//! pool never receives another project's task.

pub mod autoscale;
pub mod cluster;
pub mod engine;
pub mod fairness;
pub mod model;
pub mod plugin;
pub mod plugins;
pub mod profile;
pub mod quota;
pub mod registry;
pub mod rng;

pub use cluster::{CandidateOrder, ClusterView, NodeIndex};
pub use engine::{Engine, NodeScore, Pass, Placer, SharedEngine};
pub use model::{
    AntiAffinity, Hold, NodeSnapshot, NodeVolume, PendingTask, Placement, PlacementPlan, QuotaHold, Rejection, Unfit, Unplaced, Wait,
};
pub use plugin::{FilterPlugin, ScorePlugin};
pub use quota::{ProjectUsage, QuotaLedger};
pub use registry::{ArgsError, Registry};

/// The node label that dedicates a node to projects (comma-separated):
/// the `pool` filter keeps every other project's tasks off it.
pub const DEDICATED_LABEL: &str = "dedicated_to";
pub use profile::{BatchOrder, ConfigError, Profile, ProfileConfig, ProjectConfig, SchedulerConfig};

/// The node label that says how many GPUs a node offers (`--gpus`).
pub const GPUS_LABEL: &str = "shepherd.gpus";

/// The node label that names the devices a node offers (`--device`),
/// comma-separated.
pub const DEVICES_LABEL: &str = "shepherd.devices";

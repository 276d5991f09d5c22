//! # shepherd-server
//!
//! The API server and the control loops around it: the REST API
//! ([`api`]), the scheduler loop ([`scheduler`]) and node registration. The
//! all-in-one [`Cluster`] runs all of it plus one in-process agent.
//!
//! Invariant: the server changes task state only through the store's
//! lifecycle transitions, and tells an agent about an assignment only after
//! that assignment is committed.

pub mod agent_guard;
pub mod agents;
pub mod api;
pub mod auth;
pub mod autoscale;
mod cluster;
pub mod events;
pub mod ironworker;
pub mod leader;
pub mod links;
pub mod liveness;
pub mod local_backend;
pub mod metrics;
pub mod placement_notes;
pub mod scheduler;
pub mod serve;
pub mod service;
pub mod tls;
pub mod ui;
pub mod view;
pub mod webhooks;

pub use cluster::{
    local_node_id, local_node_secret, Cluster, ClusterConfig, ClusterError, LocalNodeConfig, StoreConfig, DEFAULT_MAX_ATTEMPT_LOG_BYTES,
    DEFAULT_PROJECT,
};

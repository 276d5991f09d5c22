//! # shepherd-server
//!
//! The API server and the control loops around it, in layers:
//!
//! - [`http`]: the edges. The REST API (`http::v1`, one file per
//!   resource), the agent API, the IronWorker API, the dashboard and
//!   `/metrics`, each a thin translation over the domain, composed into one
//!   router; and the request plumbing they share (state, errors, auth).
//! - [`service`]: every operation with its authorization, callable without
//!   HTTP (tasks, codes, packages, schedules, projects, volumes, the agent
//!   API's), with typed errors each edge renders its own way.
//! - [`nodes`]: the nodes as the server sees them: how it reaches their
//!   agents ([`nodes::links::NodeLinks`]), the scheduler's view of them, their
//!   liveness and what it takes from them.
//! - [`loops`]: the long-running loops (leader election, scheduler, node
//!   watch, heartbeats, autoscaler, webhook delivery, schedule firing, the
//!   event hub, the relay between servers, the dashboard's timeline).
//! - [`cluster`]: the composition root. [`Cluster::start`] builds the
//!   store, the services and the router, and starts every loop, in one place.
//!
//! The rule (checked by `scripts/check-layers.py` in the test command): no
//! domain module (`service`, `nodes`, `loops`, `metrics`,
//! `placement_notes`) imports an edge or the root, and no file imports one
//! that imports it back.
//!
//! Invariant: the server changes task state only through the store's
//! lifecycle transitions, and tells an agent about an assignment only after
//! that assignment is committed.

pub mod cluster;
pub mod http;
pub mod loops;
pub mod metrics;
pub mod nodes;
pub mod placement_notes;
pub mod service;

pub use cluster::{local_node_id, local_node_secret, Cluster, ClusterConfig, ClusterError, LocalNodeConfig, StoreConfig, DEFAULT_PROJECT};
pub use nodes::guard::DEFAULT_MAX_ATTEMPT_LOG_BYTES;

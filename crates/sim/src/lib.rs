//! # shepherd-sim
//!
//! Replays a workload (arrivals, durations, resources, constraints,
//! projects) through the real placement engine (`shepherd-sched`) over N
//! simulated nodes on a virtual clock, for one profile or several side by
//! side, and reports throughput, decision time, utilization over time,
//! fragmentation, queue wait per project and unplaced reasons, as a table
//! and as an SVG plot. [`autoscale`] replays a workload on an autoscaled
//! pool (the server's own scale-up planner, machines joining after a
//! provisioning delay, idle ones retired) against a fixed pool.
//!
//! Invariant: the clock that moves tasks is virtual; the wall clock is read
//! only to time the engine's decisions.

pub mod autoscale;
pub mod replay;
pub mod report;
pub mod run;
pub mod svg;
pub mod workload;

pub use replay::{read_history, replay, Overlay, ReplayConfig, ReplayReport};
pub use report::ProfileReport;
pub use run::{simulate, SimConfig};
pub use workload::{generate, parse_workload, GeneratorConfig, WorkloadError, WorkloadTask};

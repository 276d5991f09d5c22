//! # shepherd-agent
//!
//! The agent runs the task attempts its node is assigned. It owns the
//! [`Driver`] seam (how an attempt runs: a hardened Docker container, or a
//! host process) and everything common to all drivers: timeouts, cancel,
//! fencing, bounded log capture, reconciling after a restart, and
//! reporting each transition to the cluster through the [`Backend`] seam
//! (the server's agent API over HTTP, [`remote`], or the store itself when
//! the agent runs inside the server). It depends on `shepherd-proto` for
//! the wire, never on the store.
//!
//! Invariant: the agent never decides a task's state itself; it reports
//! events ([`shepherd_core::Event`]) and the cluster's state machine
//! decides. A report the state machine refuses (a stale attempt) makes the
//! agent stop that attempt, never run it twice.

pub mod backend;
pub mod driver;
mod logs;
pub mod metrics;
pub mod package;
pub mod remote;
mod runner;
pub mod sim;

pub use backend::{AssignedAttempt, Backend, BackendError, Captured};
pub use driver::docker::{DockerConfig, DockerDriver};
pub use driver::process::ProcessDriver;
pub use driver::{AttemptHandle, AttemptSpec, Driver, DriverError, ExitStatus, OutputChunk};
pub use logs::LogLimits;
pub use runner::{Agent, AgentConfig};

//! # shepherd-agent
//!
//! The agent runs the task attempts its node is assigned. It owns the
//! [`Driver`] seam (how an attempt runs: a host process today, a Docker
//! container next) and everything common to all drivers: timeouts, cancel,
//! bounded log capture, and reporting each transition to the store.
//!
//! Invariant: the agent never decides a task's state itself; it reports
//! events ([`shepherd_core::Event`]) and the store's state machine decides.
//! A report the state machine refuses (a stale attempt) makes the agent stop
//! that attempt, never run it twice.

pub mod backend;
pub mod driver;
mod logs;
pub mod remote;
mod runner;

pub use backend::{AssignedAttempt, Backend, BackendError, StoreBackend};
pub use driver::{AttemptHandle, AttemptSpec, Driver, DriverError, ExitStatus, OutputChunk};
pub use driver::docker::{DockerConfig, DockerDriver};
pub use driver::process::ProcessDriver;
pub use logs::LogLimits;
pub use runner::{Agent, AgentConfig};

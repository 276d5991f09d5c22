//! The driver seam: how one attempt of a task is started, watched and
//! stopped. The agent does the rest (timeouts, cancel, logs, reporting).
//!
//! Its files depend one way, none on this one: `spec` (what an attempt is
//! given and gives back) <- `engine` (the Docker Engine's answers) <-
//! [`pull`] <- [`images`] <- `seam` (the [`Driver`] and [`AttemptHandle`]
//! traits) <- the drivers ([`docker`], with `container` and its [`warm`]
//! pool; [`process`]; [`fake`]). This file only declares them and
//! re-exports what `spec` and `seam` define, under the paths they had.

pub mod access;
mod container;
pub mod devices;
pub mod docker;
mod engine;
pub mod fake;
pub mod images;
pub mod process;
pub mod pull;
mod seam;
mod spec;
pub mod warm;

pub use seam::{AttemptHandle, Driver};
pub use spec::{project_network, AttemptSpec, Captured, DriverError, ExitStatus, OutputChunk, OutputSender, ProgressSink};

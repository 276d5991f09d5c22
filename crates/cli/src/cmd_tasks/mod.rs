//! Task commands: run, ps, inspect, logs, cancel, wait, retry, graph.
//!
//! Split by concern: `run` (submitting and cancelling), `show` (`ps` and
//! `inspect`), `follow` (`logs`, `wait`, and following a task through a
//! server restart), `parse` (flag values other commands share), `arrays` (arrays shown,
//! waited for and retried, and the dependency graph). This file
//! only names what the rest of the CLI uses.

mod arrays;
mod follow;
mod parse;
mod run;
mod show;

pub use arrays::{graph, result, retry, GraphArgs, ResultArgs, RetryArgs};
pub use follow::{logs, wait, LogsArgs, Outage, WaitArgs};
pub(crate) use parse::{parse_pair, parse_time, parse_timeout};
pub use run::{cancel, run, CancelArgs, RunArgs};
pub use show::{inspect, ps, InspectArgs, PsArgs};

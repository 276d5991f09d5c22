//! The states a task moves through, and which moves are legal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a task is in its life.
///
/// ```text
/// waiting ──► queued ──► scheduled ──► running ──► succeeded | failed | timed_out | cancelled
///   ▲            │            │
///   └────────────┴────────────┘   (attempt lost or failed, retries remain)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted and durable, waiting for its dependencies (or, a child of
    /// an array, for a place under the array's parallelism): never placed
    /// until it is released to the queue.
    Waiting,
    /// Accepted and durable, waiting for a node.
    Queued,
    /// Assigned to a node; the attempt has not started yet.
    Scheduled,
    /// The attempt's process or container is running.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero, could not start, or was lost, with no retries left.
    Failed,
    /// Ran past its timeout and was stopped.
    TimedOut,
    /// Cancelled by a user.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order. Tests iterate over all pairs of these.
    pub const ALL: [TaskState; 8] = [
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
    ];

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled)
    }

    /// Whether a task holds resources on a node in this state.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Scheduled | TaskState::Running)
    }

    /// The table of legal moves. [`crate::lifecycle::decide`] never returns
    /// a move outside it, and the store refuses any other.
    pub fn can_transition_to(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Waiting, Queued | Cancelled)
                | (Queued, Scheduled | Cancelled)
                | (Scheduled, Running | Queued | Failed | Cancelled)
                | (Running, Queued | Succeeded | Failed | TimedOut | Cancelled)
        )
    }

    /// The stable lower-case name used in the API, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given was not one of the task states.
#[derive(Debug, thiserror::Error)]
#[error("unknown task state `{0}`; expected one of waiting, queued, scheduled, running, succeeded, failed, timed_out, cancelled")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_states_matches_the_lifecycle_table() {
        use TaskState::*;
        let legal = [
            (Waiting, Queued),
            (Waiting, Cancelled),
            (Queued, Scheduled),
            (Queued, Cancelled),
            (Scheduled, Running),
            (Scheduled, Queued),
            (Scheduled, Failed),
            (Scheduled, Cancelled),
            (Running, Queued),
            (Running, Succeeded),
            (Running, Failed),
            (Running, TimedOut),
            (Running, Cancelled),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                assert_eq!(from.can_transition_to(to), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(TaskState::ALL.iter().all(|to| !from.can_transition_to(*to)));
        }
    }

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().unwrap(), state);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}

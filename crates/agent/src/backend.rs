//! What the agent needs from the cluster, as one trait: the server's agent
//! API over the network (`crate::remote::HttpBackend`), or, when the agent
//! runs inside the server, the store itself (`shepherd-server`'s
//! `StoreBackend`: the agent crate never depends on the store).

use async_trait::async_trait;
use shepherd_core::{Event, LaunchSpec, LogChunk, TaskId};
pub use shepherd_proto::{AssignedAttempt, Captured};

/// Why the agent could not get through to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No connection, or it broke (the cause's text).
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("server answered {status}: {body}")]
    Refused { status: u16, body: String },
    /// The server's answer could not be read.
    #[error("bad answer from server: {0}")]
    BadAnswer(String),
    /// Reports kept failing for longer than the agent retries them.
    #[error("reports undeliverable for over a minute")]
    Undeliverable,
    /// The server declared this node down: it must register again and reconcile.
    #[error("declared down by the server")]
    DeclaredDown,
    /// The stream of assignments broke or fell silent.
    #[error("stream: {0}")]
    Stream(String),
    /// The HTTP client could not be set up (a bad CA certificate).
    #[error("{0}")]
    Client(String),
    /// In-process: the cluster's store failed (its message; not a
    /// separate source, so a chain never says it twice).
    #[error("the store failed: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// The server answered with this HTTP status.
    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, BackendError::Refused { status, .. } if *status == code)
    }
}

/// The agent's view of the cluster.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reports lifecycle events; for each, whether the state machine took it.
    async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError>;
    /// What it takes to start a task's current attempt.
    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, BackendError>;
    /// Stores output.
    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError>;
    /// The attempts the cluster has on `node_id` (scheduled or running).
    async fn assigned(&self, node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError>;
    /// How much of an attempt's output is stored, per stream (an adopted
    /// attempt's output goes on from there).
    async fn captured(&self, id: TaskId, attempt: u32) -> Result<Captured, BackendError>;
    /// The code package (zip bytes) of a task assigned to this node.
    async fn package(&self, id: TaskId) -> Result<Vec<u8>, BackendError>;
    /// How far an attempt got before its task runs (its image's pull),
    /// shown on the task. Informational: a lost report is not retried.
    async fn progress(&self, _id: TaskId, _attempt: u32, _progress: shepherd_core::Progress) -> Result<(), BackendError> {
        Ok(())
    }
}

/// An in-memory cluster, for fast tests of the agent and of anything that
/// drives one: it takes every report (but those it was told to refuse),
/// keeps output, and says what is assigned where.
pub mod memory {
    use super::*;
    use shepherd_core::LogStream;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    /// See the module.
    #[derive(Default)]
    pub struct MemoryBackend {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        reports: Vec<(TaskId, Event)>,
        packages: HashMap<TaskId, Vec<u8>>,
        refused: HashSet<TaskId>,
        /// While set, reports fail as if no server answered.
        unreachable: bool,
        logs: Vec<LogChunk>,
        assigned: Vec<AssignedAttempt>,
        launches: HashMap<TaskId, LaunchSpec>,
        progress: Vec<(TaskId, u32, shepherd_core::Progress)>,
    }

    impl MemoryBackend {
        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        /// Every report taken (refused ones included), in order.
        pub fn reports(&self) -> Vec<(TaskId, Event)> {
            self.lock().reports.clone()
        }

        /// The reports about one task.
        pub fn reports_of(&self, task: TaskId) -> Vec<Event> {
            self.lock().reports.iter().filter(|(id, _)| *id == task).map(|(_, e)| e.clone()).collect()
        }

        /// Every progress report of attempts before their tasks ran, in order.
        pub fn progress(&self) -> Vec<(TaskId, u32, shepherd_core::Progress)> {
            self.lock().progress.clone()
        }

        /// From now on, refuse every report about `task` (it was given away).
        pub fn refuse(&self, task: TaskId) {
            self.lock().refused.insert(task);
        }

        /// Makes reports fail as if no server answered (or answer again).
        pub fn set_unreachable(&self, unreachable: bool) {
            self.lock().unreachable = unreachable;
        }

        /// What the cluster says is assigned (for `reconcile`).
        pub fn set_assigned(&self, assigned: Vec<AssignedAttempt>) {
            self.lock().assigned = assigned;
        }

        /// A launch spec the agent may fetch.
        /// Gives a task's package.
        pub fn add_package(&self, task: TaskId, zip: Vec<u8>) {
            self.lock().packages.insert(task, zip);
        }

        pub fn add_launch(&self, launch: LaunchSpec) {
            self.lock().launches.insert(launch.id, launch);
        }

        /// A task's stored output (stdout and stderr).
        pub fn output(&self, task: TaskId) -> Vec<u8> {
            self.lock().logs.iter().filter(|c| c.task_id == task && c.stream != LogStream::System).flat_map(|c| c.data.clone()).collect()
        }
    }

    #[async_trait]
    impl Backend for MemoryBackend {
        async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError> {
            let mut state = self.lock();
            if state.unreachable {
                return Err(BackendError::Stream("no server answered".into()));
            }
            let accepted = events.iter().map(|(id, _)| !state.refused.contains(id)).collect();
            state.reports.extend(events);
            Ok(accepted)
        }

        async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, BackendError> {
            Ok(self.lock().launches.get(&id).cloned())
        }

        async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError> {
            self.lock().logs.extend(chunks);
            Ok(())
        }

        async fn assigned(&self, _node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError> {
            Ok(self.lock().assigned.clone())
        }

        async fn captured(&self, id: TaskId, attempt: u32) -> Result<Captured, BackendError> {
            let mut captured = Captured::default();
            for chunk in self.lock().logs.iter().filter(|c| c.task_id == id && c.attempt == attempt) {
                match chunk.stream {
                    LogStream::Stdout => captured.stdout += chunk.data.len() as u64,
                    LogStream::Stderr => captured.stderr += chunk.data.len() as u64,
                    LogStream::System => {}
                }
            }
            Ok(captured)
        }

        async fn package(&self, id: TaskId) -> Result<Vec<u8>, BackendError> {
            self.lock().packages.get(&id).cloned().ok_or(BackendError::Refused { status: 404, body: "no package".into() })
        }

        async fn progress(&self, id: TaskId, attempt: u32, progress: shepherd_core::Progress) -> Result<(), BackendError> {
            self.lock().progress.push((id, attempt, progress));
            Ok(())
        }
    }
}

//! What a node needs to run one attempt of a task ([`LaunchSpec`]) and the
//! output it sends back ([`LogChunk`]). Shared by the store (which keeps
//! them), the server and the agent; their wire forms live in
//! `shepherd-proto`.

use crate::{TaskId, TaskSpec, TaskState, Timestamp};
use std::collections::BTreeMap;

/// Everything a driver needs to start an attempt. Its `Debug` leaves out
/// the payload and the secrets' values.
#[derive(Clone)]
pub struct LaunchSpec {
    pub id: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    pub node_id: Option<String>,
    pub cancel_requested: bool,
    pub spec: TaskSpec,
    pub payload: Option<Vec<u8>>,
    /// When the current attempt started, if it has.
    pub attempt_started_at: Option<Timestamp>,
    /// The values of the secrets the spec asks for, by secret name. A
    /// secret deleted since the task was created is missing here.
    pub secrets: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("attempt", &self.attempt)
            .field("node_id", &self.node_id)
            .field("spec", &self.spec)
            .field("payload_bytes", &self.payload.as_ref().map(Vec::len))
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout = 1,
    Stderr = 2,
    /// Lines written by Shepherd itself (e.g. the truncation notice).
    System = 3,
}

impl LogStream {
    /// From the stored number.
    pub fn from_code(code: i64) -> LogStream {
        match code {
            1 => LogStream::Stdout,
            2 => LogStream::Stderr,
            _ => LogStream::System,
        }
    }
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }
}

/// Output to append to a task's log.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub task_id: TaskId,
    pub attempt: u32,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

//! # shepherd-proto
//!
//! The agent protocol (v1): every message a server and its agents exchange
//! over HTTP, in its wire form. Both sides depend on this crate and on
//! nothing of each other's for the wire. The calls themselves are listed in
//! ARCHITECTURE.md ("The agent protocol").
//!
//! Invariant: a change here that an older peer could not read needs a new
//! [`PROTOCOL_VERSION`]; new optional fields (`#[serde(default)]`) do not.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shepherd_core::{Event, LaunchSpec, LogChunk, LogStream, Resources, TaskId, TaskSpec, TaskState, Timestamp};
use std::collections::BTreeMap;

/// The protocol version an agent speaks; the server refuses others.
pub const PROTOCOL_VERSION: &str = "1";
/// The header carrying it on every agent request.
pub const PROTOCOL_HEADER: &str = "x-shepherd-agent-protocol";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `POST /v1/agent/register`. Its `Debug` leaves out the join token and
/// the node's secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Registration {
    pub join_token: String,
    pub node_id: String,
    pub hostname: String,
    pub driver: String,
    pub capacity: Resources,
    pub max_tasks: u32,
    pub labels: BTreeMap<String, String>,
    pub images: Vec<String>,
    /// The node's own secret (kept in its data directory): its id is bound
    /// to it at the first registration, and a registration of that id with
    /// another secret is refused. Its `Debug` is hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("node_id", &self.node_id)
            .field("hostname", &self.hostname)
            .field("driver", &self.driver)
            .field("capacity", &self.capacity)
            .field("max_tasks", &self.max_tasks)
            .field("labels", &self.labels)
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

/// The server's answer to a registration: the credential for everything else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub node_token: String,
    /// How often to heartbeat (ms); older servers leave it out (2 s then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// The server's answer to a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// How often to heartbeat from now on (ms): the interval grows with
    /// the number of nodes, so that heartbeats cost the server about the
    /// same at any size, and stays well inside the node timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The images the node's engine holds, and `warm=<key>` for its idle warm containers.
    #[serde(default)]
    pub images: Vec<String>,
    /// Attempts running on the node now.
    #[serde(default)]
    pub running: usize,
}

/// What the server pushes on the stream (`GET /v1/agent/stream`), one JSON
/// object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Start this attempt. `launch` carries what the agent needs to start
    /// it, saving a round trip; without it the agent fetches the launch spec.
    Assign {
        task_id: TaskId,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        launch: Option<Box<WireLaunch>>,
    },
    /// Stop this task's attempt: it was cancelled.
    Cancel { task_id: TaskId },
    /// Compare your attempts with the server's (sent on every connect).
    Reconcile,
    /// The node is draining: free what it keeps between tasks (idle warm
    /// containers) and keep nothing more until it is given work again.
    Drain,
    /// A project volume was removed: remove its data from this node.
    RemoveVolume { engine_name: String, project: String },
    /// Pull this image now, ahead of the tasks that will need it
    /// (`shepherd image prefetch`), with a project's login to its registry.
    Prefetch {
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<shepherd_core::RegistryAuth>,
        /// The project whose login `auth` is (the image is then that
        /// project's on the node).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// How long the pull may take, in seconds.
        pull_timeout_seconds: u32,
    },
    /// Keep-alive.
    Ping,
}

/// A launch spec on the wire (payload and secret values in base64). Its
/// `Debug` leaves out the secrets' values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WireLaunch {
    pub id: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    pub node_id: Option<String>,
    pub cancel_requested: bool,
    pub spec: TaskSpec,
    pub payload: Option<String>,
    pub attempt_started_at: Option<Timestamp>,
    /// Secret values by name (base64).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Its volume mounts, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<shepherd_core::ResolvedMount>,
    /// Its networks beyond the plain ones, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<shepherd_core::ResolvedNetwork>,
    /// The project's login to the image's registry, if any (a secret, as
    /// the secrets are; its `Debug` leaves the password out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<shepherd_core::RegistryAuth>,
    /// Its dependencies' results by id (base64).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

impl std::fmt::Debug for WireLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireLaunch")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("spec", &self.spec)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl From<LaunchSpec> for WireLaunch {
    fn from(l: LaunchSpec) -> WireLaunch {
        WireLaunch {
            id: l.id,
            state: l.state,
            attempt: l.attempt,
            node_id: l.node_id,
            cancel_requested: l.cancel_requested,
            spec: l.spec,
            payload: l.payload.map(|p| b64().encode(p)),
            attempt_started_at: l.attempt_started_at,
            secrets: l.secrets.into_iter().map(|(k, v)| (k, b64().encode(v))).collect(),
            volumes: l.volumes,
            networks: l.networks,
            registry_auth: l.registry_auth,
            inputs: l.inputs.into_iter().map(|(k, v)| (k, b64().encode(v))).collect(),
        }
    }
}

impl WireLaunch {
    /// Back to a launch spec (a payload or secret that is not base64 is dropped).
    pub fn decode(self) -> LaunchSpec {
        LaunchSpec {
            id: self.id,
            state: self.state,
            attempt: self.attempt,
            node_id: self.node_id,
            cancel_requested: self.cancel_requested,
            spec: self.spec,
            payload: self.payload.and_then(|p| b64().decode(p).ok()),
            attempt_started_at: self.attempt_started_at,
            secrets: self.secrets.into_iter().filter_map(|(k, v)| b64().decode(v).ok().map(|v| (k, v))).collect(),
            volumes: self.volumes,
            networks: self.networks,
            registry_auth: self.registry_auth,
            inputs: self.inputs.into_iter().filter_map(|(k, v)| b64().decode(v).ok().map(|v| (k, v))).collect(),
        }
    }
}

/// A log chunk on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireChunk {
    pub task_id: TaskId,
    pub attempt: u32,
    /// 1 stdout, 2 stderr, 3 system.
    pub stream: u8,
    /// The bytes, base64.
    pub data: String,
}

impl From<&LogChunk> for WireChunk {
    fn from(c: &LogChunk) -> WireChunk {
        WireChunk { task_id: c.task_id, attempt: c.attempt, stream: c.stream as u8, data: b64().encode(&c.data) }
    }
}

impl WireChunk {
    /// Back to a chunk; `None` if the data is not base64.
    pub fn decode(self) -> Option<LogChunk> {
        let data = b64().decode(self.data).ok()?;
        Some(LogChunk { task_id: self.task_id, attempt: self.attempt, stream: LogStream::from_code(i64::from(self.stream)), data })
    }
}

/// `POST /v1/agent/events`: lifecycle events, each about one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub events: Vec<(TaskId, Event)>,
}

/// For each event, whether the state machine took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsResponse {
    pub accepted: Vec<bool>,
}

/// `POST /v1/agent/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsRequest {
    pub chunks: Vec<WireChunk>,
}

/// `POST /v1/agent/tasks/{id}/progress`: how far an attempt got before its
/// task runs (its image's pull), shown on the task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressReport {
    pub attempt: u32,
    pub progress: shepherd_core::Progress,
}

/// An attempt the cluster has placed on a node (`GET /v1/agent/assigned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedAttempt {
    pub task_id: TaskId,
    pub attempt: u32,
    pub state: TaskState,
    pub cancel_requested: bool,
}

/// How much of an attempt's output is stored, per stream
/// (`GET /v1/agent/tasks/{id}/captured?attempt=N`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    pub stdout: u64,
    pub stderr: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_spec_survives_the_wire_and_its_debug_hides_secrets() {
        let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
        spec.project = "p".into();
        let launch = LaunchSpec {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
            state: TaskState::Scheduled,
            attempt: 2,
            node_id: Some("n".into()),
            cancel_requested: false,
            spec,
            payload: Some(vec![0, 1, 255]),
            attempt_started_at: None,
            secrets: BTreeMap::from([("db".to_string(), b"hunter2".to_vec())]),
            volumes: Vec::new(),
            networks: Vec::new(),
            registry_auth: None,
            inputs: BTreeMap::new(),
        };
        let wire = WireLaunch::from(launch.clone());
        assert!(!format!("{wire:?}").contains("hunter2"));
        let json = serde_json::to_string(&AgentMessage::Assign { task_id: launch.id, attempt: 2, launch: Some(Box::new(wire)) }).unwrap();
        let AgentMessage::Assign { launch: Some(back), .. } = serde_json::from_str(&json).unwrap() else { panic!("{json}") };
        let back = back.decode();
        assert_eq!((back.payload, back.secrets, back.attempt), (launch.payload, launch.secrets, 2));
    }

    #[test]
    fn chunks_and_events_round_trip() {
        let chunk = LogChunk {
            task_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
            attempt: 1,
            stream: LogStream::Stderr,
            data: b"x\n".to_vec(),
        };
        let back = serde_json::from_str::<WireChunk>(&serde_json::to_string(&WireChunk::from(&chunk)).unwrap()).unwrap().decode().unwrap();
        assert_eq!((back.stream, back.data), (LogStream::Stderr, b"x\n".to_vec()));
        // An older agent's events (no `at`) still read.
        let old = r#"{"events": [["01ARZ3NDEKTSV4RRFFQ69G5FAV", {"type": "exit", "attempt": 1, "code": 0, "oom_killed": false}]]}"#;
        let events: EventsRequest = serde_json::from_str(old).unwrap();
        assert_eq!(events.events[0].1.at(), None);
    }
}

//! The registry of remote agents connected to this server: their node
//! tokens and the senders of their streams. It is how assignments and
//! cancels reach them ([`RemoteAgents`] implements [`NodeLinks`]).

use super::links::NodeLinks;
use shepherd_core::{LaunchSpec, TaskId};
use shepherd_proto::{AgentMessage, WireLaunch};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Connected remote agents: their tokens and the senders of their streams.
#[derive(Default)]
pub struct RemoteAgents {
    /// node token → node id.
    tokens: Mutex<HashMap<String, String>>,
    /// node id → the open stream.
    streams: Mutex<HashMap<String, mpsc::UnboundedSender<AgentMessage>>>,
}

impl RemoteAgents {
    /// Drops a node's stream and token: it must register again (and
    /// reconcile) before it gets anything.
    pub fn disconnect(&self, node_id: &str) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(node_id);
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, node| node != node_id);
        }
    }

    /// Whether this server holds the node's stream.
    pub fn holds(&self, node_id: &str) -> bool {
        self.streams.lock().map(|s| s.contains_key(node_id)).unwrap_or(false)
    }

    /// Asks every agent connected here to reconcile (messages between
    /// servers may have been missed).
    pub fn reconcile_all(&self) {
        let nodes: Vec<String> = self.streams.lock().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        for node in nodes {
            self.send(&node, AgentMessage::Reconcile);
        }
    }

    /// Sends a cancel to the node's agent if its stream is here; false if not.
    pub fn cancel_here(&self, node_id: &str, task_id: TaskId) -> bool {
        self.send(node_id, AgentMessage::Cancel { task_id })
    }

    /// Tells the node's agent that its node drains, if its stream is here; false if not.
    pub fn drain_here(&self, node_id: &str) -> bool {
        self.send(node_id, AgentMessage::Drain)
    }

    /// Tells the node's agent to pull an image now, if its stream is here; false if not.
    pub fn prefetch_here(
        &self,
        node_id: &str,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        pull_timeout_seconds: u32,
    ) -> bool {
        let project = project.map(str::to_string);
        self.send(node_id, AgentMessage::Prefetch { image: image.into(), auth, project, pull_timeout_seconds })
    }

    /// Tells the node's agent to remove a volume, if its stream is here; false if not.
    pub fn remove_volume_here(&self, node_id: &str, engine_name: &str, project: &str) -> bool {
        self.send(node_id, AgentMessage::RemoveVolume { engine_name: engine_name.into(), project: project.into() })
    }

    /// The node a node token was issued to.
    pub fn node_of_token(&self, token: &str) -> Option<String> {
        self.tokens.lock().ok().and_then(|t| t.get(token).cloned())
    }

    /// A new node token for `node_id`, replacing any it had.
    pub fn issue_token(&self, node_id: &str) -> String {
        let token = random_token();
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, node| node != node_id);
            tokens.insert(token.clone(), node_id.to_string());
        }
        token
    }

    /// Makes `tx` the node's stream (a newer one replaces an older one).
    pub fn open_stream(&self, node_id: &str, tx: mpsc::UnboundedSender<AgentMessage>) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(node_id.to_string(), tx);
        }
    }

    /// Whether `tx` is still the node's stream.
    pub fn is_current(&self, node_id: &str, tx: &mpsc::UnboundedSender<AgentMessage>) -> bool {
        self.streams.lock().map(|s| s.get(node_id).is_some_and(|t| t.same_channel(tx))).unwrap_or(false)
    }

    fn send(&self, node_id: &str, message: AgentMessage) -> bool {
        let mut streams = match self.streams.lock() {
            Ok(streams) => streams,
            Err(_) => return false,
        };
        match streams.get(node_id) {
            Some(tx) if tx.send(message).is_ok() => true,
            Some(_) => {
                streams.remove(node_id);
                false
            }
            None => false,
        }
    }
}

impl NodeLinks for RemoteAgents {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        let (task_id, attempt) = (launch.id, launch.attempt);
        self.send(node_id, AgentMessage::Assign { task_id, attempt, launch: Some(Box::new(WireLaunch::from(launch))) })
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        self.send(node_id, AgentMessage::Cancel { task_id });
    }

    fn drain(&self, node_id: &str) {
        self.drain_here(node_id);
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        // Never expected on Linux; fall back to two ULIDs' randomness.
        return format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

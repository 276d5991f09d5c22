//! What servers tell each other about agents (published through the
//! store: PostgreSQL's LISTEN/NOTIFY between servers sharing it).

use shepherd_core::TaskId;

/// What servers tell each other about agents.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Push this attempt to the node's agent, if you hold its stream.
    Assign { node: String, task: TaskId, attempt: u32 },
    /// Stop this task's attempt on the node, if you hold its stream.
    Cancel { node: String, task: TaskId },
    /// The node is draining: tell its agent, if you hold its stream.
    Drain { node: String },
    /// A volume was removed: tell the node's agent, if you hold its stream.
    RemoveVolume { node: String, engine_name: String, project: String },
    /// Have the node's agent pull an image, if you hold its stream (with
    /// the project's login, read from the store: no password travels here).
    Prefetch { node: String, image: String, project: Option<String>, timeout: u32 },
    /// Have every agent connected to you reconcile: sent by a new leader,
    /// since the old one may have died between committing placements and
    /// publishing them.
    Reconcile,
    /// These attempts (task, attempt) left their nodes: the leader's view
    /// releases what they held.
    Released { tasks: Vec<(TaskId, u32)> },
    /// Something to place arrived at a follower (tasks stored, capacity
    /// freed): the leader runs a pass now, not at its next idle pass.
    Wake,
    /// A node registered or changed state at another server: every
    /// server reads the node records again, and the leader runs a pass
    /// (what waited for that node may fit now).
    NodesChanged,
}

/// Tells every other server that a node registered or changed state
/// here (a no-op on a store only one server uses).
pub async fn nodes_changed_everywhere(store: &dyn shepherd_store::Store) {
    let text = serde_json::to_string(&Dispatch::NodesChanged).unwrap_or_default();
    if let Err(e) = store.publish(text).await {
        tracing::warn!(error = %e, "could not tell the other servers of a node change");
    }
}

/// Asks every server to have its agents reconcile.
pub async fn reconcile_everywhere(store: &dyn shepherd_store::Store) {
    let text = serde_json::to_string(&Dispatch::Reconcile).unwrap_or_default();
    if let Err(e) = store.publish(text).await {
        tracing::warn!(error = %e, "could not ask the servers' agents to reconcile");
    }
}

//! The cluster's [`NodeLinks`]: the in-process agent first, then agents
//! connected to this server, then, through the store, whichever server
//! holds the node's agent.

use super::dispatch::Dispatch;
use super::links::{LocalAgents, NodeLinks};
use super::remote::RemoteAgents;
use shepherd_core::{LaunchSpec, TaskId};

/// The in-process agent first, then remote agents connected to this
/// server, then, through the store, whichever server holds the node's
/// agent (servers sharing a store: PostgreSQL's LISTEN/NOTIFY).
pub struct ClusterLinks {
    pub local: LocalAgents,
    pub remote: std::sync::Arc<RemoteAgents>,
    pub store: std::sync::Arc<dyn shepherd_store::Store>,
}

impl ClusterLinks {
    fn publish(&self, message: Dispatch) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let text = serde_json::to_string(&message).unwrap_or_default();
            if let Err(e) = store.publish(text).await {
                tracing::warn!(error = %e, ?message, "could not tell the other servers");
            }
        });
    }
}

impl NodeLinks for ClusterLinks {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        if self.local.has(node_id) {
            return self.local.assign(node_id, launch);
        }
        let (task, attempt) = (launch.id, launch.attempt);
        if self.remote.assign(node_id, launch) {
            return true;
        }
        // Not connected here: the server that holds it pushes it (or its
        // agent finds it when it reconciles).
        self.publish(Dispatch::Assign { node: node_id.to_string(), task, attempt });
        true
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        self.local.cancel(node_id, task_id);
        if !self.remote.cancel_here(node_id, task_id) {
            self.publish(Dispatch::Cancel { node: node_id.to_string(), task: task_id });
        }
    }

    fn drain(&self, node_id: &str) {
        if self.local.has(node_id) {
            return self.local.drain(node_id);
        }
        if !self.remote.drain_here(node_id) {
            self.publish(Dispatch::Drain { node: node_id.to_string() });
        }
    }

    fn remove_volume(&self, node_id: &str, engine_name: &str, project: &str) {
        if self.local.has(node_id) {
            return self.local.remove_volume(node_id, engine_name, project);
        }
        if !self.remote.remove_volume_here(node_id, engine_name, project) {
            self.publish(Dispatch::RemoveVolume { node: node_id.to_string(), engine_name: engine_name.into(), project: project.into() });
        }
    }

    fn prefetch(&self, node_id: &str, image: &str, project: Option<&str>, auth: Option<shepherd_core::RegistryAuth>, timeout: u32) {
        if self.local.has(node_id) {
            return self.local.prefetch(node_id, image, project, auth, timeout);
        }
        if !self.remote.prefetch_here(node_id, image, project, auth, timeout) {
            self.publish(Dispatch::Prefetch {
                node: node_id.to_string(),
                image: image.to_string(),
                project: project.map(str::to_string),
                timeout,
            });
        }
    }
}

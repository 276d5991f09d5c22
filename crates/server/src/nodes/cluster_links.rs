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

    /// Whether the node's agent is reached from this server: in this
    /// process or connected here.
    pub fn holds_here(&self, node_id: &str) -> bool {
        self.local.has(node_id) || self.remote.holds(node_id)
    }

    /// Hands an attempt to the node's agent if it is reached from here;
    /// false if not.
    pub fn assign_here(&self, node_id: &str, launch: LaunchSpec) -> bool {
        if self.local.has(node_id) {
            return self.local.assign(node_id, launch);
        }
        self.remote.assign(node_id, launch)
    }

    /// Stops a task's attempt on the node's agent if it is reached from
    /// here; false if not.
    pub fn cancel_here(&self, node_id: &str, task_id: TaskId) -> bool {
        if self.local.has(node_id) {
            self.local.cancel(node_id, task_id);
            return true;
        }
        self.remote.cancel_here(node_id, task_id)
    }

    /// Tells the node's agent that its node drains, if it is reached from
    /// here; false if not.
    pub fn drain_here(&self, node_id: &str) -> bool {
        if self.local.has(node_id) {
            self.local.drain(node_id);
            return true;
        }
        self.remote.drain_here(node_id)
    }

    /// Has the node's agent remove a volume's data, if it is reached from
    /// here; false if not.
    pub fn remove_volume_here(&self, node_id: &str, engine_name: &str, project: &str) -> bool {
        if self.local.has(node_id) {
            self.local.remove_volume(node_id, engine_name, project);
            return true;
        }
        self.remote.remove_volume_here(node_id, engine_name, project)
    }

    /// Has the node's agent pull an image now, if it is reached from here;
    /// false if not.
    pub fn prefetch_here(
        &self,
        node_id: &str,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        timeout: u32,
    ) -> bool {
        if self.local.has(node_id) {
            self.local.prefetch(node_id, image, project, auth, timeout);
            return true;
        }
        self.remote.prefetch_here(node_id, image, project, auth, timeout)
    }

    /// Has every agent reached from here reconcile with the store.
    pub fn reconcile_here(&self) {
        self.local.reconcile_all();
        self.remote.reconcile_all();
    }
}

impl NodeLinks for ClusterLinks {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        let (task, attempt) = (launch.id, launch.attempt);
        if self.assign_here(node_id, launch) {
            return true;
        }
        // Not reached from here: the server that holds it pushes it (or
        // its agent finds it when it reconciles).
        self.publish(Dispatch::Assign { node: node_id.to_string(), task, attempt });
        true
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        if !self.cancel_here(node_id, task_id) {
            self.publish(Dispatch::Cancel { node: node_id.to_string(), task: task_id });
        }
    }

    fn drain(&self, node_id: &str) {
        if !self.drain_here(node_id) {
            self.publish(Dispatch::Drain { node: node_id.to_string() });
        }
    }

    fn remove_volume(&self, node_id: &str, engine_name: &str, project: &str) {
        if !self.remove_volume_here(node_id, engine_name, project) {
            self.publish(Dispatch::RemoveVolume { node: node_id.to_string(), engine_name: engine_name.into(), project: project.into() });
        }
    }

    fn prefetch(&self, node_id: &str, image: &str, project: Option<&str>, auth: Option<shepherd_core::RegistryAuth>, timeout: u32) {
        if !self.prefetch_here(node_id, image, project, auth, timeout) {
            self.publish(Dispatch::Prefetch {
                node: node_id.to_string(),
                image: image.to_string(),
                project: project.map(str::to_string),
                timeout,
            });
        }
    }
}

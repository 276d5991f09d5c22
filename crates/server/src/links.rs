//! How the server reaches agents. In the all-in-one cluster the agent lives
//! in the same process ([`LocalAgents`]); multi-node clusters implement
//! [`NodeLinks`] over the network.

use shepherd_agent::Agent;
use shepherd_core::LaunchSpec;
use shepherd_core::TaskId;
use std::collections::HashMap;

/// Delivers assignments and cancels to the agent of a node.
pub trait NodeLinks: Send + Sync + 'static {
    /// Tells a node's agent to start an attempt, handing it the launch spec.
    /// False if the node is unreachable.
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool;
    /// Tells a node's agent to stop a task's attempt.
    fn cancel(&self, node_id: &str, task_id: TaskId);
    /// Tells a node's agent that its node is draining (it frees idle warm
    /// containers).
    fn drain(&self, _node_id: &str) {}
    /// Tells a node's agent to remove a removed volume's data.
    fn remove_volume(&self, _node_id: &str, _engine_name: &str, _project: &str) {}
    /// Tells a node's agent to pull an image now with `project`'s login
    /// (`shepherd image prefetch`); `auth` is that login, if the project
    /// has one for the image's registry.
    fn prefetch(&self, _node_id: &str, _image: &str, _project: Option<&str>, _auth: Option<shepherd_core::RegistryAuth>, _timeout: u32) {}
}

/// Agents running in this process, by node id.
#[derive(Default)]
pub struct LocalAgents {
    agents: HashMap<String, Agent>,
}

impl LocalAgents {
    /// Links to these agents.
    pub fn new(agents: impl IntoIterator<Item = Agent>) -> LocalAgents {
        LocalAgents { agents: agents.into_iter().map(|a| (a.node_id().to_string(), a)).collect() }
    }
}

impl NodeLinks for LocalAgents {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        match self.agents.get(node_id) {
            Some(agent) => {
                agent.assign_launch(launch);
                true
            }
            None => false,
        }
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        if let Some(agent) = self.agents.get(node_id) {
            agent.cancel(task_id);
        }
    }

    fn drain(&self, node_id: &str) {
        if let Some(agent) = self.agents.get(node_id) {
            agent.drain();
        }
    }

    fn remove_volume(&self, node_id: &str, engine_name: &str, project: &str) {
        if let Some(agent) = self.agents.get(node_id) {
            agent.remove_volume(engine_name.to_string(), project.to_string());
        }
    }

    fn prefetch(&self, node_id: &str, image: &str, project: Option<&str>, auth: Option<shepherd_core::RegistryAuth>, timeout: u32) {
        if let Some(agent) = self.agents.get(node_id) {
            agent.prefetch(image.to_string(), project.map(str::to_string), auth, std::time::Duration::from_secs(u64::from(timeout)));
        }
    }
}

/// The in-process agent first, then remote agents connected to this
/// server, then, through the store, whichever server holds the node's
/// agent (servers sharing a store: PostgreSQL's LISTEN/NOTIFY).
pub struct ClusterLinks {
    pub local: LocalAgents,
    pub remote: std::sync::Arc<crate::agents::RemoteAgents>,
    pub store: std::sync::Arc<dyn shepherd_store::Store>,
}

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
}

/// Asks every server to have its agents reconcile.
pub async fn reconcile_everywhere(store: &dyn shepherd_store::Store) {
    let text = serde_json::to_string(&Dispatch::Reconcile).unwrap_or_default();
    if let Err(e) = store.publish(text).await {
        tracing::warn!(error = %e, "could not ask the servers' agents to reconcile");
    }
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
        if self.local.agents.contains_key(node_id) {
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
        if self.local.agents.contains_key(node_id) {
            return self.local.drain(node_id);
        }
        if !self.remote.drain_here(node_id) {
            self.publish(Dispatch::Drain { node: node_id.to_string() });
        }
    }

    fn remove_volume(&self, node_id: &str, engine_name: &str, project: &str) {
        if self.local.agents.contains_key(node_id) {
            return self.local.remove_volume(node_id, engine_name, project);
        }
        if !self.remote.remove_volume_here(node_id, engine_name, project) {
            self.publish(Dispatch::RemoveVolume { node: node_id.to_string(), engine_name: engine_name.into(), project: project.into() });
        }
    }

    fn prefetch(&self, node_id: &str, image: &str, project: Option<&str>, auth: Option<shepherd_core::RegistryAuth>, timeout: u32) {
        if self.local.agents.contains_key(node_id) {
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

/// Acts on what other servers publish, for the agents connected here:
/// assignments (with the launch spec read from the store) and cancels.
/// After the store's listener reconnected (messages may have been missed),
/// every agent here reconciles.
pub async fn dispatch(
    mut messages: tokio::sync::broadcast::Receiver<String>,
    store: std::sync::Arc<dyn shepherd_store::Store>,
    remote: std::sync::Arc<crate::agents::RemoteAgents>,
    view: std::sync::Arc<crate::view::ClusterView>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let message = tokio::select! {
            message = messages.recv() => message,
            _ = shutdown.changed() => return,
        };
        let text = match message {
            Ok(text) => text,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fell behind the other servers' messages; agents reconcile");
                remote.reconcile_all();
                view.mark_stale();
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if text == shepherd_store::postgres::RESYNC {
            remote.reconcile_all();
            // Releases may have been missed too: the scheduler reads them again.
            view.mark_stale();
            continue;
        }
        match serde_json::from_str::<Dispatch>(&text) {
            Ok(Dispatch::Assign { node, task, attempt }) if remote.holds(&node) => match store.launch_spec(task).await {
                Ok(Some(launch)) if launch.attempt == attempt && launch.node_id.as_deref() == Some(node.as_str()) => {
                    remote.assign(&node, launch);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %task, "could not read an assignment for an agent here"),
            },
            Ok(Dispatch::Cancel { node, task }) => {
                remote.cancel_here(&node, task);
            }
            Ok(Dispatch::Drain { node }) => {
                remote.drain_here(&node);
            }
            Ok(Dispatch::RemoveVolume { node, engine_name, project }) => {
                remote.remove_volume_here(&node, &engine_name, &project);
            }
            Ok(Dispatch::Prefetch { node, image, project, timeout }) if remote.holds(&node) => {
                let auth = match &project {
                    Some(project) => store.registry_auth(project, &image).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not read a registry login for a prefetch");
                        None
                    }),
                    None => None,
                };
                remote.prefetch_here(&node, &image, project.as_deref(), auth, timeout);
            }
            Ok(Dispatch::Reconcile) => remote.reconcile_all(),
            Ok(Dispatch::Released { tasks }) => {
                for (task, attempt) in tasks {
                    view.released(task, attempt);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "a message not for the dispatcher"),
        }
    }
}

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
    /// Whether the agent of `node_id` runs in this process.
    pub fn has(&self, node_id: &str) -> bool {
        self.agents.contains_key(node_id)
    }

    /// Links to these agents.
    pub fn new(agents: impl IntoIterator<Item = Agent>) -> LocalAgents {
        LocalAgents { agents: agents.into_iter().map(|a| (a.node_id().to_string(), a)).collect() }
    }

    /// Has every agent here reconcile with the store, in the background
    /// (messages between servers may have been missed).
    pub fn reconcile_all(&self) {
        for agent in self.agents.values() {
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.reconcile().await {
                    tracing::warn!(error = %e, "could not reconcile the local node");
                }
            });
        }
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

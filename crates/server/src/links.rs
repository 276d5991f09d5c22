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
}

/// The in-process agent first, then remote agents.
pub struct ClusterLinks {
    pub local: LocalAgents,
    pub remote: std::sync::Arc<crate::agents::RemoteAgents>,
}

impl NodeLinks for ClusterLinks {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        if self.local.agents.contains_key(node_id) {
            self.local.assign(node_id, launch)
        } else {
            self.remote.assign(node_id, launch)
        }
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        self.local.cancel(node_id, task_id);
        self.remote.cancel(node_id, task_id);
    }
}

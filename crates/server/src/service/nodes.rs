//! The nodes, as the admin sees and manages them: their allocation, and
//! draining one.

use crate::nodes::links::NodeLinks;
use crate::nodes::view::ClusterView;
use crate::service::audit;
use crate::service::auth::Caller;
use crate::service::error::{Refusal, ServiceError};
use shepherd_core::Resources;
use shepherd_store::{NodeRecord, Store};
use std::collections::HashMap;
use std::sync::Arc;

/// A node with what its unfinished attempts hold.
pub struct NodeUse {
    pub node: NodeRecord,
    pub allocated: Resources,
    pub tasks: u32,
}

/// Node operations (admin).
pub struct NodeService {
    pub store: Arc<dyn Store>,
    /// Tells a drained node's agent.
    pub links: Arc<dyn NodeLinks>,
    /// The scheduler's view, told when a node changes.
    pub view: Arc<ClusterView>,
}

impl NodeService {
    /// Every node with its allocation.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<NodeUse>, ServiceError> {
        caller.require_admin()?;
        let nodes = self.store.list_nodes().await?;
        let mut usage: HashMap<String, (Resources, u32)> = HashMap::new();
        for task in self.store.active_tasks().await? {
            let entry = usage.entry(task.node_id).or_insert((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
            entry.0.cpu_millicores += task.resources.cpu_millicores;
            entry.0.memory_mib += task.resources.memory_mib;
            entry.1 += 1;
        }
        Ok(nodes
            .into_iter()
            .map(|node| {
                let (allocated, tasks) = usage.remove(&node.id).unwrap_or((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
                NodeUse { node, allocated, tasks }
            })
            .collect())
    }

    /// Drains a node: no new tasks go there; running ones finish.
    pub async fn drain(&self, caller: &Caller, id: &str) -> Result<NodeUse, ServiceError> {
        caller.require_admin()?;
        let Some(node) = self.store.get_node(id).await? else { return Err(ServiceError::Missing(format!("node with id {id}"))) };
        let to = node
            .state
            .next(shepherd_core::NodeEvent::Drain)
            .map_err(|e| ServiceError::refused(Refusal::Conflict, "not_drainable", e.to_string()))?;
        if !self.store.set_node_state(id, to).await? {
            return Err(ServiceError::Missing(format!("node with id {id}")));
        }
        self.view.nodes_changed();
        crate::nodes::dispatch::nodes_changed_everywhere(self.store.as_ref()).await;
        self.links.drain(id);
        tracing::info!(node = %id, "node draining");
        audit::record(self.store.as_ref(), caller, None, "node.drain", id, None).await;
        self.list(caller).await?.into_iter().find(|n| n.node.id == id).ok_or_else(|| ServiceError::Missing(format!("node with id {id}")))
    }
}

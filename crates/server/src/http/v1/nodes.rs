//! `GET /v1/nodes`.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Path, State};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use shepherd_core::{Resources, Timestamp};
use std::collections::{BTreeMap, HashMap};

/// A node and what is placed on it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    /// `ready`, `draining` or `down`.
    pub state: String,
    pub driver: String,
    pub capacity: Resources,
    /// Reserved by scheduled and running tasks.
    pub allocated: Resources,
    pub max_tasks: u32,
    /// Tasks scheduled or running there.
    pub tasks: u32,
    pub labels: BTreeMap<String, String>,
    /// Images the node's engine holds, and `warm=<key>` for each task key it holds an idle warm container of.
    pub images: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub last_heartbeat_at: Timestamp,
}

/// The list of nodes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// Every node with its allocation.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", responses((status = 200, body = NodeList)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<NodeList>, ApiError> {
    caller.require_admin()?;
    let nodes = state.store.list_nodes().await?;
    let mut usage: HashMap<String, (Resources, u32)> = HashMap::new();
    for task in state.store.active_tasks().await? {
        let entry = usage.entry(task.node_id).or_insert((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
        entry.0.cpu_millicores += task.resources.cpu_millicores;
        entry.0.memory_mib += task.resources.memory_mib;
        entry.1 += 1;
    }
    let nodes = nodes
        .into_iter()
        .map(|node| {
            let (allocated, tasks) = usage.remove(&node.id).unwrap_or((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
            NodeView {
                id: node.id,
                hostname: node.hostname,
                state: node.state.as_str().into(),
                driver: node.driver,
                capacity: node.capacity,
                allocated,
                max_tasks: node.max_tasks,
                tasks,
                labels: node.labels,
                images: node.images,
                last_heartbeat_at: node.last_heartbeat_at,
            }
        })
        .collect();
    Ok(Json(NodeList { nodes }))
}

/// Drain a node: no new tasks go there; running ones finish.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "cluster", params(("id" = String, Path, description = "node id")),
    responses((status = 200, body = NodeView), (status = 404, body = crate::http::error::ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    caller.require_admin()?;
    let node = state.store.get_node(&id).await?;
    let Some(node) = node else { return Err(ApiError::not_found(format!("no node with id {id}"))) };
    let to = node
        .state
        .next(shepherd_core::NodeEvent::Drain)
        .map_err(|e| ApiError::new(axum::http::StatusCode::CONFLICT, "not_drainable", e.to_string()))?;
    if !state.store.set_node_state(&id, to).await? {
        return Err(ApiError::not_found(format!("no node with id {id}")));
    }
    state.agents.observer.view.nodes_changed();
    crate::nodes::links::NodeLinks::drain(state.tasks.links.as_ref(), &id);
    tracing::info!(node = %id, "node draining");
    state.audit(&caller, None, "node.drain", &id, None).await;
    let Json(list) = list(State(state), Extension(caller)).await?;
    list.nodes.into_iter().find(|n| n.id == id).map(Json).ok_or_else(|| ApiError::not_found(format!("no node with id {id}")))
}

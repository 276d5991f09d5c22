//! `GET /v1/nodes`.

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::nodes::NodeUse;
use axum::extract::{Path, State};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use shepherd_core::{Resources, Timestamp};
use std::collections::BTreeMap;

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

impl From<NodeUse> for NodeView {
    fn from(u: NodeUse) -> NodeView {
        let node = u.node;
        NodeView {
            id: node.id,
            hostname: node.hostname,
            state: node.state.as_str().into(),
            driver: node.driver,
            capacity: node.capacity,
            allocated: u.allocated,
            max_tasks: node.max_tasks,
            tasks: u.tasks,
            labels: node.labels,
            images: node.images,
            last_heartbeat_at: node.last_heartbeat_at,
        }
    }
}

/// The list of nodes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// Every node with its allocation.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", responses((status = 200, body = NodeList)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<NodeList>, ApiError> {
    let nodes = state.nodes.list(&caller).await?.into_iter().map(NodeView::from).collect();
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
    Ok(Json(state.nodes.drain(&caller, &id).await?.into()))
}

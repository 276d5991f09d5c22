//! `GET /v1/machines` and `GET /v1/autoscale`: provisioned machines and the
//! autoscaled pools (admin only).

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shepherd_core::{MachineShape, MachineState, Timestamp};

/// A machine as the API shows it (its join credential never).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineView {
    pub id: String,
    pub pool: String,
    pub provisioner: String,
    /// The provider's id for it (container id, instance id), once known.
    pub provider_id: Option<String>,
    pub state: MachineState,
    pub shape: MachineShape,
    pub cost: Option<String>,
    /// The node its agent joined as.
    pub node_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When its provider said it was made.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub provisioned_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub joined_at: Option<Timestamp>,
    /// Seconds since it was created.
    pub age_seconds: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The machines.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineList {
    pub machines: Vec<MachineView>,
}

/// The autoscaler: whether it runs here, and each pool.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutoscaleView {
    /// Whether this server was given an autoscale configuration.
    pub enabled: bool,
    /// The id machines are tagged with.
    pub cluster: Option<String>,
    pub pools: Vec<crate::loops::autoscale::PoolStatus>,
}

/// Every provisioned machine.
#[utoipa::path(get, path = "/v1/machines", tag = "cluster", responses((status = 200, body = MachineList)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<MachineList>, ApiError> {
    caller.require_admin()?;
    let now = Timestamp::now();
    let machines = state
        .store
        .machines()
        .await?
        .into_iter()
        .map(|m| MachineView {
            age_seconds: (now.millis().saturating_sub(m.created_at.millis()).max(0) / 1000) as u64,
            id: m.id,
            pool: m.pool,
            provisioner: m.provisioner,
            provider_id: m.provider_id,
            state: m.state,
            shape: m.shape,
            cost: m.cost,
            node_id: m.node_id,
            created_at: m.created_at,
            provisioned_at: m.provisioned_at,
            joined_at: m.joined_at,
            error: m.error,
        })
        .collect();
    Ok(Json(MachineList { machines }))
}

/// The autoscaled pools: configuration, machines by state, failures.
#[utoipa::path(get, path = "/v1/autoscale", tag = "cluster", responses((status = 200, body = AutoscaleView)))]
pub async fn autoscale(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<AutoscaleView>, ApiError> {
    caller.require_admin()?;
    Ok(Json(match &state.autoscaler {
        Some(autoscaler) => {
            AutoscaleView { enabled: true, cluster: Some(autoscaler.cluster().to_string()), pools: autoscaler.status().await? }
        }
        None => AutoscaleView { enabled: false, cluster: None, pools: Vec::new() },
    }))
}

//! # shepherd-provision
//!
//! Machine drivers ("provisioners"): the seam through which the control
//! plane makes, lists and destroys the machines its autoscaled pools grow
//! on, as docker-machine drivers did for Iron.io. A machine is anything
//! that ends up running `shepherd agent`, joined to the cluster with its own
//! join credential: a container on a Docker host ([`docker`]), a cloud
//! instance made by an external program speaking a small JSON protocol
//! ([`exec`]), or nothing but memory ([`fake`], for tests).
//!
//! Not the per-attempt `Driver` of `shepherd-agent`: a provisioner works on
//! whole nodes, is called by the leader's autoscaler only, and never sees a
//! task.
//!
//! Invariants every implementation keeps (checked by [`conformance`]):
//! `create` of a machine id that exists makes nothing new and answers the
//! existing machine's provider id; `destroy` of a machine that is gone
//! succeeds; `list` shows every machine of the cluster it is asked about,
//! each with the machine id it was made for, and none of another cluster's.

pub mod conformance;
pub mod docker;
pub mod exec;
pub mod fake;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shepherd_core::MachineShape;
use std::collections::BTreeMap;

/// What a provisioner is asked to make.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRequest {
    /// The cluster's id: provisioners tag machines with it, and `list` asks by it.
    pub cluster: String,
    /// Shepherd's id for the machine (`m-…`).
    pub machine_id: String,
    pub pool: String,
    pub shape: MachineShape,
    /// The node labels its agent registers with (`pool`, `machine`, the shape's).
    pub labels: BTreeMap<String, String>,
    /// The servers its agent joins (`--join`).
    pub join_urls: Vec<String>,
    /// The machine's own join credential (`--join-token`).
    pub join_token: String,
}

impl std::fmt::Debug for MachineRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineRequest")
            .field("cluster", &self.cluster)
            .field("machine_id", &self.machine_id)
            .field("pool", &self.pool)
            .field("shape", &self.shape)
            .field("labels", &self.labels)
            .field("join_urls", &self.join_urls)
            .field("join_token", &"<hidden>")
            .finish()
    }
}

impl MachineRequest {
    /// The `shepherd agent` arguments that make a machine's agent join as
    /// this machine: servers, size, task limit and labels (the join token
    /// goes in the environment, `SHEPHERD_JOIN_TOKEN`, not the arguments).
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "agent".to_string(),
            "--join".to_string(),
            self.join_urls.join(","),
            "--cpu".to_string(),
            self.shape.cpu_millicores.to_string(),
            "--memory".to_string(),
            self.shape.memory_mib.to_string(),
            "--max-tasks".to_string(),
            self.shape.max_tasks.to_string(),
        ];
        for (key, value) in &self.labels {
            args.push("--node-label".to_string());
            args.push(format!("{key}={value}"));
        }
        args
    }
}

/// A machine as its provider lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMachine {
    /// The id Shepherd made it for.
    pub machine_id: String,
    /// The provider's id (container id, instance id).
    pub provider_id: String,
    /// The pool it was made for, if the provider keeps it.
    #[serde(default)]
    pub pool: Option<String>,
}

/// Why a provisioner call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The provider refused or failed; its message.
    #[error("{0}")]
    Failed(String),
    /// The call took longer than it may.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The provider answered something that is not the protocol.
    #[error("bad answer: {0}")]
    Protocol(String),
    /// The provider could not be reached at all.
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
}

/// Makes, lists and destroys machines. See the crate's invariants.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// The driver's name (`docker`, `exec`, `fake`).
    fn driver(&self) -> &'static str;

    /// Makes the machine (or finds the one made for this machine id);
    /// returns its provider id. Returns once the provider made it, not
    /// once its agent joined.
    async fn create(&self, request: &MachineRequest) -> Result<String, ProvisionError>;

    /// Destroys a machine; one that is gone already is not an error.
    async fn destroy(&self, cluster: &str, machine: &ProviderMachine) -> Result<(), ProvisionError>;

    /// The cluster's machines as the provider knows them.
    async fn list(&self, cluster: &str) -> Result<Vec<ProviderMachine>, ProvisionError>;
}

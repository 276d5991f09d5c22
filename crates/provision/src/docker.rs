//! The `docker` provisioner: a machine is a `shepherd agent` container on a
//! Docker host (`DOCKER_HOST`, or the endpoint configured), made from an
//! image holding the shepherd binary (`scripts/build-shepherd-image.sh`).
//! Good for one large host carved into pools, and for tests.
//!
//! The container is named `shepherd-machine-<machine id>`, so a create
//! repeated after a crash finds the one made before, and is labelled with
//! the cluster, machine and pool, which is how `list` finds it. Its agent
//! runs its tasks with the `docker` driver through the host's engine socket
//! (mounted), or as processes inside itself (`task_driver = "process"`);
//! its data directory lives on the host at the same path inside and out
//! (the engine resolves an attempt's payload and secret mounts on the host).

use crate::{MachineRequest, ProviderMachine, ProvisionError, Provisioner};
use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Label: the cluster a machine belongs to.
pub const LABEL_CLUSTER: &str = "io.shepherd.cluster";
/// Label: the machine id a container was made for.
pub const LABEL_MACHINE: &str = "io.shepherd.machine";
/// Label: the machine's pool.
pub const LABEL_POOL: &str = "io.shepherd.pool";

/// Settings of the `docker` provisioner (`[provisioners.NAME]` with
/// `driver = "docker"` in the autoscale configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerProvisionerConfig {
    /// The engine to make machines on (`unix:///…`, `tcp://…`); default
    /// `DOCKER_HOST`, else the local socket.
    #[serde(default)]
    pub docker_host: Option<String>,
    /// The image with the shepherd binary as its entrypoint.
    #[serde(default = "default_image")]
    pub image: String,
    /// The machines' network (`host` reaches a server on the host's loopback).
    #[serde(default = "default_network")]
    pub network: String,
    /// How the machines' agents run tasks: `docker` (through the host's
    /// engine, whose socket is mounted) or `process`.
    #[serde(default = "default_task_driver")]
    pub task_driver: String,
    /// The host's engine socket, mounted into machines with the docker task driver.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where the machines' data directories go on the host (one per
    /// machine, at the same path inside); default `DATA_DIR/machines`.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// More `shepherd agent` arguments (e.g. `["--stop-grace", "2s"]`).
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// More environment for the agents (e.g. `SHEPHERD_LOG=debug`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

fn default_image() -> String {
    "shepherd:latest".into()
}
fn default_network() -> String {
    "host".into()
}
fn default_task_driver() -> String {
    "docker".into()
}
fn default_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}

impl Default for DockerProvisionerConfig {
    fn default() -> Self {
        DockerProvisionerConfig {
            docker_host: None,
            image: default_image(),
            network: default_network(),
            task_driver: default_task_driver(),
            socket: default_socket(),
            data_root: None,
            agent_args: Vec::new(),
            env: Default::default(),
        }
    }
}

/// Machines as containers on one Docker Engine.
pub struct DockerProvisioner {
    docker: Docker,
    config: DockerProvisionerConfig,
    data_root: PathBuf,
}

fn engine(context: &str, e: bollard::errors::Error) -> ProvisionError {
    ProvisionError::Failed(format!("{context}: {e}"))
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The container of a machine.
pub fn container_name(machine_id: &str) -> String {
    format!("shepherd-machine-{machine_id}")
}

impl DockerProvisioner {
    /// Connects to the engine (negotiating its API version); `data_root`
    /// is used when the configuration names none.
    pub async fn connect(config: DockerProvisionerConfig, data_root: PathBuf) -> Result<DockerProvisioner, ProvisionError> {
        let docker = match &config.docker_host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| ProvisionError::Unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| ProvisionError::Timeout(Duration::from_secs(5)))?
            .map_err(|e| ProvisionError::Unreachable(e.to_string()))?;
        if !matches!(config.task_driver.as_str(), "docker" | "process") {
            return Err(ProvisionError::Failed(format!("task_driver `{}`: use docker or process", config.task_driver)));
        }
        let data_root = config.data_root.clone().unwrap_or(data_root);
        Ok(DockerProvisioner { docker, config, data_root })
    }

    fn data_dir(&self, machine_id: &str) -> PathBuf {
        self.data_root.join(machine_id)
    }

    fn body(&self, request: &MachineRequest, data_dir: &str) -> ContainerCreateBody {
        let mut cmd = request.agent_args();
        cmd.extend(["--data-dir".to_string(), data_dir.to_string(), "--driver".to_string(), self.config.task_driver.clone()]);
        cmd.extend(self.config.agent_args.iter().cloned());
        let mut env = vec![format!("SHEPHERD_JOIN_TOKEN={}", request.join_token)];
        env.extend(self.config.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut binds = vec![format!("{data_dir}:{data_dir}")];
        if self.config.task_driver == "docker" {
            let socket = self.config.socket.display().to_string();
            binds.push(format!("{socket}:/var/run/docker.sock"));
        }
        let labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), request.cluster.clone()),
            (LABEL_MACHINE.to_string(), request.machine_id.clone()),
            (LABEL_POOL.to_string(), request.pool.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(self.config.network.clone()),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[async_trait]
impl Provisioner for DockerProvisioner {
    fn driver(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, request: &MachineRequest) -> Result<String, ProvisionError> {
        let name = container_name(&request.machine_id);
        let data_dir = self.data_dir(&request.machine_id);
        std::fs::create_dir_all(&data_dir).map_err(|e| ProvisionError::Failed(format!("{}: {e}", data_dir.display())))?;
        let body = self.body(request, &data_dir.display().to_string());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            // Made before (a create repeated after a crash): that one.
            Err(e) if status(&e) == Some(409) => {
                let info =
                    self.docker.inspect_container(&name, None::<InspectContainerOptions>).await.map_err(|e| engine("inspecting", e))?;
                let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
                if labels.get(LABEL_CLUSTER) != Some(&request.cluster) {
                    return Err(ProvisionError::Failed(format!("a container named {name} belongs to another cluster")));
                }
                info.id.unwrap_or_default()
            }
            Err(e) => return Err(engine("creating the machine's container", e)),
        };
        match self.docker.start_container(&id, None).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(304) => {}
            Err(e) => return Err(engine("starting the machine's container", e)),
        }
        tracing::info!(machine = %request.machine_id, container = %id, "machine container started");
        Ok(id)
    }

    async fn destroy(&self, _cluster: &str, machine: &ProviderMachine) -> Result<(), ProvisionError> {
        let target = if machine.provider_id.is_empty() { container_name(&machine.machine_id) } else { machine.provider_id.clone() };
        // SIGTERM first: the agent stops cleanly (its node is drained and empty).
        let stop = StopContainerOptionsBuilder::default().t(20).build();
        match self.docker.stop_container(&target, Some(stop)).await {
            Ok(()) => {}
            Err(e) if matches!(status(&e), Some(304 | 404)) => {}
            Err(e) => return Err(engine("stopping the machine's container", e)),
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(&target, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(engine("removing the machine's container", e)),
        }
        let data_dir = self.data_dir(&machine.machine_id);
        if let Err(e) = std::fs::remove_dir_all(&data_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %data_dir.display(), error = %e, "could not remove a destroyed machine's data directory");
            }
        }
        Ok(())
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ProviderMachine>, ProvisionError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_CLUSTER}={cluster}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(|e| engine("listing machines", e))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(ProviderMachine {
                    machine_id: labels.get(LABEL_MACHINE)?.clone(),
                    provider_id: c.id?,
                    pool: labels.get(LABEL_POOL).cloned(),
                })
            })
            .collect())
    }
}

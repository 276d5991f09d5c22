//! The `docker` driver: every attempt is a hardened container, created,
//! started, followed and removed through the Docker Engine API (bollard,
//! over the unix socket; `DOCKER_HOST` honoured; API version negotiated).
//!
//! The command runs under the engine's init (`docker run --init`), so
//! signals reach it. Security defaults a task cannot turn off: all capabilities dropped,
//! `no-new-privileges`, a read-only root filesystem with a writable tmpfs at
//! `/tmp`, never privileged, no host mounts (only Shepherd's own read-only
//! payload file), no host network or pid namespace, a pids limit, memory
//! without swap, and network `none` unless the task asks for `bridge`.
//!
//! Every container is named `shepherd-<task>-<attempt>` and labelled with
//! the task id, attempt and node id, so an agent that restarts can find and
//! adopt its attempts, and remove what it no longer owns.
//!
//! Files: this one holds the driver's settings, its state and its
//! connection; `lifecycle` its side of the [`Driver`] seam; `create` the
//! container's create body; `pulls` its image (pulls, access, digests);
//! `networks` and `volumes` a project's; `output` attaching and replaying
//! the log; `attempt` a started container. What warm containers share with
//! cold ones is in `driver::container` and `driver::engine`.

mod attempt;
mod create;
mod lifecycle;
mod networks;
mod output;
mod pulls;
mod volumes;

pub use super::container::{
    container_name, LABEL_ATTEMPT, LABEL_GPUS, LABEL_NODE, LABEL_PROJECT, LABEL_TASK, LABEL_VOLUME, PACKAGE_PATH, PAYLOAD_PATH,
    SECRETS_PATH,
};

use super::engine::{engine_error, is_status};
use super::seam::Driver;
use super::spec::DriverError;
use bollard::Docker;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the docker driver.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub node_id: String,
    /// Most processes a container may have (contains fork bombs).
    pub pids_limit: i64,
    /// Size of the writable tmpfs at /tmp.
    pub tmp_size_mib: u32,
    /// Warm containers for tasks that ask for `reuse`; without, they run cold.
    pub warm: Option<super::warm::WarmConfig>,
    /// Host devices the node offers (`--device`).
    pub devices: Vec<super::devices::HostDevice>,
    /// GPUs the node offers (`--gpus`), granted by index.
    pub gpus: u32,
    /// When to remove images this node pulled and no longer uses (`None`: never).
    pub image_cleanup: Option<super::images::ImageCleanup>,
    /// One pull per image and login at a time (false: every attempt that
    /// misses the image pulls it itself; for benchmarks only).
    pub pull_dedup: bool,
    /// Where the record of which projects may run which pulled images is
    /// kept across restarts ([`super::access`]).
    pub access_file: Option<std::path::PathBuf>,
    /// Every start of an image a project pulled with its login pulls it
    /// again with the starting task's own login (the registry decides,
    /// each time, as Kubernetes' AlwaysPullImages).
    pub verify_images: bool,
}

impl DockerConfig {
    /// The defaults: 256 processes, 64 MiB of /tmp, no warm containers.
    pub fn new(node_id: impl Into<String>) -> DockerConfig {
        DockerConfig {
            node_id: node_id.into(),
            pids_limit: 256,
            tmp_size_mib: 64,
            warm: None,
            devices: Vec::new(),
            gpus: 0,
            image_cleanup: None,
            pull_dedup: true,
            access_file: None,
            verify_images: false,
        }
    }
}

/// Why the driver could not reach the Docker Engine. (The cause is part of
/// the message, not a separate source: a chain says it once.)
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to Docker: {0}")]
    Client(bollard::errors::Error),
    #[error("the Docker Engine did not answer within 5 s")]
    Timeout,
    #[error("the Docker Engine did not answer: {0}")]
    NoAnswer(bollard::errors::Error),
}

/// Runs attempts as containers on one Docker Engine.
pub struct DockerDriver {
    docker: Docker,
    config: DockerConfig,
    /// Project networks known to exist.
    networks: tokio::sync::Mutex<std::collections::HashSet<String>>,
    /// Warm containers, if enabled.
    warm: Option<Arc<super::warm::Pool>>,
    /// Which GPUs are free.
    gpus: Arc<super::devices::GpuSlots>,
    /// Pulls in flight, one per image and login.
    pulls: super::pull::SingleFlight<super::pull::PullKey, Result<(), String>>,
    /// How far each pull in flight got (percent), for the attempts waiting on it.
    pull_progress: Arc<std::sync::Mutex<std::collections::HashMap<super::pull::PullKey, tokio::sync::watch::Receiver<u8>>>>,
    /// The images this agent pulled, and when a task last used each: what
    /// the image cleanup may remove.
    image_use: Arc<super::images::ImageUse>,
    /// What each image reference resolved to lately (forgotten when it is
    /// pulled again): the attempts' record of it, and the engine's id.
    digests: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, ImageFacts)>>,
    /// Which projects may run which pulled images.
    access: Arc<super::access::ImageAccess>,
    /// Containers of attempts this driver started and has not removed yet
    /// (named before the engine makes them): never orphans.
    made: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// What an image reference resolved to.
#[derive(Debug, Clone)]
struct ImageFacts {
    /// What an attempt records as the image it ran.
    digest: String,
    /// The engine's image id.
    id: String,
}

impl DockerDriver {
    /// Connects to the engine (`DOCKER_HOST` or the default socket), checks
    /// that it answers, and negotiates the API version.
    pub async fn connect(config: DockerConfig) -> Result<DockerDriver, ConnectError> {
        let docker = Docker::connect_with_defaults().map_err(ConnectError::Client)?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::NoAnswer)?;
        docker.ping().await.map_err(ConnectError::NoAnswer)?;
        let warm = config
            .warm
            .clone()
            .map(|warm| super::warm::Pool::new(docker.clone(), config.node_id.clone(), warm, config.pids_limit, config.tmp_size_mib));
        let gpus = Arc::new(super::devices::GpuSlots::new(config.gpus));
        let image_use = Arc::new(super::images::ImageUse::load(config.image_cleanup.as_ref().and_then(|c| c.state_file.clone())));
        let access = Arc::new(super::access::ImageAccess::load(config.access_file.clone()));
        Ok(DockerDriver {
            access,
            made: Default::default(),
            docker,
            config,
            networks: Default::default(),
            warm,
            gpus,
            pulls: Default::default(),
            pull_progress: Default::default(),
            image_use,
            digests: Default::default(),
        })
    }

    /// Removes every container and network carrying this node's label
    /// (`shepherd node cleanup`, for a node that will not start again).
    /// A network still used by another node's containers is kept. Returns
    /// how many containers and networks were removed.
    pub async fn cleanup(&self) -> Result<(usize, usize), DriverError> {
        let containers = self.remove_orphans(&[]).await?;
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={}", self.config.node_id)])]);
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = self.docker.list_networks(Some(options)).await.map_err(|e| engine_error("listing networks", e))?;
        let mut removed = 0;
        for network in networks {
            let Some(name) = network.name else { continue };
            match self.docker.remove_network(&name).await {
                Ok(()) => removed += 1,
                Err(e) if is_status(&e, &[404]) => {}
                Err(e) if is_status(&e, &[403, 409]) => tracing::info!(network = %name, "network still in use; kept"),
                Err(e) => return Err(engine_error("removing a network", e)),
            }
        }
        Ok((containers, removed))
    }

    /// The engine client, for tests and benchmarks that need the raw engine.
    pub fn engine(&self) -> &Docker {
        &self.docker
    }
}

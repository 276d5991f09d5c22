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

use super::*;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Label keys on every container Shepherd creates.
pub const LABEL_TASK: &str = "io.shepherd.task";
pub const LABEL_ATTEMPT: &str = "io.shepherd.attempt";
pub const LABEL_NODE: &str = "io.shepherd.node";
/// Label key on the networks Shepherd creates: the project.
pub const LABEL_PROJECT: &str = "io.shepherd.project";
/// Label key on the volumes Shepherd makes: the volume's name in its project.
pub const LABEL_VOLUME: &str = "io.shepherd.volume";
/// Label key on a task container: the GPUs granted to it, comma-separated.
pub const LABEL_GPUS: &str = "io.shepherd.gpus";

/// Where the payload file appears inside the container.
pub const PAYLOAD_PATH: &str = "/run/shepherd/payload";

/// Where the secrets directory appears inside the container.
pub const SECRETS_PATH: &str = "/run/secrets";
/// Where a task's code package is mounted, read-only.
pub const PACKAGE_PATH: &str = "/task";

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

/// How long an image reference's digest is reused before the engine is
/// asked again (a tag moved by hand is seen at most this late; a pull by
/// this agent is seen at once).
const DIGEST_FOR: Duration = Duration::from_secs(2);

pub(super) fn engine_error(context: &str, e: bollard::errors::Error) -> DriverError {
    DriverError::Io(std::io::Error::other(format!("{context}: {e}")))
}

/// The engine's message of an error (its own words, or a registry's
/// relayed in a pull's stream, for a task's reason).
pub(super) fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

pub(super) fn is_status(e: &bollard::errors::Error, codes: &[u16]) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// The engine's answer to creating a container from an image it lacks.
fn is_missing_image(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, message } if message.contains("No such image"))
}

/// The container name of one attempt.
pub fn container_name(task_id: TaskId, attempt: u32) -> String {
    format!("shepherd-{}-{attempt}", task_id.to_string().to_lowercase())
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

    /// Creates the project's network unless it exists. Serialized, so that
    /// two starts never both create it (older engines allow duplicate names).
    async fn ensure_network(&self, project: &str) -> Result<(), DriverError> {
        let network = shepherd_core::ResolvedNetwork {
            engine_name: super::project_network(project),
            project: project.to_string(),
            driver: "bridge".into(),
            options: Default::default(),
            internal: false,
        };
        self.ensure_resolved_network(&network).await
    }

    /// Creates a network of a project's policy unless it exists (with its
    /// driver, options and `internal`). One that exists must be the
    /// project's: a network of another project's is never joined.
    async fn ensure_resolved_network(&self, network: &shepherd_core::ResolvedNetwork) -> Result<(), DriverError> {
        let name = network.engine_name.clone();
        let project = network.project.as_str();
        let mut known = self.networks.lock().await;
        if known.contains(&name) {
            return Ok(());
        }
        match self.docker.inspect_network(&name, None).await {
            Ok(found) => {
                let owner = found.labels.as_ref().and_then(|l| l.get(LABEL_PROJECT));
                if owner.is_some_and(|o| o != project) {
                    return Err(DriverError::StartFailed(format!("network {name} belongs to another project")));
                }
            }
            Err(e) if is_status(&e, &[404]) => {
                let request = bollard::models::NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some(network.driver.clone()),
                    internal: Some(network.internal),
                    options: (!network.options.is_empty()).then(|| network.options.clone().into_iter().collect()),
                    labels: Some(HashMap::from([
                        (LABEL_PROJECT.to_string(), project.to_string()),
                        (LABEL_NODE.to_string(), self.config.node_id.clone()),
                    ])),
                    ..Default::default()
                };
                self.docker.create_network(request).await.map_err(|e| engine_error("creating the project network", e))?;
                tracing::info!(network = %name, driver = %network.driver, internal = network.internal, "created a project network");
            }
            Err(e) => return Err(engine_error("inspecting the project network", e)),
        }
        known.insert(name);
        Ok(())
    }

    /// Makes a project volume on this engine unless it exists, with its
    /// driver, options and Shepherd's labels. One that exists must carry
    /// the same project: a volume of another project's is never mounted.
    ///
    /// A `local` volume's options are checked again here, before the engine
    /// sees them (the allow-list of [`shepherd_core::volume_options`]): a
    /// volume stored by an older version, or options that reached the node
    /// some other way, never mount the host's files. An existing engine
    /// volume is checked as the engine made it.
    async fn ensure_volume(&self, volume: &shepherd_core::ResolvedMount) -> Result<(), DriverError> {
        use shepherd_core::volume_options::{check_local, NfsServers};
        let refuse = |what: &str, e: shepherd_core::FieldError| {
            DriverError::StartFailed(format!("volume {} {what}: {}; refusing to mount it", volume.name, e.message))
        };
        if volume.driver == "local" {
            check_local(&volume.options, NfsServers::AnyLiteral).map_err(|e| refuse("has options a node never mounts", e))?;
        }
        match self.docker.inspect_volume(&volume.engine_name).await {
            Ok(found) => {
                if found.labels.get(LABEL_PROJECT) != Some(&volume.project) {
                    return Err(DriverError::StartFailed(format!(
                        "the engine's volume {} is not project {}'s: refusing to mount it",
                        volume.engine_name, volume.project
                    )));
                }
                if found.driver == "local" {
                    let options: std::collections::BTreeMap<String, String> = found.options.into_iter().collect();
                    check_local(&options, NfsServers::AnyLiteral)
                        .map_err(|e| refuse("on the engine has options a node never mounts", e))?;
                }
                Ok(())
            }
            Err(e) if is_status(&e, &[404]) => {
                let request = bollard::models::VolumeCreateRequest {
                    name: Some(volume.engine_name.clone()),
                    driver: Some(volume.driver.clone()),
                    driver_opts: (!volume.options.is_empty()).then(|| volume.options.clone().into_iter().collect()),
                    labels: Some(HashMap::from([
                        (LABEL_PROJECT.to_string(), volume.project.clone()),
                        (LABEL_VOLUME.to_string(), volume.name.clone()),
                    ])),
                    ..Default::default()
                };
                // Made at once by two starts: the engine answers both with the one volume.
                self.docker
                    .create_volume(request)
                    .await
                    .map_err(|e| DriverError::StartFailed(format!("could not make volume {}: {}", volume.name, engine_message(&e))))?;
                tracing::info!(volume = %volume.engine_name, driver = %volume.driver, "made a project volume");
                Ok(())
            }
            Err(e) => Err(engine_error("inspecting a volume", e)),
        }
    }

    /// Pulls an image with the attempt's login and deadline: one pull per
    /// image and login on this node at a time (the others wait for it).
    /// With `skip_if_present`, an image that arrived meanwhile is not pulled.
    async fn pull(&self, spec: &AttemptSpec, skip_if_present: bool) -> Result<(), String> {
        self.pull_image(
            &spec.image,
            Some(&spec.project),
            spec.registry_auth.clone(),
            spec.pull_timeout,
            skip_if_present,
            spec.progress.as_ref(),
        )
        .await
    }

    /// A task runs a local copy of its image only if its project may
    /// ([`super::access`]): an image another project pulled with its login
    /// is pulled again with this task's own (or without, if its project
    /// has none), whatever its pull policy; a pull the registry refuses
    /// fails the attempt. With `verify_images`, every start of such an
    /// image asks the registry again.
    async fn check_image_access(&self, spec: &AttemptSpec) -> Result<(), DriverError> {
        if !self.access.any_restricted() {
            return Ok(());
        }
        let Some(facts) = self.image_facts(&spec.image).await else { return Ok(()) }; // missing: the create pulls it
        if !self.access.is_restricted(&facts.id) {
            return Ok(());
        }
        let allowed = self.access.allows(&facts.id, &spec.project);
        if allowed && !self.config.verify_images {
            return Ok(());
        }
        // The registry decides: asked with this project's own login (or
        // none), never answered from the node's copy (a pull by digest of
        // an image the engine holds would not ask it).
        let served =
            super::pull::registry_digest(&self.docker, &spec.image, spec.registry_auth.clone(), spec.pull_timeout).await.map_err(|e| {
                DriverError::StartFailed(format!(
                    "{e} (the copy on this node was pulled with another project's login: a project pulls it itself)"
                ))
            })?;
        if facts.digest == format!("{}@{served}", super::pull::repository(&spec.image)) {
            // The node's copy is what the registry serves this project.
            self.access.pulled(&facts.id, spec.registry_auth.as_ref().map(|_| spec.project.as_str()));
            return Ok(());
        }
        // The tag moved: pulled as it is now, with this project's login.
        if spec.pull_policy == PullPolicy::Never {
            return Err(DriverError::StartFailed(format!(
                "image_pull_failed: {}: the registry serves another image than this node's copy (pull policy never)",
                spec.image
            )));
        }
        self.pull(spec, false).await.map_err(DriverError::StartFailed)?;
        match self.image_facts(&spec.image).await {
            Some(now) if self.access.allows(&now.id, &spec.project) => Ok(()),
            _ => {
                Err(DriverError::StartFailed(format!("image_pull_failed: {}: this project may not run the copy on this node", spec.image)))
            }
        }
    }

    /// Pulls `image` with `auth` within `deadline` (see [`Self::pull`]),
    /// telling `progress` how far the pull got, twice a second at most.
    async fn pull_image(
        &self,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        deadline: Duration,
        skip_if_present: bool,
        progress: Option<&super::ProgressSink>,
    ) -> Result<(), String> {
        let key = super::pull::pull_key(image, auth.as_ref());
        let with_login = auth.is_some();
        let work = {
            let (docker, image, key, percents) = (self.docker.clone(), image.to_string(), key.clone(), self.pull_progress.clone());
            let image_use = self.image_use.clone();
            move || async move {
                if skip_if_present && docker.inspect_image(&image).await.is_ok() {
                    return Ok(());
                }
                let (tx, rx) = tokio::sync::watch::channel(0u8);
                percents.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), rx);
                let pulled = super::pull::pull(docker, image.clone(), auth, deadline, move |percent| {
                    tx.send_replace(percent);
                })
                .await;
                percents.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                if pulled.is_ok() {
                    image_use.pulled(&image);
                }
                pulled
            }
        };
        let flight = async {
            if self.config.pull_dedup {
                self.pulls.run(key.clone(), work, Err("image_pull_failed: the pull stopped".into())).await
            } else {
                work().await
            }
        };
        let pulled = match progress {
            None => flight.await,
            Some(sink) => {
                let watch = async {
                    let mut last = None;
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let percent = self.pull_progress.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|rx| *rx.borrow());
                        if let Some(percent) = percent.filter(|p| last != Some(*p)) {
                            last = Some(percent);
                            if let Ok(report) = shepherd_core::Progress::new(f64::from(percent), format!("pulling image: {percent}%")) {
                                sink(report);
                            }
                        }
                    }
                };
                tokio::select! {
                    pulled = flight => pulled,
                    _ = watch => Err("image_pull_failed: the pull stopped".into()),
                }
            }
        };
        self.digests.lock().unwrap_or_else(|e| e.into_inner()).remove(image);
        if pulled.is_ok() {
            // Whose it is now: the project whose login pulled it; anyone's
            // after a pull by tag without a login (the engine asked the
            // registry, which served it to anyone). A pull by digest of an
            // image the engine holds asks nobody: it proves nothing.
            match (self.image_facts(image).await, with_login) {
                (Some(facts), true) => self.access.pulled(&facts.id, project),
                (Some(facts), false) if !image.contains('@') => self.access.pulled(&facts.id, None),
                (Some(_), false) => {}
                (None, _) => tracing::warn!(image, "pulled an image the engine then could not find"),
            }
        }
        pulled
    }

    /// What `image` resolves to on the engine now (at most [`DIGEST_FOR`]
    /// old); `None` if the engine lacks it or cannot say.
    async fn image_facts(&self, image: &str) -> Option<ImageFacts> {
        let cached = self.digests.lock().unwrap_or_else(|e| e.into_inner()).get(image).cloned();
        if let Some((at, facts)) = cached {
            if at.elapsed() < DIGEST_FOR {
                return Some(facts);
            }
        }
        let started = std::time::Instant::now();
        let inspected = crate::metrics::metrics().time("inspect_image", started, self.docker.inspect_image(image).await).ok()?;
        let facts = ImageFacts { digest: super::pull::image_digest(image, &inspected), id: inspected.id.clone()? };
        self.digests.lock().unwrap_or_else(|e| e.into_inner()).insert(image.to_string(), (std::time::Instant::now(), facts.clone()));
        Some(facts)
    }

    /// What an attempt of `image` records as the image it ran
    /// ([`super::pull::image_digest`]); `None` if the engine cannot say.
    async fn image_digest(&self, image: &str) -> Option<String> {
        self.image_facts(image).await.map(|f| f.digest)
    }

    /// Creates the attempt's container, replacing one left over from an
    /// interrupted start. The image is not checked first: the engine says
    /// when it is missing, which saves a call on every start.
    async fn create(&self, name: &str, spec: &AttemptSpec) -> Result<(), bollard::errors::Error> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let started = std::time::Instant::now();
        let created = self.docker.create_container(Some(options), self.container_body(spec)).await;
        match crate::metrics::metrics().time("create", started, created) {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[409]) => {
                let _ = self.docker.remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                let options = CreateContainerOptionsBuilder::default().name(name).build();
                self.docker.create_container(Some(options), self.container_body(spec)).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the container, pulling the image as the pull policy says:
    /// `always` pulls first, with the project's own login, and a pull that
    /// fails fails the attempt (a copy another project pulled is never
    /// used instead); `if_not_present` pulls when the engine lacks the
    /// image; `never` fails at once. Failed pulls say `image_pull_failed`.
    async fn create_with_image(&self, name: &str, spec: &AttemptSpec) -> Result<(), DriverError> {
        let image = spec.image.as_str();
        if spec.pull_policy == PullPolicy::Always {
            self.pull(spec, false).await.map_err(DriverError::StartFailed)?;
        }
        let created = match self.create(name, spec).await {
            Err(e) if is_missing_image(&e) => match spec.pull_policy {
                PullPolicy::Never => {
                    return Err(DriverError::StartFailed(format!("image `{image}` is not on this node (pull policy: never)")))
                }
                // Pulled just now, and gone again (removed meanwhile): pulled again.
                PullPolicy::Always | PullPolicy::IfNotPresent => {
                    self.pull(spec, spec.pull_policy == PullPolicy::IfNotPresent).await.map_err(DriverError::StartFailed)?;
                    self.create(name, spec).await
                }
            },
            other => other,
        };
        match created {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[400, 404]) => Err(DriverError::StartFailed(format!("could not create the container: {e}"))),
            Err(e) => Err(engine_error("creating the container", e)),
        }
    }

    /// The create body of an attempt's container: the hardened defaults, the
    /// task's limits, env and labels. Public so benchmarks compare like with like.
    pub fn container_body(&self, spec: &AttemptSpec) -> ContainerCreateBody {
        let env: Vec<String> = task_env(spec).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut binds = Vec::new();
        if let Some(file) = &spec.payload_file {
            binds.push(format!("{}:{PAYLOAD_PATH}:ro", file.display()));
        }
        if let Some(dir) = &spec.secrets_dir {
            binds.push(format!("{}:{SECRETS_PATH}:ro", dir.display()));
        }
        if let Some(dir) = &spec.package_dir {
            binds.push(format!("{}:{PACKAGE_PATH}:ro", dir.display()));
        }
        let mut labels = HashMap::from([
            (LABEL_TASK.to_string(), spec.task_id.to_string()),
            (LABEL_ATTEMPT.to_string(), spec.attempt.to_string()),
            (LABEL_NODE.to_string(), self.config.node_id.clone()),
        ]);
        if !spec.gpu_ids.is_empty() {
            labels.insert(LABEL_GPUS.to_string(), spec.gpu_ids.join(","));
        }
        let mut host_config = HostConfig {
            // A tiny init (the engine's docker-init) as PID 1: signals reach
            // the command (a cancel's SIGTERM ends `sleep` at once instead of
            // after the grace period) and zombies are reaped.
            init: Some(true),
            binds: (!binds.is_empty()).then_some(binds),
            ..hardened_host_config(spec, self.config.pids_limit, self.config.tmp_size_mib)
        };
        if !spec.volumes.is_empty() {
            host_config.mounts = Some(
                spec.volumes
                    .iter()
                    .map(|v| bollard::models::Mount {
                        typ: Some(bollard::models::MountType::VOLUME),
                        source: Some(v.engine_name.clone()),
                        target: Some(v.target.clone()),
                        read_only: Some(v.read_only),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        if let Some(first) = spec.networks.first() {
            host_config.network_mode = Some(first.engine_name.clone());
        }
        // Only the devices and GPUs granted to this attempt.
        let devices: Vec<_> =
            spec.devices.iter().filter_map(|name| self.config.devices.iter().find(|d| &d.name == name)).map(|d| d.mapping()).collect();
        if !devices.is_empty() {
            host_config.devices = Some(devices);
        }
        let gpus = super::devices::gpu_request(&spec.gpu_ids);
        if !gpus.is_empty() {
            host_config.device_requests = Some(gpus);
        }
        if let (Some(scratch), Some(tmpfs)) = (&spec.scratch, host_config.tmpfs.as_mut()) {
            // Gone with the container. Owned by the task's user when it is
            // numeric (the engine ignores a mode: a new mountpoint is root's 0755).
            tmpfs.insert(scratch.target.clone(), scratch_options(scratch.size_mib, spec.user.as_deref()));
        }
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            working_dir: spec.workdir.clone(),
            user: spec.user.clone(),
            network_disabled: Some(spec.network != "bridge" && spec.networks.is_empty()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Attaches to a container's output. Attaching before `start` (as
    /// `docker run` does) sees every byte; the stream ends once the container
    /// has exited and its output is drained.
    async fn attach(&self, container: &str, output: OutputSender) -> Result<(), bollard::errors::Error> {
        let started = std::time::Instant::now();
        crate::metrics::metrics().time("attach", started, attach(&self.docker, container, output).await)
    }
}

/// What every task container gets, cold or warm: all capabilities
/// dropped, no-new-privileges, a read-only root with a tmpfs at /tmp, never
/// privileged, the pids limit, the task's CPU and memory (no swap), and its
/// project's network or none.
pub(super) fn hardened_host_config(spec: &AttemptSpec, pids_limit: i64, tmp_size_mib: u32) -> HostConfig {
    let network = if spec.network == "bridge" { super::project_network(&spec.project) } else { "none".to_string() };
    let memory = i64::from(spec.resources.memory_mib) * 1024 * 1024;
    HostConfig {
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(i64::from(spec.resources.cpu_millicores) * 1_000_000),
        pids_limit: Some(pids_limit),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), tmpfs_options(tmp_size_mib))])),
        privileged: Some(false),
        network_mode: Some(network),
        ..Default::default()
    }
}

/// The mount options of a task's scratch tmpfs: its size, and its owner
/// when the task's user is numeric (`1000` or `1000:1000`).
fn scratch_options(size_mib: u32, user: Option<&str>) -> String {
    let mut options = tmpfs_options(size_mib);
    if let Some(user) = user {
        let (uid, gid) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
        if uid.parse::<u32>().is_ok() {
            options.push_str(&format!(",uid={uid}"));
        }
        if let Some(gid) = gid.filter(|g| g.parse::<u32>().is_ok()) {
            options.push_str(&format!(",gid={gid}"));
        }
    }
    options
}

/// The mount options of a task's tmpfs of `size_mib`.
pub(super) fn tmpfs_options(size_mib: u32) -> String {
    format!("rw,nosuid,nodev,size={size_mib}m")
}

/// The environment Shepherd gives a task's container, warm or cold: the
/// task's own, then where it runs and where its payload and secrets are.
pub(super) fn task_env(spec: &AttemptSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("SHEPHERD_TASK_ID".into(), spec.task_id.to_string()));
    env.push(("SHEPHERD_ATTEMPT".into(), spec.attempt.to_string()));
    env.push(("SHEPHERD_NODE_ID".into(), spec.node_id.clone()));
    if spec.payload_file.is_some() {
        env.push(("SHEPHERD_PAYLOAD_FILE".into(), PAYLOAD_PATH.into()));
    }
    if spec.secrets_dir.is_some() {
        env.push(("SHEPHERD_SECRETS_DIR".into(), SECRETS_PATH.into()));
    }
    if spec.package_dir.is_some() {
        env.push(("SHEPHERD_TASK_DIR".into(), PACKAGE_PATH.into()));
    }
    if let Some(scratch) = &spec.scratch {
        env.push(("SHEPHERD_SCRATCH_DIR".into(), scratch.target.clone()));
    }
    env
}

/// Attaches to a container's output (see [`DockerDriver::attach`]).
async fn attach(docker: &Docker, container: &str, output: OutputSender) -> Result<(), bollard::errors::Error> {
    let options = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).logs(false).build();
    let mut attached = docker.attach_container(container, Some(options)).await?.output;
    tokio::spawn(async move {
        while let Some(item) = attached.next().await {
            let (stream, message) = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => (LogStream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(_) => break,
            };
            if output.send(OutputChunk { stream, data: message.to_vec() }).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// A time as the engine writes it (RFC 3339 with nanoseconds); `None` for
/// its "never" (`0001-01-01T00:00:00Z`) or anything unreadable.
fn engine_time(text: &str) -> Option<Timestamp> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let millis = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Timestamp(i64::try_from(millis).ok()?)).filter(|t| t.millis() > 0)
}

/// Streams a container's log from its start (following it while it runs),
/// leaving out the first bytes of each stream that were captured already.
/// If the engine keeps no log for it, says so in the output and, for a
/// running container, follows from now on.
fn replay(docker: Docker, container: String, output: OutputSender, captured: Captured, running: bool) {
    tokio::spawn(async move {
        let options = bollard::query_parameters::LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
        let mut log = docker.logs(&container, Some(options));
        let mut skip = captured;
        let mut first = true;
        while let Some(item) = log.next().await {
            let (stream, mut data) = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => (LogStream::Stdout, message.to_vec()),
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message.to_vec()),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) if first => {
                    tracing::warn!(%container, error = %e, "cannot read the container's log back; following from now on");
                    let note = "\n[shepherd: output written while no agent watched this task could not be read back from the engine and is missing]\n";
                    let _ = output.send(OutputChunk { stream: LogStream::System, data: note.as_bytes().to_vec() }).await;
                    if running {
                        if let Err(e) = attach(&docker, &container, output).await {
                            tracing::warn!(%container, error = %e, "cannot attach to the container");
                        }
                    }
                    return;
                }
                Err(_) => return,
            };
            first = false;
            let left = if stream == LogStream::Stderr { &mut skip.stderr } else { &mut skip.stdout };
            let dropped = (*left).min(data.len() as u64);
            *left -= dropped;
            data.drain(..dropped as usize);
            if !data.is_empty() && output.send(OutputChunk { stream, data }).await.is_err() {
                return;
            }
        }
    });
}

/// `name:tag` → (`name`, `tag`); a digest or no tag means `latest` is not added.
/// Whether the engine's event log holds an `oom` event for container `name`
/// since `since` (Unix seconds, fractions allowed) until now.
pub(super) async fn oom_event_logged(docker: &Docker, name: &str, since: &str) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let filters = HashMap::from([("container".to_string(), vec![name.to_string()]), ("event".to_string(), vec!["oom".to_string()])]);
    let options = bollard::query_parameters::EventsOptionsBuilder::default()
        .since(since)
        .until(&format!("{}.{:09}", now.as_secs(), now.subsec_nanos()))
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));

    let found = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(event) = events.next().await {
            match event {
                Ok(event) if event.action.as_deref() == Some("oom") => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(container = %name, error = %e, "cannot read the engine's events");
                    return false;
                }
            }
        }
        false
    })
    .await;
    found.unwrap_or(false)
}

/// A running (or finished) container.
struct ContainerAttempt {
    docker: Docker,
    name: String,
    removed: bool,
    /// Shepherd sent it SIGKILL (timeout, cancel): a 137 exit is ours, not the kernel's.
    killed: bool,
    /// What it used, as the engine's stats last said.
    usage: std::sync::Mutex<Option<shepherd_core::Usage>>,
    /// The GPUs it holds, given back when it is removed.
    gpus: Option<(Arc<super::devices::GpuSlots>, Vec<String>)>,
    /// The image it runs, exactly, if known.
    image_digest: Option<String>,
    /// The driver's containers not removed yet (this one leaves it when removed).
    made: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Adopted after a restart: it may have ended while no agent watched.
    adopted: bool,
}

/// A container's usage is sampled once it has run this long: shorter tasks
/// cost the engine no stats stream.
const USAGE_AFTER: Duration = Duration::from_secs(1);

/// Follows the engine's stats of a running container (a sample a second)
/// into `usage`: the CPU counter's latest value, the highest memory seen
/// (without the page cache, which `max_usage` would count). Ends when the
/// container does.
async fn sample_usage(docker: &Docker, name: &str, usage: &std::sync::Mutex<Option<shepherd_core::Usage>>) {
    tokio::time::sleep(USAGE_AFTER).await;
    let options = bollard::query_parameters::StatsOptionsBuilder::default().stream(true).one_shot(false).build();
    let mut stats = docker.stats(name, Some(options));
    while let Some(Ok(sample)) = stats.next().await {
        let cpu_ns = sample.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).unwrap_or(0);
        // What the container holds without the page cache it could drop,
        // as `docker stats` shows it (cgroup v1 and v2 name the cache apart).
        let memory = sample
            .memory_stats
            .map(|m| {
                let cache = m.stats.as_ref().and_then(|s| s.get("total_inactive_file").or(s.get("inactive_file")).copied()).unwrap_or(0);
                m.usage.unwrap_or(0).saturating_sub(cache)
            })
            .unwrap_or(0);
        if cpu_ns == 0 && memory == 0 {
            continue; // the empty sample of a container that has stopped
        }
        if let Ok(mut usage) = usage.lock() {
            let last = usage.unwrap_or_default();
            *usage = Some(shepherd_core::Usage {
                cpu_ms: last.cpu_ms.max(cpu_ns / 1_000_000),
                peak_memory_bytes: last.peak_memory_bytes.max(memory),
            });
        }
    }
}

/// How long a SIGKILL exit we did not send is watched for the engine's OOM
/// flag, which can land well after the exit on a busy host.
const OOM_FLAG_WAIT: Duration = Duration::from_secs(15);

#[async_trait]
impl AttemptHandle for ContainerAttempt {
    async fn wait(&mut self) -> Result<ExitStatus, DriverError> {
        let mut waits = self.docker.wait_container(&self.name, None);
        let started = std::time::Instant::now();
        let waited = {
            let sampling = sample_usage(&self.docker, &self.name, &self.usage);
            tokio::pin!(sampling);
            tokio::select! {
                biased;
                waited = waits.next() => waited,
                () = &mut sampling => waits.next().await,
            }
        };
        let code = match crate::metrics::metrics().time("wait", started, waited) {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(engine_error("waiting for the container", e)),
            None => return Err(DriverError::Io(std::io::Error::other("the engine closed the wait stream"))),
        };
        // Only a SIGKILL exit Shepherd did not cause can be an OOM kill:
        // any other exit of a container this agent watched from its start
        // costs the engine no more calls (its time is the time the wait
        // answered, within milliseconds of the engine's). An adopted one
        // may have ended long before: the engine says when.
        if (code != 137 || self.killed) && !self.adopted {
            let usage = self.usage.lock().ok().and_then(|u| *u);
            return Ok(ExitStatus { code: i32::try_from(code).unwrap_or(255), oom_killed: false, finished_at: None, usage });
        }
        // The engine may record an OOM kill a while after the exit: look
        // again for a moment before concluding it was not one. The
        // container's OOM flag is not enough on its own: an engine that
        // handles the exit before the OOM notification never sets it
        // (Docker 20.10 under load), but it still logs the container's
        // `oom` event, so that is looked for too.
        let deadline = tokio::time::Instant::now() + OOM_FLAG_WAIT;
        let mut round = 0u32;
        let (oom_killed, finished_at) = loop {
            let inspected = std::time::Instant::now();
            let info = crate::metrics::metrics().time("inspect", inspected, self.docker.inspect_container(&self.name, None).await);
            let (mut flagged, finished_at, started_at) = match info {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    (
                        state.oom_killed.unwrap_or(false),
                        state.finished_at.as_deref().and_then(engine_time),
                        state.started_at.as_deref().and_then(engine_time),
                    )
                }
                Err(_) => (false, None, None),
            };
            if code != 137 || self.killed {
                break (flagged, finished_at);
            }
            if !flagged && round.is_multiple_of(4) {
                flagged = self.oom_event_logged(started_at).await;
            }
            if flagged || tokio::time::Instant::now() >= deadline {
                if flagged {
                    tracing::debug!(container = %self.name, "the engine reported an OOM kill");
                }
                break (flagged, finished_at);
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let usage = self.usage.lock().ok().and_then(|u| *u);
        Ok(ExitStatus { code: i32::try_from(code).unwrap_or(255), oom_killed, finished_at, usage })
    }

    async fn terminate(&mut self) -> Result<(), DriverError> {
        self.signal("SIGTERM").await
    }

    async fn kill(&mut self) -> Result<(), DriverError> {
        self.killed = true;
        self.signal("SIGKILL").await
    }

    fn runtime(&self) -> Option<shepherd_core::AttemptRuntime> {
        Some(shepherd_core::AttemptRuntime { container: self.name.clone(), warm: false, image_digest: self.image_digest.clone() })
    }

    async fn remove(&mut self) -> Result<(), DriverError> {
        if self.removed {
            return Ok(());
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        let started = std::time::Instant::now();
        let removed = self.docker.remove_container(&self.name, Some(options)).await;
        match crate::metrics::metrics().time("remove", started, removed) {
            Ok(()) => {}
            Err(e) if is_status(&e, &[404]) => {}
            Err(e) => return Err(engine_error("removing the container", e)),
        }
        self.removed = true;
        self.made.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
        if let Some((slots, ids)) = self.gpus.take() {
            slots.give_back(&ids);
        }
        Ok(())
    }
}

impl ContainerAttempt {
    /// Whether the engine's event log holds an `oom` event for this
    /// container since it started (or, not knowing when, in the last hour).
    async fn oom_event_logged(&self, started_at: Option<Timestamp>) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let since = started_at.map_or(now.as_secs().saturating_sub(3600), |t| (t.millis() / 1000).saturating_sub(1) as u64);
        oom_event_logged(&self.docker, &self.name, &since.to_string()).await
    }

    async fn signal(&self, signal: &str) -> Result<(), DriverError> {
        let options = KillContainerOptionsBuilder::default().signal(signal).build();
        match self.docker.kill_container(&self.name, Some(options)).await {
            Ok(()) => Ok(()),
            // Not running any more, or already gone: nothing to stop.
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => Err(engine_error("signalling the container", e)),
        }
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn attempts_survive_agent(&self) -> bool {
        true
    }

    async fn start(&self, spec: &AttemptSpec, output: OutputSender) -> Result<Box<dyn AttemptHandle>, DriverError> {
        self.image_use.used(&spec.image);
        if !spec.networks.is_empty() {
            for network in &spec.networks {
                self.ensure_resolved_network(network).await?;
            }
        } else if spec.network == "bridge" {
            self.ensure_network(&spec.project).await?;
        }
        for volume in &spec.volumes {
            self.ensure_volume(volume).await?;
        }
        self.check_image_access(spec).await?;
        if let (Some(pool), Some(reuse), Some(key)) = (&self.warm, spec.reuse, &spec.warm_key) {
            if let Some(handle) = pool.start(spec, reuse, key.clone(), &output).await? {
                return Ok(handle);
            }
        }
        if let Some(missing) = spec.devices.iter().find(|name| !self.config.devices.iter().any(|d| &d.name == *name)) {
            return Err(DriverError::StartFailed(format!("this node offers no device `{missing}`")));
        }
        // Its GPUs: granted now, given back when its container goes.
        let granted = self
            .gpus
            .take(spec.gpus)
            .ok_or_else(|| DriverError::StartFailed(format!("{} GPUs asked, {} free on this node", spec.gpus, self.gpus.free())))?;
        let with_gpus;
        let spec = if granted.is_empty() {
            spec
        } else {
            with_gpus = AttemptSpec { gpu_ids: granted.clone(), ..spec.clone() };
            &with_gpus
        };
        let name = container_name(spec.task_id, spec.attempt);
        // Its own before the engine has it: a reconcile listing meanwhile keeps it.
        self.made.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        if let Err(e) = self.create_with_image(&name, spec).await {
            self.made.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            self.gpus.give_back(&granted);
            return Err(e);
        }
        let mut attempt = ContainerAttempt {
            docker: self.docker.clone(),
            name: name.clone(),
            removed: false,
            killed: false,
            usage: Default::default(),
            gpus: (!granted.is_empty()).then(|| (self.gpus.clone(), granted)),
            image_digest: None,
            made: self.made.clone(),
            adopted: false,
        };
        // Its other networks are joined before it starts.
        for network in spec.networks.iter().skip(1) {
            let request = bollard::models::NetworkConnectRequest { container: name.clone(), ..Default::default() };
            if let Err(e) = self.docker.connect_network(&network.engine_name, request).await {
                let _ = attempt.remove().await;
                return Err(engine_error("joining a project network", e));
            }
        }
        if let Err(e) = self.attach(&name, output).await {
            let _ = attempt.remove().await;
            return Err(engine_error("attaching to the container", e));
        }
        let started = std::time::Instant::now();
        // The image it runs is looked up while the engine starts it.
        let (result, image_digest) = tokio::join!(self.docker.start_container(&name, None), self.image_digest(&spec.image));
        attempt.image_digest = image_digest;
        if let Err(e) = crate::metrics::metrics().time("start", started, result) {
            let _ = attempt.remove().await;
            return Err(DriverError::StartFailed(format!("could not start the container: {e}")));
        }
        Ok(Box::new(attempt))
    }

    async fn recover(
        &self,
        task_id: TaskId,
        attempt: u32,
        output: OutputSender,
        captured: Captured,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        let name = container_name(task_id, attempt);
        match self.docker.inspect_container(&name, None).await {
            Ok(info) => {
                let mine =
                    info.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_NODE)) == Some(&self.config.node_id);
                if !mine {
                    return Ok(None);
                }
                // The engine kept everything the container wrote: read it back
                // from the start, skip what was stored before the restart, and
                // follow on. Output written while no agent watched is not lost.
                let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                // Its GPUs are held again until it goes.
                let gpus: Vec<String> = info
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(LABEL_GPUS))
                    .map(|ids| ids.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                self.gpus.hold(&gpus);
                replay(self.docker.clone(), name.clone(), output, captured, running);
                self.made.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
                Ok(Some(Box::new(ContainerAttempt {
                    docker: self.docker.clone(),
                    name,
                    removed: false,
                    killed: false,
                    usage: Default::default(),
                    gpus: (!gpus.is_empty()).then(|| (self.gpus.clone(), gpus)),
                    image_digest: None,
                    made: self.made.clone(),
                    adopted: true,
                })))
            }
            Err(e) if is_status(&e, &[404]) => Ok(None),
            Err(e) => Err(engine_error("inspecting the container", e)),
        }
    }

    async fn remove_orphans(&self, keep: &[(TaskId, u32)]) -> Result<usize, DriverError> {
        let mut keep: Vec<String> = keep.iter().map(|(task, attempt)| container_name(*task, *attempt)).collect();
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={}", self.config.node_id)])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(|e| engine_error("listing containers", e))?;
        // This driver's own warm containers (a reconnect, not a restart),
        // read after the listing: a warm container is live before the
        // engine makes it, so every one listed is in this set unless it is
        // gone for good.
        keep.extend(self.warm.as_ref().map(|pool| pool.live()).unwrap_or_default());
        // So are the containers of attempts this driver started (named
        // before the engine makes them) and has not removed: the keep-list
        // may predate them.
        keep.extend(self.made.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        let (mut removed, mut failed) = (0, 0);
        for container in containers {
            let names = container.names.unwrap_or_default();
            if names.iter().any(|n| keep.contains(&n.trim_start_matches('/').to_string())) {
                continue;
            }
            let Some(id) = container.id else { continue };
            let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
            match self.docker.remove_container(&id, Some(options)).await {
                Ok(()) => removed += 1,
                Err(e) if is_status(&e, &[404]) => {}
                // One that cannot go now (a removal in progress: 409) does
                // not keep the others: the next reconcile tries it again.
                Err(e) => {
                    failed += 1;
                    tracing::info!(container = %id, error = %engine_message(&e), "could not remove a leftover container; trying again later");
                }
            }
        }
        if failed > 0 {
            tracing::warn!(failed, removed, "some leftover containers could not be removed yet");
        }
        Ok(removed)
    }

    async fn images(&self) -> Vec<String> {
        let options = ListImagesOptionsBuilder::default().build();
        match self.docker.list_images(Some(options)).await {
            Ok(images) => {
                // By tag and by digest (a task may name either). An image
                // some projects pulled with their logins is theirs: listed
                // as `for=PROJECT=REFERENCE` for each of them.
                let present: std::collections::BTreeSet<String> = images.iter().map(|i| i.id.clone()).collect();
                self.access.retain(&present);
                let mut tags: Vec<String> = Vec::new();
                for image in images {
                    let names =
                        image.repo_tags.into_iter().chain(image.repo_digests).filter(|t| t != "<none>:<none>" && t != "<none>@<none>");
                    match self.access.projects_of(&image.id) {
                        None => tags.extend(names),
                        Some(projects) => {
                            for name in names {
                                tags.extend(projects.iter().map(|p| format!("{}{p}={name}", super::access::FOR_PREFIX)));
                            }
                        }
                    }
                }
                tags.extend(self.warm.as_ref().map(|pool| pool.idle_keys()).unwrap_or_default());
                tags.sort();
                tags
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list images");
                Vec::new()
            }
        }
    }

    async fn prefetch(
        &self,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        deadline: Duration,
    ) -> Result<(), DriverError> {
        self.pull_image(image, project, auth, deadline, false, None).await.map_err(DriverError::StartFailed)
    }

    async fn collect_images(&self, holds: &super::images::ImageHolds) -> Result<usize, DriverError> {
        let Some(cleanup) = &self.config.image_cleanup else { return Ok(0) };
        let listed = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(|e| engine_error("listing images", e))?;
        let mut total: u64 = listed.iter().map(|i| i.size.max(0) as u64).sum();
        if total <= cleanup.above_bytes {
            return Ok(0);
        }
        self.image_use.save();
        // The images attempts here need, by id: another name of one of them
        // (a digest, a second tag) is never removed either.
        let held_ids: std::collections::HashSet<&str> = holds
            .held()
            .iter()
            .filter_map(|name| listed.iter().find(|i| i.repo_tags.contains(name) || i.repo_digests.contains(name)))
            .map(|i| i.id.as_str())
            .collect();
        let mut removed = 0;
        for image in self.image_use.unused_for(cleanup.unused_for) {
            if total <= cleanup.above_bytes {
                break;
            }
            let name = super::images::listed_name(&image);
            let Some(found) = listed.iter().find(|i| i.repo_tags.contains(&name) || i.repo_digests.contains(&name)) else {
                // Gone already (removed by hand).
                self.image_use.forget(&image);
                continue;
            };
            if held_ids.contains(found.id.as_str()) {
                continue;
            }
            let Some(_removal) = holds.begin_removal(&image) else { continue };
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().force(false).build();
            match self.docker.remove_image(&image, Some(options), None).await {
                Ok(_) => {
                    tracing::info!(image, bytes = found.size, "image cleanup removed an unused image");
                    crate::metrics::metrics().images_removed.inc();
                    self.image_use.forget(&image);
                    self.digests.lock().unwrap_or_else(|e| e.into_inner()).remove(&image);
                    total = total.saturating_sub(found.size.max(0) as u64);
                    removed += 1;
                }
                Err(e) if is_status(&e, &[404]) => self.image_use.forget(&image),
                // A container (a warm one, one left by hand) still uses it: kept.
                Err(e) if is_status(&e, &[409]) => tracing::debug!(image, "image still used by a container; kept"),
                Err(e) => tracing::warn!(image, error = %e, "image cleanup could not remove an image"),
            }
        }
        Ok(removed)
    }

    async fn remove_volume(&self, engine_name: &str, project: &str) -> Result<bool, DriverError> {
        match self.docker.inspect_volume(engine_name).await {
            Ok(found) if found.labels.get(LABEL_PROJECT).map(String::as_str) == Some(project) => {}
            Ok(_) => return Ok(false),
            Err(e) if is_status(&e, &[404]) => return Ok(false),
            Err(e) => return Err(engine_error("inspecting a volume", e)),
        }
        match self.docker.remove_volume(engine_name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => {
                tracing::info!(volume = %engine_name, "removed a project volume");
                Ok(true)
            }
            Err(e) if is_status(&e, &[404]) => Ok(false),
            Err(e) => Err(engine_error("removing a volume", e)),
        }
    }

    fn keep_idle(&self, keep: bool) {
        if let Some(pool) = &self.warm {
            pool.keep_idle(keep);
        }
    }

    async fn shutdown(&self) -> usize {
        match &self.warm {
            Some(pool) => pool.remove_idle().await,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_tmpfs_belongs_to_a_numeric_user() {
        assert_eq!(scratch_options(16, None), "rw,nosuid,nodev,size=16m");
        assert_eq!(scratch_options(16, Some("65534")), "rw,nosuid,nodev,size=16m,uid=65534");
        assert_eq!(scratch_options(16, Some("1000:1001")), "rw,nosuid,nodev,size=16m,uid=1000,gid=1001");
        assert_eq!(scratch_options(16, Some("nobody")), "rw,nosuid,nodev,size=16m");
        assert_eq!(scratch_options(16, Some("1000:staff")), "rw,nosuid,nodev,size=16m,uid=1000");
    }
}

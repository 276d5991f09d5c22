//! The driver seam: how one attempt of a task is started, watched and
//! stopped. The agent does the rest (timeouts, cancel, logs, reporting).

pub mod access;
pub mod devices;
pub mod docker;
pub mod fake;
pub mod images;
pub mod process;
pub mod pull;
pub mod warm;

use async_trait::async_trait;
use shepherd_core::LogStream;
use shepherd_core::{PullPolicy, Resources, TaskId, Timestamp};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Everything a driver needs to start one attempt. Its `Debug` shows no
/// environment (secrets may be in it).
#[derive(Clone)]
pub struct AttemptSpec {
    pub task_id: TaskId,
    pub attempt: u32,
    pub node_id: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `none` or `bridge`.
    pub network: String,
    pub pull_policy: PullPolicy,
    /// A directory private to this attempt, removed after it ends.
    pub work_dir: PathBuf,
    /// The payload file, if the task has a payload (already written).
    pub payload_file: Option<PathBuf>,
    /// The task's project: its network, when it asks for one.
    pub project: String,
    /// A directory holding one read-only file per secret (already written).
    pub secrets_dir: Option<PathBuf>,
    /// Run in a warm container, if the driver has them.
    pub reuse: Option<shepherd_core::ReusePolicy>,
    /// The task's warm key ([`shepherd_core::shape::WarmKey`]), with `reuse`.
    pub warm_key: Option<shepherd_core::shape::WarmKey>,
    /// The task's code package, unpacked (mounted read-only at `/task`).
    pub package_dir: Option<PathBuf>,
    /// A private scratch directory for the attempt (a tmpfs in a container;
    /// a directory in the attempt's own for the process driver).
    pub scratch: Option<shepherd_core::ScratchSpec>,
    /// Its project's volumes it mounts (the docker driver makes them on
    /// first use).
    pub volumes: Vec<shepherd_core::ResolvedMount>,
    /// The networks it joins instead of the plain `network` (empty: the
    /// plain one).
    pub networks: Vec<shepherd_core::ResolvedNetwork>,
    /// GPUs it needs and devices it needs, by name (the docker driver
    /// grants them from what the node offers).
    pub gpus: u32,
    pub devices: Vec<String>,
    /// The GPUs granted to it (set by the driver).
    pub gpu_ids: Vec<String>,
    /// The project's login to the image's registry, if any.
    pub registry_auth: Option<shepherd_core::RegistryAuth>,
    /// How long the image's pull may take.
    pub pull_timeout: std::time::Duration,
    /// Where the driver says how far it got before the task runs (an
    /// image pull: `pulling image: 43%`); `None` where nobody listens.
    pub progress: Option<ProgressSink>,
}

/// Takes an attempt's progress before its task runs.
pub type ProgressSink = std::sync::Arc<dyn Fn(shepherd_core::Progress) + Send + Sync>;

impl std::fmt::Debug for AttemptSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptSpec")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .field("image", &self.image)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

/// The Docker network of a project's tasks that ask for a network: one
/// bridge network per project, so tasks of different projects cannot
/// reach each other.
pub fn project_network(project: &str) -> String {
    format!("shepherd-net-{project}")
}

/// A piece of output from a running attempt.
#[derive(Debug)]
pub struct OutputChunk {
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// Where a driver sends output; dropped by the driver when output ends.
pub type OutputSender = mpsc::Sender<OutputChunk>;

/// How an attempt's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal number when killed by a signal
    /// (the shell's convention).
    pub code: i32,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// When it exited, if the driver knows better than "when `wait` returned"
    /// (the engine's record, for an attempt that ended while no agent watched).
    pub finished_at: Option<Timestamp>,
    /// What it used (CPU, peak memory), if the driver measured it.
    pub usage: Option<shepherd_core::Usage>,
}

pub use shepherd_proto::Captured;

/// Why a driver could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The attempt cannot start; the reason is shown to the user.
    #[error("{0}")]
    StartFailed(String),
    #[error("driver I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> DriverError {
        DriverError::Io(e)
    }
}

/// A started attempt.
#[async_trait]
pub trait AttemptHandle: Send {
    /// Waits for the attempt to end. Cancellation-safe: may be raced in `select!`.
    async fn wait(&mut self) -> Result<ExitStatus, DriverError>;
    /// Asks the attempt to stop (SIGTERM).
    async fn terminate(&mut self) -> Result<(), DriverError>;
    /// Stops the attempt at once (SIGKILL).
    async fn kill(&mut self) -> Result<(), DriverError>;
    /// Frees what the attempt left on the host (its container), once its
    /// output and exit status are captured.
    async fn remove(&mut self) -> Result<(), DriverError> {
        Ok(())
    }
    /// Where the attempt runs (its container, warm or cold), for the record.
    fn runtime(&self) -> Option<shepherd_core::AttemptRuntime> {
        None
    }
    /// Whether this attempt can keep running while the agent is down, for a
    /// driver whose attempts do ([`Driver::attempts_survive_agent`]): a task
    /// in a warm container cannot (its runner is driven by this agent).
    fn outlives_agent(&self) -> bool {
        true
    }
}

/// Runs attempts. One per agent.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name, shown in `shepherd nodes`.
    fn name(&self) -> &'static str;

    /// Whether attempts keep running while the agent is down (containers
    /// do; host child processes do not). If so, a clean agent shutdown
    /// leaves them running and the next start adopts them.
    fn attempts_survive_agent(&self) -> bool {
        false
    }

    /// Starts an attempt; its output goes to `output`.
    async fn start(&self, spec: &AttemptSpec, output: OutputSender) -> Result<Box<dyn AttemptHandle>, DriverError>;

    /// After an agent restart: the attempt if it is still there (running, or
    /// exited while no agent watched), so the agent can adopt it; `None` if
    /// it is gone. Its output goes to `output` from where `captured` (what
    /// was stored before the restart) ends, where the driver can read it
    /// back; a driver that cannot says so in a system chunk.
    async fn recover(
        &self,
        task_id: TaskId,
        attempt: u32,
        output: OutputSender,
        captured: Captured,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError>;

    /// After a restart: stops and removes everything of this node's that
    /// belongs to no attempt in `keep` (nor to one this driver started and
    /// has not removed yet: `keep` is a snapshot, and attempts started
    /// after it are not in it). Returns how many it removed.
    async fn remove_orphans(&self, _keep: &[(TaskId, u32)]) -> Result<usize, DriverError> {
        Ok(0)
    }

    /// The images this node holds, for image-locality scoring, and the keys
    /// of its idle warm containers (`warm=…`), for warm-locality scoring.
    async fn images(&self) -> Vec<String> {
        Vec::new()
    }

    /// The agent is stopping (or its node draining): frees what the driver
    /// keeps between attempts (idle warm containers). Returns how many it
    /// removed.
    async fn shutdown(&self) -> usize {
        0
    }

    /// Whether to keep anything between attempts (false while the node
    /// drains: what an attempt leaves is freed at once).
    fn keep_idle(&self, _keep: bool) {}

    /// Removes images no task of this node used for a while, if the
    /// driver keeps images and its cleanup is on, never one that `holds`
    /// says an attempt here needs. Returns how many it removed.
    async fn collect_images(&self, _holds: &images::ImageHolds) -> Result<usize, DriverError> {
        Ok(0)
    }

    /// Pulls `image` onto this node ahead of the tasks that will need it
    /// (`shepherd image prefetch`), with `auth`, within `deadline`. Drivers
    /// that pull no images say so.
    /// `project` is whose login `auth` is (the image is then that
    /// project's on this node: [`access`]).
    async fn prefetch(
        &self,
        _image: &str,
        _project: Option<&str>,
        _auth: Option<shepherd_core::RegistryAuth>,
        _deadline: std::time::Duration,
    ) -> Result<(), DriverError> {
        Err(DriverError::StartFailed(format!("the {} driver pulls no images", self.name())))
    }

    /// Removes a project volume's data from this node (its volume was
    /// removed); true if there was some. Drivers without volumes have none.
    /// `engine_name` is the volume's engine name, `project` its project
    /// (a volume of another project's is never removed).
    async fn remove_volume(&self, _engine_name: &str, _project: &str) -> Result<bool, DriverError> {
        Ok(false)
    }
}

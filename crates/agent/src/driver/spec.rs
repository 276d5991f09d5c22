//! What a driver is given and gives back for one attempt: its spec, its
//! output, how it ended, and why a driver could not do what it was asked.
//! Nothing else of the driver is imported here: every other file of it
//! builds on this one.

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
    /// A writable directory for the task's result file (`result`, read by
    /// the agent after the attempt); cold containers and processes only.
    pub out_dir: Option<PathBuf>,
    /// A directory of read-only files, one per dependency that left a
    /// result, named by its id (already written).
    pub inputs_dir: Option<PathBuf>,
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

//! The driver seam: the traits a driver implements, [`Driver`] (one per
//! agent) and [`AttemptHandle`] (one per started attempt).

use super::images::ImageHolds;
use super::spec::{AttemptSpec, Captured, DriverError, ExitStatus, OutputSender};
use async_trait::async_trait;
use shepherd_core::TaskId;

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
    async fn collect_images(&self, _holds: &ImageHolds) -> Result<usize, DriverError> {
        Ok(0)
    }

    /// Pulls `image` onto this node ahead of the tasks that will need it
    /// (`shepherd image prefetch`), with `auth`, within `deadline`. Drivers
    /// that pull no images say so.
    /// `project` is whose login `auth` is (the image is then that
    /// project's on this node: [`super::access`]).
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

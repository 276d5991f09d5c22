//! A cold attempt's container once it is made: waited for (its usage
//! sampled, an OOM kill told apart from a kill of Shepherd's), signalled,
//! and removed.

use crate::driver::engine::{engine_error, is_status, oom_event_logged};
use crate::driver::seam::AttemptHandle;
use crate::driver::spec::{DriverError, ExitStatus};
use async_trait::async_trait;
use bollard::query_parameters::{KillContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use shepherd_core::Timestamp;
use std::sync::Arc;
use std::time::Duration;

/// A time as the engine writes it (RFC 3339 with nanoseconds); `None` for
/// its "never" (`0001-01-01T00:00:00Z`) or anything unreadable.
fn engine_time(text: &str) -> Option<Timestamp> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let millis = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Timestamp(i64::try_from(millis).ok()?)).filter(|t| t.millis() > 0)
}

/// A running (or finished) container.
pub(super) struct ContainerAttempt {
    pub(super) docker: Docker,
    pub(super) name: String,
    pub(super) removed: bool,
    /// Shepherd sent it SIGKILL (timeout, cancel): a 137 exit is ours, not the kernel's.
    pub(super) killed: bool,
    /// What it used, as the engine's stats last said.
    pub(super) usage: std::sync::Mutex<Option<shepherd_core::Usage>>,
    /// The GPUs it holds, given back when it is removed.
    pub(super) gpus: Option<(Arc<crate::driver::devices::GpuSlots>, Vec<String>)>,
    /// The image it runs, exactly, if known.
    pub(super) image_digest: Option<String>,
    /// The driver's containers not removed yet (this one leaves it when removed).
    pub(super) made: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Adopted after a restart: it may have ended while no agent watched.
    pub(super) adopted: bool,
}

impl Drop for ContainerAttempt {
    /// A handle dropped without `remove` (its agent stopping and leaving it
    /// running for the next start to adopt) no longer keeps the container
    /// from orphan sweeps: only containers of attempts this driver still
    /// watches are kept out of them.
    fn drop(&mut self) {
        if !self.removed {
            self.made.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
        }
    }
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

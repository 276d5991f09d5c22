//! The agent: takes assignments, runs each attempt through the driver,
//! enforces timeout and cancel, and reports what happened.

use crate::backend::Backend;
use crate::driver::{AttemptHandle, AttemptSpec, Driver, DriverError, ExitStatus};
use crate::logs::{self, LogLimits};
use shepherd_core::LaunchSpec;
use shepherd_core::{Event, TaskId, TaskState, Timestamp};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How an agent runs its attempts.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    /// Attempts get private working directories under here.
    pub work_dir: PathBuf,
    pub log_limits: LogLimits,
    /// Time between SIGTERM and SIGKILL when stopping an attempt.
    pub stop_grace: Duration,
    /// On a clean shutdown, stop attempts even where the driver's would
    /// survive the agent (containers): nothing is left for adoption.
    pub stop_on_shutdown: bool,
    /// How often the driver's image cleanup runs (`None`: never).
    pub image_cleanup_every: Option<Duration>,
}

/// Why a running attempt is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    Shutdown,
}

struct Running {
    attempt: u32,
    cancel: watch::Sender<bool>,
    /// Set when the attempt was given away: stop it and report nothing.
    fenced: Arc<std::sync::atomic::AtomicBool>,
}

struct Inner {
    config: AgentConfig,
    backend: Arc<dyn Backend>,
    driver: Arc<dyn Driver>,
    running: Mutex<HashMap<TaskId, Running>>,
    runners: Mutex<JoinSet<()>>,
    shutdown: watch::Sender<bool>,
    /// Signalled whenever an attempt ends and its resources are free.
    capacity_freed: Arc<Notify>,
    /// Attempts a shutdown left running for adoption.
    left_running: std::sync::atomic::AtomicUsize,
    /// Attempts that ran here lately: an attempt number is never reused, so
    /// an assignment of one of these is a late copy (a server that was
    /// frozen flushing what it sent before) and must not run it again.
    ran: Mutex<RecentlyRan>,
    /// Reports the cluster did not take (no server answered): sent again,
    /// in order, before each reconcile, so an attempt that ran while its
    /// reports were lost is never left waiting to start.
    unreported: Mutex<Vec<(TaskId, Event)>>,
    /// Code packages the attempts here use (kept from eviction).
    packages: Arc<crate::package::InUse>,
    /// Packages being fetched and unpacked: one at a time per digest (the
    /// attempts that need it meanwhile wait for that one), and at most
    /// [`UNPACKS_AT_ONCE`] digests at once.
    unpacks: crate::driver::pull::SingleFlight<String, Result<std::path::PathBuf, String>>,
    unpacking: Arc<tokio::sync::Semaphore>,
    /// Images the attempts here need (kept from the image cleanup).
    images: Arc<crate::driver::images::ImageHolds>,
    /// Signalled when the node's images changed (a prefetch landed): the
    /// next heartbeat lists them without waiting for the periodic refresh.
    images_changed: Arc<Notify>,
}

/// The last [`RecentlyRan::CAPACITY`] attempts this agent ran.
#[derive(Default)]
struct RecentlyRan {
    set: std::collections::HashSet<(TaskId, u32)>,
    order: std::collections::VecDeque<(TaskId, u32)>,
}

impl RecentlyRan {
    const CAPACITY: usize = 100_000;

    fn insert(&mut self, attempt: (TaskId, u32)) {
        if self.set.insert(attempt) {
            self.order.push_back(attempt);
            if self.order.len() > Self::CAPACITY {
                if let Some(oldest) = self.order.pop_front() {
                    self.set.remove(&oldest);
                }
            }
        }
    }
}

/// A node's agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// An agent that runs attempts with `driver` and reports to `backend`.
    pub fn new(config: AgentConfig, backend: Arc<dyn Backend>, driver: Arc<dyn Driver>, capacity_freed: Arc<Notify>) -> Agent {
        let (shutdown, _) = watch::channel(false);
        let agent = Agent {
            inner: Arc::new(Inner {
                config,
                backend,
                driver,
                running: Mutex::new(HashMap::new()),
                runners: Mutex::new(JoinSet::new()),
                shutdown,
                capacity_freed,
                left_running: Default::default(),
                ran: Mutex::default(),
                unreported: Mutex::default(),
                packages: Default::default(),
                unpacks: Default::default(),
                unpacking: Arc::new(tokio::sync::Semaphore::new(UNPACKS_AT_ONCE)),
                images: Default::default(),
                images_changed: Default::default(),
            }),
        };
        if let Some(every) = agent.inner.config.image_cleanup_every {
            let weak = Arc::downgrade(&agent.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    match inner.driver.collect_images(&inner.images).await {
                        Ok(0) => {}
                        Ok(removed) => tracing::info!(removed, "image cleanup removed unused images"),
                        Err(e) => tracing::warn!(error = %e, "image cleanup failed"),
                    }
                }
            });
        }
        agent
    }

    /// This agent's node id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The driver's name.
    pub fn driver_name(&self) -> &'static str {
        self.inner.driver.name()
    }

    /// Signalled when the node's images changed (a prefetch landed).
    pub fn images_changed(&self) -> Arc<Notify> {
        self.inner.images_changed.clone()
    }

    /// The images the driver's engine holds.
    pub async fn images(&self) -> Vec<String> {
        self.inner.driver.images().await
    }

    /// Attempts running (or starting) now.
    pub fn running_count(&self) -> usize {
        self.inner.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Starts attempt `attempt` of a task that the store has scheduled here.
    pub fn assign(&self, task_id: TaskId, attempt: u32) {
        self.assign_attempt(task_id, attempt, None);
    }

    /// Starts an attempt whose launch spec came with the assignment, which
    /// saves a round trip to the cluster before the container starts.
    pub fn assign_launch(&self, launch: LaunchSpec) {
        self.assign_attempt(launch.id, launch.attempt, Some(launch));
    }

    fn assign_attempt(&self, task_id: TaskId, attempt: u32, launch: Option<LaunchSpec>) {
        self.inner.driver.keep_idle(true);
        if self.inner.ran.lock().is_ok_and(|ran| ran.set.contains(&(task_id, attempt))) {
            tracing::info!(task = %task_id, attempt, "attempt already ran here; late assignment ignored");
            return;
        }
        let (cancel, cancel_rx) = watch::channel(false);
        let fenced: Arc<std::sync::atomic::AtomicBool> = Default::default();
        {
            let Ok(mut running) = self.inner.running.lock() else { return };
            if let Some(existing) = running.get(&task_id) {
                if existing.attempt == attempt {
                    tracing::debug!(task = %task_id, attempt, "attempt already running; duplicate assignment ignored");
                    return;
                }
                // A newer attempt of the same task: the older one was given
                // up by the cluster. Stop it without a report.
                tracing::info!(task = %task_id, old = existing.attempt, attempt, "newer attempt assigned; fencing the old one");
                existing.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = existing.cancel.send(true);
            }
            running.insert(task_id, Running { attempt, cancel, fenced: fenced.clone() });
        }
        let inner = self.inner.clone();
        let expected = self.inner.images.expect();
        self.spawn(
            async move { run_attempt(inner, task_id, attempt, cancel_rx, fenced, Begin::Start(launch.map(Box::new), expected)).await },
        );
    }

    /// The node is draining: the driver frees what it keeps between
    /// attempts (idle warm containers) and keeps nothing more until the next
    /// assignment (a node made ready again gets work).
    pub fn drain(&self) {
        self.inner.driver.keep_idle(false);
        let driver = self.inner.driver.clone();
        tokio::spawn(async move {
            let removed = driver.shutdown().await;
            if removed > 0 {
                tracing::info!(removed, "node draining: removed idle warm containers");
            }
        });
    }

    /// Pulls an image ahead of the tasks that will need it
    /// (`shepherd image prefetch`), in the background; the next heartbeat
    /// lists it among the node's images.
    /// `project` is whose login `auth` is.
    pub fn prefetch(&self, image: String, project: Option<String>, auth: Option<shepherd_core::RegistryAuth>, deadline: Duration) {
        let (driver, changed) = (self.inner.driver.clone(), self.inner.images_changed.clone());
        tokio::spawn(async move {
            match driver.prefetch(&image, project.as_deref(), auth, deadline).await {
                Ok(()) => {
                    tracing::info!(image, "prefetched an image");
                    changed.notify_one();
                }
                Err(e) => tracing::warn!(image, error = %e, "could not prefetch an image"),
            }
        });
    }

    /// Removes a removed project volume's data from this node, in the
    /// background (the engine refuses while a container still uses it:
    /// logged, kept).
    pub fn remove_volume(&self, engine_name: String, project: String) {
        let driver = self.inner.driver.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.remove_volume(&engine_name, &project).await {
                tracing::warn!(volume = %engine_name, error = %e, "could not remove a project volume");
            }
        });
    }

    /// Stops a task's running attempt because it was cancelled.
    pub fn cancel(&self, task_id: TaskId) {
        if let Ok(running) = self.inner.running.lock() {
            if let Some(entry) = running.get(&task_id) {
                let _ = entry.cancel.send(true);
            }
        }
    }

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut runners) = self.inner.runners.lock() {
            while runners.try_join_next().is_some() {}
            runners.spawn(work);
        }
    }

    /// After a restart (or a reconnect): adopts attempts assigned to this
    /// node that the driver still has running, starts those assigned but not
    /// yet started, reports lost the running ones that are gone (the state
    /// machine retries them or fails them with reason `lost`), and removes
    /// every container of this node that no assigned attempt owns, such as
    /// those of attempts given away while the node was cut off.
    pub async fn reconcile(&self) -> Result<(), crate::backend::BackendError> {
        // First what the cluster did not hear: the state read next follows it.
        let unreported = self.inner.unreported.lock().map(|mut u| std::mem::take(&mut *u)).unwrap_or_default();
        if !unreported.is_empty() {
            tracing::info!(count = unreported.len(), "sending reports the cluster did not take");
            if let Err(e) = self.inner.backend.report(unreported.clone()).await {
                if let Ok(mut u) = self.inner.unreported.lock() {
                    let newer = std::mem::take(&mut *u);
                    *u = unreported.into_iter().chain(newer).collect();
                }
                return Err(e);
            }
        }
        let mine = self.inner.backend.assigned(&self.inner.config.node_id).await?;
        // Everything still assigned here is kept, scheduled ones too: the
        // cluster may not have heard this agent's start report yet.
        let keep: Vec<(TaskId, u32)> = mine.iter().map(|t| (t.task_id, t.attempt)).collect();
        let stale: Vec<TaskId> = match self.inner.running.lock() {
            Ok(running) => running
                .iter()
                .filter(|(id, r)| !mine.iter().any(|t| t.task_id == **id && t.attempt == r.attempt))
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => Vec::new(),
        };
        for id in stale {
            // Given away while we were cut off: stop it, never report it.
            self.fence(id);
        }
        match self.inner.driver.remove_orphans(&keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed containers of attempts this node no longer owns"),
            Err(e) => tracing::warn!(error = %e, "could not clean up leftover containers"),
        }
        let mut lost = Vec::new();
        for task in mine {
            if self.is_running(task.task_id, task.attempt) {
                // A cancel whose message was lost on the way.
                if task.cancel_requested {
                    self.cancel(task.task_id);
                }
                continue;
            }
            let ran_here = self.inner.ran.lock().is_ok_and(|ran| ran.set.contains(&(task.task_id, task.attempt)));
            if task.state == TaskState::Scheduled && !ran_here {
                self.assign(task.task_id, task.attempt);
                continue;
            }
            if task.state == TaskState::Scheduled {
                // It ended here, every report sent or sent again above, and
                // the cluster still waits for it: it is lost (and retried
                // per its policy) rather than waiting for ever.
                lost.push((task.task_id, Event::Lost { attempt: task.attempt, reason: "its end never reached the cluster".into() }));
                continue;
            }
            let (tx, rx) = mpsc::channel(64);
            // Output stored before the restart is not sent again; what came after is.
            let captured = self.inner.backend.captured(task.task_id, task.attempt).await.unwrap_or_else(|e| {
                tracing::warn!(task = %task.task_id, error = %e, "could not tell how much output was stored; it may repeat");
                Default::default()
            });
            match self.inner.driver.recover(task.task_id, task.attempt, tx, captured).await {
                Ok(Some(handle)) => {
                    tracing::info!(task = %task.task_id, attempt = task.attempt, "adopted running attempt");
                    let (cancel, cancel_rx) = watch::channel(task.cancel_requested);
                    let fenced: Arc<std::sync::atomic::AtomicBool> = Default::default();
                    if let Ok(mut running) = self.inner.running.lock() {
                        running.insert(task.task_id, Running { attempt: task.attempt, cancel, fenced: fenced.clone() });
                    }
                    let inner = self.inner.clone();
                    let adopted = Adopted { handle, output: rx, captured };
                    let (id, attempt) = (task.task_id, task.attempt);
                    self.spawn(async move { run_attempt(inner, id, attempt, cancel_rx, fenced, Begin::Adopt(adopted)).await });
                }
                Ok(None) => lost
                    .push((task.task_id, Event::Lost { attempt: task.attempt, reason: "agent restarted and the attempt was gone".into() })),
                Err(e) => {
                    tracing::warn!(task = %task.task_id, error = %e, "could not recover attempt");
                    lost.push((task.task_id, Event::Lost { attempt: task.attempt, reason: format!("could not recover: {e}") }));
                }
            }
        }
        if !lost.is_empty() {
            tracing::info!(count = lost.len(), "attempts lost while the agent was away");
            self.inner.backend.report(lost).await?;
            self.inner.capacity_freed.notify_one();
        }
        Ok(())
    }

    fn is_running(&self, task_id: TaskId, attempt: u32) -> bool {
        self.inner.running.lock().map(|r| r.get(&task_id).is_some_and(|e| e.attempt == attempt)).unwrap_or(false)
    }

    /// Kills a task's attempt without reporting anything: the cluster gave
    /// the task away (fencing).
    pub fn fence(&self, task_id: TaskId) {
        if let Ok(running) = self.inner.running.lock() {
            if let Some(entry) = running.get(&task_id) {
                entry.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = entry.cancel.send(true);
            }
        }
    }

    /// Stops watching: attempts whose driver lets them outlive the agent
    /// (containers) are left running for the next start to adopt, unless
    /// `stop_on_shutdown`; the others are stopped (back to the queue without
    /// using a retry). Waits for their final reports; returns how many were
    /// left running.
    pub async fn shutdown(&self) -> usize {
        let _ = self.inner.shutdown.send(true);
        let runners = self.inner.runners.lock().map(|mut r| std::mem::take(&mut *r));
        if let Ok(mut runners) = runners {
            while runners.join_next().await.is_some() {}
        }
        let removed = self.inner.driver.shutdown().await;
        if removed > 0 {
            tracing::info!(removed, "removed idle warm containers");
        }
        self.inner.left_running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An attempt found running after a restart.
struct Adopted {
    handle: Box<dyn AttemptHandle>,
    output: mpsc::Receiver<crate::OutputChunk>,
    /// Output stored before the restart: it counts against the head limit.
    captured: shepherd_proto::Captured,
}

async fn report(inner: &Inner, task_id: TaskId, event: Event) -> bool {
    match inner.backend.report(vec![(task_id, event.clone())]).await {
        Ok(results) => results.into_iter().next().unwrap_or(false),
        Err(e) => {
            // An attempt whose start the cluster did not hear is stopped
            // (it may be given away); how one ended is sent again.
            if !matches!(event, Event::Start { .. }) {
                tracing::error!(task = %task_id, error = %e, "could not report to the cluster; sent again at the next reconcile");
                if let Ok(mut unreported) = inner.unreported.lock() {
                    unreported.push((task_id, event));
                }
            } else {
                tracing::error!(task = %task_id, error = %e, "could not report the start to the cluster; stopping the attempt");
            }
            false
        }
    }
}

async fn run_attempt(
    inner: Arc<Inner>,
    task_id: TaskId,
    attempt: u32,
    cancel: watch::Receiver<bool>,
    fenced: Arc<std::sync::atomic::AtomicBool>,
    begin: Begin,
) {
    let work_dir = inner.config.work_dir.join(format!("{task_id}-{attempt}"));
    let span = tracing::info_span!("attempt", task = %task_id, attempt, node = %inner.config.node_id);
    let _running = crate::metrics::RunningGuard::new();
    run_attempt_inner(&inner, task_id, attempt, cancel, &fenced, begin, &work_dir).instrument(span).await;
    if let Err(e) = tokio::fs::remove_dir_all(&work_dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(task = %task_id, error = %e, "could not remove attempt directory");
        }
    }
    if let Ok(mut ran) = inner.ran.lock() {
        ran.insert((task_id, attempt));
    }
    if let Ok(mut running) = inner.running.lock() {
        if running.get(&task_id).is_some_and(|r| r.attempt == attempt) {
            running.remove(&task_id);
        }
    }
    inner.capacity_freed.notify_one();
}

/// How an attempt begins: started here (with its launch spec if the
/// assignment carried it), or adopted from the driver after a restart.
enum Begin {
    /// With the image cleanup told that it will name its image.
    Start(Option<Box<LaunchSpec>>, crate::driver::images::Expected),
    Adopt(Adopted),
}

/// Where a driver's progress before the task runs goes: to the cluster,
/// in the background (informational: a lost report is not retried).
fn progress_sink(backend: Arc<dyn Backend>, task_id: TaskId, attempt: u32) -> crate::driver::ProgressSink {
    Arc::new(move |progress: shepherd_core::Progress| {
        let backend = backend.clone();
        tokio::spawn(async move {
            if let Err(e) = backend.progress(task_id, attempt, progress).await {
                tracing::debug!(task = %task_id, error = %e, "progress not delivered");
            }
        });
    })
}

/// The time an attempt has left before its deadline; the deadline counts
/// from the attempt's start, also for an adopted one.
fn time_left(launch: Option<&LaunchSpec>) -> Duration {
    let Some(launch) = launch else { return Duration::from_secs(u64::from(shepherd_core::TaskSpec::default_timeout())) };
    let limit = Duration::from_secs(u64::from(launch.spec.timeout_seconds));
    let elapsed = launch.attempt_started_at.map_or(0, |s| (Timestamp::now().millis() - s.millis()).max(0) as u64);
    limit.saturating_sub(Duration::from_millis(elapsed))
}

/// The attempt's directory, and the directory of all attempts above it,
/// readable by the agent's user only: no other user of the host can reach
/// a payload or a secret. (A container sees only what is mounted into it.)
async fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    if let Some(parent) = dir.parent() {
        tokio::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).await?;
    }
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await
}

/// Writes one read-only file per secret into `dir` (readable by the task's
/// user, whoever it is; the directory cannot be listed by others).
async fn write_secrets(dir: &std::path::Path, secrets: &std::collections::BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).await?;
    for (name, value) in secrets {
        let path = dir.join(name);
        tokio::fs::write(&path, value).await?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).await?;
    }
    Ok(())
}

/// Why an attempt could not start; its text is the attempt's reason.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("could not create the attempt directory: {0}")]
    WorkDir(std::io::Error),
    #[error("could not write the payload: {0}")]
    Payload(std::io::Error),
    #[error("could not write the secrets: {0}")]
    Secrets(std::io::Error),
    #[error("secret `{name}` no longer exists in project `{project}`")]
    SecretGone { name: String, project: String },
    #[error("volume `{name}` no longer exists in project `{project}`")]
    VolumeGone { name: String, project: String },
    #[error("the task's code package: {0}")]
    Package(String),
    /// The driver's own reason (bad command, missing image, ...).
    #[error("{0}")]
    Driver(String),
}

impl StartError {
    /// The node's disk (or its quota) is full: not the task's fault. Such
    /// an attempt goes back to the queue without using a retry.
    fn is_disk_full(&self) -> bool {
        let full = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        match self {
            StartError::WorkDir(e) | StartError::Payload(e) | StartError::Secrets(e) => full(e),
            StartError::Package(text) => text.contains("(os error 28)") || text.contains("(os error 122)"),
            _ => false,
        }
    }
}

/// How long an attempt that found the node's disk full keeps its place
/// before it goes back to the queue (so that it is not placed here again
/// at once, over and over).
const DISK_FULL_PAUSE: Duration = Duration::from_secs(5);

/// Digests unpacked at once at most (each may take up to
/// [`crate::package::MAX_UNPACKED_BYTES`] of disk while it unpacks).
const UNPACKS_AT_ONCE: usize = 2;

/// The directory holding a task's code package, unpacked (fetched from the
/// cluster the first time this node needs it).
async fn unpacked_package(inner: &Inner, task_id: TaskId, digest: &str) -> Result<std::path::PathBuf, StartError> {
    let cache = inner.config.work_dir.with_file_name("packages");
    let dir = cache.join(digest);
    if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
        crate::package::touch(&dir);
        return Ok(dir);
    }
    // One fetch and unpack per digest: attempts of one package that start
    // together wait for it (a small zip that unpacks to 511 MiB once, not
    // once per attempt).
    let work = {
        let (backend, packages, unpacking) = (inner.backend.clone(), inner.packages.clone(), inner.unpacking.clone());
        let digest = digest.to_string();
        move || async move {
            let _turn = unpacking.acquire_owned().await.map_err(|e| e.to_string())?;
            let zip = backend.package(task_id).await.map_err(|e| e.to_string())?;
            // Room first: the least recently used packages no attempt here
            // runs go until this one fits in the node's budget.
            let (evict_in, room) = (cache.clone(), crate::package::CACHE_BUDGET_BYTES.saturating_sub(crate::package::MAX_UNPACKED_BYTES));
            let unpacked_in = cache.clone();
            tokio::task::spawn_blocking(move || {
                match packages.evict(&evict_in, room) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "removed unused code packages from the node's cache"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(error = %e, "could not trim the code package cache"),
                }
                let unpacked = crate::package::unpack(&zip, &digest, &unpacked_in).map_err(|e| e.to_string());
                if unpacked.is_ok() {
                    tracing::info!(package = %digest, "unpacked a code package");
                }
                unpacked
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    inner.unpacks.run(digest.to_string(), work, Err("the package's unpack stopped".into())).await.map_err(StartError::Package)
}

/// A started attempt: its handle and its output.
type Started = (Box<dyn AttemptHandle>, mpsc::Receiver<crate::OutputChunk>);

async fn start(
    inner: &Inner,
    task_id: TaskId,
    attempt: u32,
    launch: LaunchSpec,
    work_dir: &std::path::Path,
) -> Result<Option<Started>, StartError> {
    if launch.state != TaskState::Scheduled || launch.attempt != attempt {
        tracing::info!(task = %task_id, attempt, "assignment is stale; not starting");
        return Ok(None);
    }
    create_private_dir(work_dir).await.map_err(StartError::WorkDir)?;
    let payload_file = match &launch.payload {
        Some(bytes) => {
            use std::os::unix::fs::PermissionsExt;
            let path = work_dir.join("payload");
            tokio::fs::write(&path, bytes).await.map_err(StartError::Payload)?;
            // Mounted on its own into the container: readable there by any
            // user the task runs as; on the host the attempt directory is private.
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).await.map_err(StartError::Payload)?;
            Some(path)
        }
        None => None,
    };
    let package_dir = match &launch.spec.package {
        Some(package) => Some(unpacked_package(inner, task_id, &package.digest).await?),
        None => None,
    };
    // Run cold: what `warm_key` gives no key (no `reuse`; scratch, volumes,
    // named networks, devices, GPUs: mounts of a container's own), a code
    // package (mounted into a container of its own), and networks the
    // project's policy gives it (an internal bridge without egress).
    let warm_key = shepherd_core::shape::WarmKey::of(&launch.spec).filter(|_| package_dir.is_none() && launch.networks.is_empty());
    let reuse = launch.spec.reuse.filter(|_| warm_key.is_some());
    if let Some(missing) = launch.spec.volumes.iter().find(|m| !launch.volumes.iter().any(|v| v.name == m.name)) {
        return Err(StartError::VolumeGone { name: missing.name.clone(), project: launch.spec.project.clone() });
    }
    let mut env = launch.spec.env;
    let secrets_dir = if launch.spec.secrets.is_empty() {
        None
    } else {
        let dir = work_dir.join("secrets");
        write_secrets(&dir, &launch.secrets).await.map_err(StartError::Secrets)?;
        for secret in &launch.spec.secrets {
            let Some(value) = launch.secrets.get(&secret.name) else {
                return Err(StartError::SecretGone { name: secret.name.clone(), project: launch.spec.project.clone() });
            };
            if let Some(var) = &secret.env {
                env.insert(var.clone(), String::from_utf8_lossy(value).into_owned());
            }
        }
        Some(dir)
    };
    // A directory the task may write its result into (mounted writable in
    // a cold container, whatever user it runs as; the attempt's directory
    // above it stays private on the host).
    let out_dir = {
        use std::os::unix::fs::PermissionsExt;
        let dir = work_dir.join("out");
        tokio::fs::create_dir_all(&dir).await.map_err(StartError::WorkDir)?;
        tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).await.map_err(StartError::WorkDir)?;
        Some(dir)
    };
    let inputs_dir = if launch.inputs.is_empty() {
        None
    } else {
        let dir = work_dir.join("inputs");
        write_secrets(&dir, &launch.inputs).await.map_err(StartError::Payload)?;
        Some(dir)
    };
    let spec = AttemptSpec {
        task_id,
        attempt,
        node_id: inner.config.node_id.clone(),
        image: launch.spec.image,
        command: launch.spec.command,
        env,
        resources: launch.spec.resources,
        workdir: launch.spec.workdir,
        user: launch.spec.user,
        network: launch.spec.network,
        pull_policy: launch.spec.pull_policy,
        work_dir: work_dir.to_path_buf(),
        payload_file,
        warm_key,
        reuse,
        project: launch.spec.project,
        secrets_dir,
        out_dir,
        inputs_dir,
        package_dir,
        scratch: launch.spec.scratch,
        volumes: launch.volumes,
        networks: launch.networks,
        gpus: launch.spec.gpus,
        devices: launch.spec.devices,
        gpu_ids: Vec::new(),
        registry_auth: launch.registry_auth,
        pull_timeout: std::time::Duration::from_secs(u64::from(launch.spec.pull_timeout_seconds.unwrap_or(600))),
        progress: Some(progress_sink(inner.backend.clone(), task_id, attempt)),
    };
    tracing::debug!(?spec, "starting attempt");
    let (tx, rx) = mpsc::channel(64);
    match inner.driver.start(&spec, tx).await {
        Ok(handle) => Ok(Some((handle, rx))),
        Err(DriverError::StartFailed(reason)) => {
            crate::metrics::metrics().start_failures.inc();
            Err(StartError::Driver(reason))
        }
        Err(e) => {
            crate::metrics::metrics().start_failures.inc();
            Err(StartError::Driver(e.to_string()))
        }
    }
}

async fn run_attempt_inner(
    inner: &Arc<Inner>,
    task_id: TaskId,
    attempt: u32,
    mut cancel: watch::Receiver<bool>,
    fenced: &std::sync::atomic::AtomicBool,
    begin: Begin,
    work_dir: &std::path::Path,
) {
    // The attempt's code package stays unpacked, and its image on the
    // node, while it runs.
    let mut _package = None;
    let mut _image = None;
    let (time_left, mut handle, output, already) = match begin {
        Begin::Adopt(adopted) => {
            let launch = inner.backend.launch_spec(task_id).await.ok().flatten();
            _package = launch.as_ref().and_then(|l| l.spec.package.as_ref()).map(|p| inner.packages.hold(&p.digest));
            if let Some(launch) = &launch {
                _image = Some(inner.images.hold(&launch.spec.image, inner.images.expect()).await);
            }
            let already = (adopted.captured.stdout + adopted.captured.stderr) as usize;
            (time_left(launch.as_ref()), adopted.handle, adopted.output, already)
        }
        Begin::Start(launch, expected) => {
            let launch = match launch {
                Some(launch) => *launch,
                None => match inner.backend.launch_spec(task_id).await {
                    // Only an attempt still waiting for its start starts: a
                    // reconcile that read "scheduled" just before the same
                    // attempt ran and ended must not run it again.
                    Ok(Some(launch)) if launch.state == TaskState::Scheduled && launch.attempt == attempt => launch,
                    Ok(Some(launch)) => {
                        tracing::debug!(task = %task_id, attempt, state = %launch.state, "attempt no longer waits to start; not started");
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let reason = format!("could not load the task: {e}");
                        tracing::info!(task = %task_id, %reason, "attempt could not start");
                        report(inner, task_id, Event::StartFailed { attempt, reason }).await;
                        return;
                    }
                },
            };
            let time_left = time_left(Some(&launch));
            _package = launch.spec.package.as_ref().map(|p| inner.packages.hold(&p.digest));
            _image = Some(inner.images.hold(&launch.spec.image, expected).await);
            match start(inner, task_id, attempt, launch, work_dir).await {
                Ok(Some((mut handle, output))) => {
                    let at = Some(Timestamp::now());
                    if !report(inner, task_id, Event::Start { attempt, at, runtime: handle.runtime() }).await {
                        // The task was given away or ended meanwhile: never let
                        // it run, and leave nothing of it (its container, or
                        // the warm container's turn).
                        let _ = handle.kill().await;
                        let _ = handle.wait().await;
                        if let Err(e) = handle.remove().await {
                            tracing::warn!(task = %task_id, error = %e, "could not remove the container of an attempt the cluster took back");
                        }
                        return;
                    }
                    (time_left, handle, output, 0)
                }
                Ok(None) => return,
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(task = %task_id, attempt, error = %e, "the node's disk is full: the attempt goes back to the queue");
                    let _ = tokio::fs::remove_dir_all(work_dir).await;
                    tokio::time::sleep(DISK_FULL_PAUSE).await;
                    report(inner, task_id, Event::Interrupted { attempt }).await;
                    return;
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::info!(task = %task_id, %reason, "attempt could not start");
                    report(inner, task_id, Event::StartFailed { attempt, reason }).await;
                    return;
                }
            }
        }
    };
    let log_writer = tokio::spawn(logs::capture(inner.backend.clone(), task_id, attempt, inner.config.log_limits, already, output));
    let deadline = tokio::time::sleep(time_left);
    tokio::pin!(deadline);
    let mut shutdown = inner.shutdown.subscribe();
    let mut timed_out = false;
    let mut stop_reason = None;
    if *cancel.borrow() {
        stop_reason = Some(StopReason::Cancelled);
    }
    let status: Result<ExitStatus, DriverError> = loop {
        if timed_out || stop_reason.is_some() {
            break stop(inner, handle.as_mut()).await;
        }
        tokio::select! {
            // An adopted attempt that exited while no agent watched reports
            // its real exit, even if its deadline has passed since.
            biased;
            status = handle.wait() => break status,
            _ = &mut deadline => timed_out = true,
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() { stop_reason = Some(StopReason::Cancelled); }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    if inner.driver.attempts_survive_agent() && handle.outlives_agent() && !inner.config.stop_on_shutdown {
                        // Leave it running: the next start of this agent adopts it.
                        inner.left_running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        log_writer.abort();
                        tracing::info!(task = %task_id, attempt, "agent stopping; attempt left running for adoption");
                        return;
                    }
                    stop_reason = Some(StopReason::Shutdown);
                }
            }
        }
    };
    let exited_at = Timestamp::now();
    // Whatever the task forked is stopped with it, so that its output pipes close.
    let _ = handle.kill().await;
    if tokio::time::timeout(Duration::from_secs(10), log_writer).await.is_err() {
        tracing::warn!(task = %task_id, "output did not end 10 s after the attempt; stopped capturing");
    }
    // A clean shutdown leaves nothing to adopt: the attempt runs again.
    if let Err(e) = handle.remove().await {
        tracing::warn!(task = %task_id, error = %e, "could not remove the attempt's container");
    }
    if fenced.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!(task = %task_id, attempt, "attempt given away elsewhere: stopped, not reported");
        return;
    }
    let usage = status.as_ref().ok().and_then(|s| s.usage);
    let event = match (stop_reason, timed_out, status) {
        (Some(StopReason::Cancelled), _, _) => Event::Cancelled { attempt, usage },
        (Some(StopReason::Shutdown), _, _) => Event::Interrupted { attempt },
        (None, true, _) => Event::TimedOut { attempt, usage },
        (None, false, Ok(status)) => Event::Exit {
            attempt,
            code: status.code,
            oom_killed: status.oom_killed,
            at: Some(status.finished_at.unwrap_or(exited_at)),
            usage,
            result: read_result(&work_dir.join("out")),
        },
        (None, false, Err(e)) => Event::Lost { attempt, reason: format!("driver lost track of the attempt: {e}") },
    };
    report(inner, task_id, event).await;
}

/// What the task wrote to its result file, at most
/// [`shepherd_core::lifecycle::MAX_RESULT_BYTES`]: a regular file only,
/// never through a link (the task owns the directory: a link to a host
/// file, a FIFO, or a device is no result).
fn read_result(dir: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(dir.join("result")).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(shepherd_core::lifecycle::MAX_RESULT_BYTES as u64).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// SIGTERM, then SIGKILL after the grace period. The SIGTERM is sent once
/// more after a second: one that lands while the task's init is still
/// starting (before it forwards signals) would otherwise be lost, and the
/// task would always take the whole grace period.
async fn stop(inner: &Inner, handle: &mut dyn AttemptHandle) -> Result<ExitStatus, DriverError> {
    handle.terminate().await?;
    let grace = inner.config.stop_grace;
    let again = Duration::from_secs(1).min(grace);
    if let Ok(status) = tokio::time::timeout(again, handle.wait()).await {
        return status;
    }
    handle.terminate().await?;
    match tokio::time::timeout(grace.saturating_sub(again), handle.wait()).await {
        Ok(status) => status,
        Err(_) => {
            handle.kill().await?;
            handle.wait().await
        }
    }
}

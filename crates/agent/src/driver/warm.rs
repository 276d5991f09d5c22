//! Warm containers (a task's `reuse`): containers that run many tasks of one
//! project, one at a time, so that a short task costs no container create,
//! start, wait and remove.
//!
//! A warm container's entrypoint is `shepherd-runner` (a static binary from
//! this workspace, bind-mounted read-only), which is its PID 1. The agent
//! speaks the runner's protocol ([`shepherd_runner::protocol`]) over the
//! container's attached stdin and stdout: no host socket, no other mount.
//! Payload and secret files travel in the run request and land on the
//! container's tmpfs mounts. Between tasks the runner resets the container
//! (every other process killed, scratch directories emptied, the task's
//! files removed); one that does not answer its reset with `ok`, whose task
//! was OOM-killed, whose runner broke the protocol, or that ran its
//! `max_tasks`, is removed, never reused.
//!
//! The pool is keyed by the task's [`shepherd_core::shape::WarmKey`]
//! (project, image reference, user, workdir, network, limits, pull policy)
//! and the image's resolved id, compared in full (never by a hash of
//! them): containers are never shared across projects or keys.
//! At most `warm_max` containers (busy or idle) per key, and
//! `warm_max_per_project` per project on this node (an idle container of
//! another key of the project is removed to make room; warm containers
//! are the project's, so one project cannot fill a node with them); a task
//! that finds none free and the key full waits for one (up to 10 s), then
//! runs cold. Idle containers are removed after
//! their last task's `idle_seconds`, and all of them when the driver shuts
//! down. The containers are created with `StdinOnce`: if the agent dies,
//! the engine closes their stdin, the runner kills what runs and exits, and
//! the next start of the agent removes the exited containers.

use super::container::{hardened_host_config, tmpfs_options, LABEL_NODE, LABEL_PROJECT};
use super::engine::{engine_error, is_status, oom_event_logged};
use super::seam::AttemptHandle;
use super::spec::{AttemptSpec, DriverError, ExitStatus, OutputChunk, OutputSender};
use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use shepherd_core::{AttemptRuntime, LogStream, ReusePolicy};
use shepherd_runner::protocol::{self, Exited, FileSpec, Kind, Ready, ResetDone, RunRequest, SignalRequest};
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Label on every warm container: the task key it serves.
pub const LABEL_WARM: &str = "io.shepherd.warm";

/// Where the runner binary appears inside a warm container.
const RUNNER_PATH: &str = "/shepherd-runner";

/// How long a new warm container may take to say `Ready`.
const READY_WAIT: Duration = Duration::from_secs(15);
/// How long a run request may take to be answered (it writes the payload).
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a reset may take.
const RESET_WAIT: Duration = Duration::from_secs(15);
/// How long a task waits for a busy warm container of its key before it
/// runs cold.
const WARM_WAIT: Duration = Duration::from_secs(10);
/// How long a SIGKILL exit is watched for the engine's `oom` event.
const OOM_WAIT: Duration = Duration::from_secs(3);

/// Settings of warm containers.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// The static `shepherd-runner` on the engine's host.
    pub runner: std::path::PathBuf,
    /// Most warm containers per key (busy and idle).
    pub max_per_key: usize,
    /// Most warm containers of one project on this node (busy and idle).
    pub max_per_project: usize,
}

/// A pool's key: the task's warm key and the image's resolved id, both
/// compared in full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    task_key: shepherd_core::shape::WarmKey,
    image_id: String,
}

/// What the runner sent, other than output.
#[derive(Debug)]
enum Control {
    Ready(Ready),
    Started,
    Exited(Exited),
    ResetDone(ResetDone),
    Failure(String),
    /// The conversation is over: the container's output ended, or the
    /// runner broke the protocol.
    Ended(String),
}

/// A conversation with one container's runner.
struct Conn {
    name: String,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    control: tokio::sync::mpsc::UnboundedReceiver<Control>,
    /// Where the current task's output goes; taken at its `Exited`.
    sink: Arc<Mutex<Option<OutputSender>>>,
    decoder: tokio::task::JoinHandle<()>,
    /// Tasks it has run.
    tasks: u32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.decoder.abort();
    }
}

impl Conn {
    async fn send(&mut self, kind: Kind, body: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(5 + body.len());
        protocol::write_frame(&mut frame, kind, body)?;
        self.input.write_all(&frame).await?;
        self.input.flush().await
    }

    async fn send_json(&mut self, kind: Kind, value: &impl serde::Serialize) -> std::io::Result<()> {
        let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        self.send(kind, &body).await
    }

    /// The next control message, or `Ended` after `wait`.
    async fn next(&mut self, wait: Duration) -> Control {
        match tokio::time::timeout(wait, self.control.recv()).await {
            Ok(Some(control)) => control,
            Ok(None) => Control::Ended("the runner's output ended".into()),
            Err(_) => Control::Ended(format!("the runner did not answer within {} s", wait.as_secs())),
        }
    }

    fn set_sink(&self, output: Option<OutputSender>) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = output;
    }
}

/// Reads the runner's frames from the container's output: task output goes
/// to the sink, the rest to `control`. The runner's own stderr is logged.
async fn decode(
    name: String,
    mut stream: Pin<Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    sink: Arc<Mutex<Option<OutputSender>>>,
) {
    // The conversation is over: the task's output ends with it.
    let end = |why: String| {
        sink.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = control.send(Control::Ended(why));
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => buffer.extend_from_slice(&message),
            Some(Ok(LogOutput::StdErr { message })) => {
                tracing::warn!(container = %name, "runner: {}", String::from_utf8_lossy(&message).trim_end());
                continue;
            }
            Some(Ok(LogOutput::StdIn { .. })) => continue,
            Some(Err(e)) => return end(format!("reading the runner's output: {e}")),
            None => return end("the container's output ended".into()),
        }
        let mut at = 0;
        loop {
            let (kind, body) = match protocol::frame_at(&buffer[at..]) {
                Ok(Some((kind, body, whole))) => {
                    at += whole;
                    (kind, body.to_vec())
                }
                Ok(None) => break,
                Err(e) => return end(format!("the runner sent a bad frame: {e}")),
            };
            let message = match kind {
                Kind::Stdout | Kind::Stderr => {
                    let stream = if kind == Kind::Stdout { LogStream::Stdout } else { LogStream::Stderr };
                    let sender = sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(sender) = sender {
                        let _ = sender.send(OutputChunk { stream, data: body }).await;
                    }
                    continue;
                }
                Kind::Exited => {
                    // No output of the task follows its exit: its log ends here.
                    sink.lock().unwrap_or_else(|e| e.into_inner()).take();
                    protocol::decode(&body).map(Control::Exited)
                }
                Kind::Ready => protocol::decode(&body).map(Control::Ready),
                Kind::Started => Ok(Control::Started),
                Kind::ResetDone => protocol::decode(&body).map(Control::ResetDone),
                Kind::Failure => protocol::decode::<protocol::Failure>(&body).map(|f| Control::Failure(f.message)),
                Kind::Run | Kind::Signal | Kind::Reset => {
                    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the runner sent a request frame ({kind:?})")))
                }
            };
            match message {
                Ok(message) => {
                    if control.send(message).is_err() {
                        return;
                    }
                }
                Err(e) => return end(format!("the runner sent a bad frame: {e}")),
            }
        }
        buffer.drain(..at);
    }
}

/// An idle warm container.
struct Idle {
    conn: Conn,
    until: Instant,
}

#[derive(Default)]
struct State {
    idle: HashMap<PoolKey, Vec<Idle>>,
    /// Containers per key, busy or idle.
    count: HashMap<PoolKey, usize>,
    /// Containers per project, busy or idle.
    per_project: HashMap<String, usize>,
    /// Every warm container this driver runs now.
    live: HashSet<String>,
    /// Signalled when a container of the key comes back or goes away.
    freed: HashMap<PoolKey, Arc<tokio::sync::Notify>>,
}

/// The warm containers of one driver.
pub(super) struct Pool {
    docker: Docker,
    node_id: String,
    config: WarmConfig,
    pids_limit: i64,
    tmp_size_mib: u32,
    state: Mutex<State>,
    /// False while the node drains: containers are removed after their task.
    keep: std::sync::atomic::AtomicBool,
    /// What the engine said of each image reference lately.
    images: Mutex<HashMap<String, (Instant, Arc<ImageFacts>)>>,
}

/// What a warm task needs of its image: the resolved id and the config a
/// cold container would get from it.
#[derive(Debug)]
struct ImageFacts {
    id: String,
    /// What an attempt records as the image it ran.
    digest: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    working_dir: Option<String>,
    /// The image declares volumes.
    volumes: bool,
}

/// How long an image's facts are reused before the engine is asked again
/// (a tag moved to another image is seen at most this late).
const IMAGE_FACTS_FOR: Duration = Duration::from_secs(2);

/// How a warm task runs: argv, env, workdir, worked out from the image's
/// config as the engine would for a cold container.
struct Plan {
    key: PoolKey,
    /// The image the task runs, exactly.
    image_digest: String,
    request: RunRequest,
    /// Where the task's result goes on the host (the attempt's `out`
    /// directory, read as for a cold container).
    out_dir: Option<std::path::PathBuf>,
}

impl Pool {
    pub(super) fn new(docker: Docker, node_id: String, config: WarmConfig, pids_limit: i64, tmp_size_mib: u32) -> Arc<Pool> {
        let keep = std::sync::atomic::AtomicBool::new(true);
        let pool =
            Arc::new(Pool { docker, node_id, config, pids_limit, tmp_size_mib, state: Mutex::default(), keep, images: Mutex::default() });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(pool) = weak.upgrade() else { return };
                pool.remove_expired().await;
            }
        });
        pool
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether containers are kept after their task (false while the node drains).
    pub(super) fn keep_idle(&self, keep: bool) {
        self.keep.store(keep, std::sync::atomic::Ordering::SeqCst);
    }

    /// The names of every warm container this driver runs now.
    pub(super) fn live(&self) -> HashSet<String> {
        self.state().live.clone()
    }

    /// The task keys of idle warm containers (what the node reports for
    /// `warm_locality`).
    pub(super) fn idle_keys(&self) -> Vec<String> {
        let state = self.state();
        let mut keys: Vec<String> = state.idle.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.task_key.hint()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    async fn remove_expired(&self) {
        let now = Instant::now();
        let expired: Vec<(PoolKey, Conn)> = {
            let mut state = self.state();
            let mut expired = Vec::new();
            for (key, idle) in state.idle.iter_mut() {
                let (gone, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(idle).into_iter().partition(|i| i.until <= now);
                *idle = kept;
                expired.extend(gone.into_iter().map(|i| (key.clone(), i.conn)));
            }
            state.idle.retain(|_, v| !v.is_empty());
            expired
        };
        for (key, conn) in expired {
            tracing::debug!(container = %conn.name, "warm container idle past its time; removed");
            self.discard(&key, conn).await;
        }
    }

    /// Removes every idle warm container (the agent is stopping). Returns how many.
    pub(super) async fn remove_idle(&self) -> usize {
        let idle: Vec<(PoolKey, Conn)> = {
            let mut state = self.state();
            std::mem::take(&mut state.idle)
                .into_iter()
                .flat_map(|(key, idle)| idle.into_iter().map(move |i| (key.clone(), i.conn)))
                .collect()
        };
        let count = idle.len();
        for (key, conn) in idle {
            self.discard(&key, conn).await;
        }
        count
    }

    /// Removes a container for good.
    async fn discard(&self, key: &PoolKey, conn: Conn) {
        let name = conn.name.clone();
        drop(conn);
        self.state().live.remove(&name);
        self.uncount(key);
        remove_container(&self.docker, &name).await;
    }

    /// The image's id and config, from the engine at most [`IMAGE_FACTS_FOR`]
    /// ago; `None` if the engine lacks it.
    async fn image_facts(&self, reference: &str) -> Result<Option<Arc<ImageFacts>>, DriverError> {
        let cached = self.images.lock().unwrap_or_else(|e| e.into_inner()).get(reference).cloned();
        if let Some((at, facts)) = cached {
            if at.elapsed() < IMAGE_FACTS_FOR {
                return Ok(Some(facts));
            }
        }
        let image = match self.docker.inspect_image(reference).await {
            Ok(image) => image,
            Err(e) if is_status(&e, &[404]) => return Ok(None),
            Err(e) => return Err(engine_error("inspecting the image", e)),
        };
        let digest = super::pull::image_digest(reference, &image);
        let Some(id) = image.id else { return Ok(None) };
        let config = image.config.unwrap_or_default();
        let facts = Arc::new(ImageFacts {
            digest,
            id,
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            volumes: config.volumes.is_some_and(|v| !v.is_empty()),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
        });
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        images.retain(|_, (at, _)| at.elapsed() < IMAGE_FACTS_FOR);
        images.insert(reference.to_string(), (Instant::now(), facts.clone()));
        Ok(Some(facts))
    }

    /// Works out the task's run request and key from the image's config.
    /// `None` when the engine lacks the image (the cold path pulls it).
    async fn plan(&self, spec: &AttemptSpec, task_key: shepherd_core::shape::WarmKey) -> Result<Option<Plan>, DriverError> {
        let Some(image) = self.image_facts(&spec.image).await? else { return Ok(None) };
        if image.volumes {
            // A VOLUME is writable, and emptying it would drop what the
            // image put there: such images always run cold.
            tracing::debug!(image = %spec.image, "the image declares volumes; running cold");
            return Ok(None);
        }
        let mut argv = image.entrypoint.clone();
        if spec.command.is_empty() {
            argv.extend(image.cmd.iter().cloned());
        } else {
            argv.extend(spec.command.iter().cloned());
        }
        if argv.is_empty() {
            return Err(DriverError::StartFailed("no command: the task gives none and the image has no entrypoint or cmd".into()));
        }
        // The task's environment; the runner puts it over the container's
        // own (the image's, PATH, HOSTNAME, HOME), as the engine would.
        let mut env = super::container::task_env(spec);
        let workdir = spec.workdir.clone().or_else(|| image.working_dir.clone());
        let mut files = Vec::new();
        use base64::Engine as _;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        if let Some(path) = &spec.payload_file {
            let bytes = tokio::fs::read(path).await?;
            files.push(FileSpec { path: super::container::PAYLOAD_PATH.into(), mode: 0o444, data: encode(&bytes) });
        }
        if let Some(dir) = &spec.secrets_dir {
            files.extend(read_only_files(dir, super::container::SECRETS_PATH).await?);
        }
        // Its dependencies' results, read-only files on the container's
        // tmpfs; its own result file, in a directory the runner makes
        // writable and sends back with the exit.
        if let Some(dir) = &spec.inputs_dir {
            files.extend(read_only_files(dir, super::container::INPUTS_PATH).await?);
            env.push(("SHEPHERD_INPUTS_DIR".into(), super::container::INPUTS_PATH.into()));
        }
        let result_file = spec.out_dir.as_ref().map(|_| format!("{}/result", super::container::RESULT_DIR));
        if let Some(file) = &result_file {
            env.push(("SHEPHERD_RESULT_FILE".into(), file.clone()));
        }
        Ok(Some(Plan {
            key: PoolKey { task_key, image_id: image.id.clone() },
            image_digest: image.digest.clone(),
            request: RunRequest { argv, env, workdir, files, result_file },
            out_dir: spec.out_dir.clone(),
        }))
    }

    /// Starts the attempt in a warm container: an idle one of its key, or a
    /// new one while the key has room. `None`: run it cold (the image is
    /// missing, the key is full, or no warm container could be made).
    pub(super) async fn start(
        self: &Arc<Pool>,
        spec: &AttemptSpec,
        reuse: ReusePolicy,
        task_key: shepherd_core::shape::WarmKey,
        output: &OutputSender,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        let Some(plan) = self.plan(spec, task_key).await? else { return Ok(None) };
        let give_up = Instant::now() + WARM_WAIT;
        loop {
            // An idle container of the key, else room for a new one, else
            // wait for one to come back (a reset takes milliseconds; a
            // container costs the engine a hundred or more).
            let (idle, room, evicted, freed) = {
                let mut state = self.state();
                let idle = state.idle.get_mut(&plan.key).and_then(Vec::pop);
                let key_room = idle.is_none() && state.count.get(&plan.key).copied().unwrap_or(0) < self.config.max_per_key;
                // The project's own cap on this node: an idle container of
                // another of its keys makes room (the longest idle first).
                let mut evicted = None;
                let project = &plan.key.task_key.project;
                if key_room && state.per_project.get(project).copied().unwrap_or(0) >= self.config.max_per_project {
                    let oldest = state
                        .idle
                        .iter()
                        .filter(|(k, v)| k.task_key.project == *project && !v.is_empty())
                        .min_by_key(|(_, v)| v.iter().map(|i| i.until).min())
                        .map(|(k, _)| k.clone());
                    if let Some(key) = oldest {
                        if let Some(list) = state.idle.get_mut(&key) {
                            if let Some(at) = list.iter().enumerate().min_by_key(|(_, i)| i.until).map(|(at, _)| at) {
                                evicted = Some((key.clone(), list.remove(at).conn));
                            }
                        }
                    }
                }
                let room =
                    key_room && (evicted.is_some() || state.per_project.get(project).copied().unwrap_or(0) < self.config.max_per_project);
                if room {
                    *state.count.entry(plan.key.clone()).or_default() += 1;
                    *state.per_project.entry(project.clone()).or_default() += 1;
                }
                (idle, room, evicted, state.freed.entry(plan.key.clone()).or_default().clone())
            };
            if let Some((key, conn)) = evicted {
                tracing::debug!(container = %conn.name, "the project's warm containers are at their cap on this node; its longest idle removed");
                self.discard(&key, conn).await;
            }
            if let Some(idle) = idle {
                match self.run(&plan, idle.conn, reuse, output).await? {
                    Some(handle) => return Ok(Some(handle)),
                    None => continue,
                }
            }
            if room {
                let conn = match self.create(spec, &plan).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(task = %spec.task_id, error = %e, "could not make a warm container; running cold");
                        self.uncount(&plan.key);
                        return Ok(None);
                    }
                };
                match self.run(&plan, conn, reuse, output).await? {
                    Some(handle) => return Ok(Some(handle)),
                    None => continue,
                }
            }
            if tokio::time::timeout_at(give_up, freed.notified()).await.is_err() {
                tracing::debug!(task = %spec.task_id, "every warm container of the task's key stayed busy; running cold");
                return Ok(None);
            }
        }
    }

    /// One container fewer of `key`; a task waiting for one may make one.
    fn uncount(&self, key: &PoolKey) {
        let mut state = self.state();
        if let Some(count) = state.count.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.count.remove(key);
            }
        }
        if let Some(count) = state.per_project.get_mut(&key.task_key.project) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_project.remove(&key.task_key.project);
            }
        }
        if let Some(freed) = state.freed.get(key) {
            freed.notify_one();
        }
    }

    /// Gives a task to a container. `Ok(None)` if the container turned out
    /// broken (it is discarded); a task that could not start is the
    /// attempt's failure, and the container goes back after a reset.
    async fn run(
        self: &Arc<Pool>,
        plan: &Plan,
        mut conn: Conn,
        reuse: ReusePolicy,
        output: &OutputSender,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        conn.set_sink(Some(output.clone()));
        let since = std::time::SystemTime::now();
        if let Err(e) = conn.send_json(Kind::Run, &plan.request).await {
            tracing::info!(container = %conn.name, error = %e, "warm container gone; discarded");
            self.discard(&plan.key, conn).await;
            return Ok(None);
        }
        match conn.next(START_WAIT).await {
            Control::Started => {
                let warm = conn.tasks > 0;
                conn.tasks += 1;
                Ok(Some(Box::new(WarmAttempt {
                    pool: self.clone(),
                    key: plan.key.clone(),
                    runtime: AttemptRuntime { container: conn.name.clone(), warm, image_digest: Some(plan.image_digest.clone()) },
                    conn: Some(conn),
                    reuse,
                    since,
                    exited: None,
                    out_dir: plan.out_dir.clone(),
                    status: None,
                    broken: false,
                    killed: false,
                    oom: false,
                })))
            }
            Control::Failure(message) => {
                conn.set_sink(None);
                let pool = self.clone();
                let key = plan.key.clone();
                tokio::spawn(async move { pool.recycle(key, conn, reuse).await });
                Err(DriverError::StartFailed(message))
            }
            other => {
                tracing::info!(container = %conn.name, answer = ?other, "warm container did not take the task; discarded");
                self.discard(&plan.key, conn).await;
                Ok(None)
            }
        }
    }

    /// After a task: resets the container and keeps it for the next one,
    /// or removes it.
    async fn recycle(&self, key: PoolKey, mut conn: Conn, reuse: ReusePolicy) {
        if conn.tasks >= reuse.max_tasks {
            tracing::debug!(container = %conn.name, tasks = conn.tasks, "warm container ran its max_tasks; removed");
            return self.discard(&key, conn).await;
        }
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::debug!(container = %conn.name, "node draining: warm container removed after its task");
            return self.discard(&key, conn).await;
        }
        if let Err(e) = conn.send(Kind::Reset, &[]).await {
            tracing::info!(container = %conn.name, error = %e, "cannot reset the warm container; removed");
            return self.discard(&key, conn).await;
        }
        match conn.next(RESET_WAIT).await {
            Control::ResetDone(ResetDone { ok: true, .. }) => {
                let until = Instant::now() + Duration::from_secs(u64::from(reuse.idle_seconds));
                let mut state = self.state();
                if let Some(freed) = state.freed.get(&key) {
                    freed.notify_one();
                }
                state.idle.entry(key).or_default().push(Idle { conn, until });
            }
            Control::ResetDone(ResetDone { error, .. }) => {
                tracing::warn!(container = %conn.name, error = error.as_deref().unwrap_or("?"), "warm container did not reset cleanly; removed");
                self.discard(&key, conn).await;
            }
            other => {
                tracing::warn!(container = %conn.name, answer = ?other, "warm container did not answer its reset; removed");
                self.discard(&key, conn).await;
            }
        }
    }

    /// Creates, attaches to and starts a new warm container, and waits for
    /// its runner's `Ready`.
    async fn create(&self, spec: &AttemptSpec, plan: &Plan) -> Result<Conn, String> {
        let name = format!("shepherd-warm-{}", ulid::Ulid::new().to_string().to_lowercase());
        let body = self.body(spec, plan);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        // Live before the engine has it: a reconcile that lists containers
        // and then reads the live set never sees it as an orphan.
        self.state().live.insert(name.clone());
        if let Err(e) = self.docker.create_container(Some(options), body).await {
            self.state().live.remove(&name);
            return Err(format!("creating the container: {e}"));
        }
        let conn = self.attach_and_start(&name).await;
        if conn.is_err() {
            self.state().live.remove(&name);
            remove_container(&self.docker, &name).await;
        }
        conn
    }

    async fn attach_and_start(&self, name: &str) -> Result<Conn, String> {
        let options = AttachContainerOptionsBuilder::default().stream(true).stdin(true).stdout(true).stderr(true).logs(false).build();
        let attached = self.docker.attach_container(name, Some(options)).await.map_err(|e| format!("attaching: {e}"))?;
        let (control_tx, control) = tokio::sync::mpsc::unbounded_channel();
        let sink = Arc::new(Mutex::new(None));
        let decoder = tokio::spawn(decode(name.to_string(), attached.output, control_tx, sink.clone()));
        let mut conn = Conn { name: name.to_string(), input: attached.input, control, sink, decoder, tasks: 0 };
        self.docker.start_container(name, None).await.map_err(|e| format!("starting: {e}"))?;
        match conn.next(READY_WAIT).await {
            Control::Ready(Ready { version, pid1: true }) if version == protocol::VERSION => Ok(conn),
            Control::Ready(ready) => Err(format!("the runner is not usable here: {ready:?}")),
            other => Err(format!("the runner did not start: {other:?}")),
        }
    }

    /// The create body of a warm container: the cold container's hardening,
    /// with the runner as PID 1 (instead of the engine's init), stdin open,
    /// and tmpfs where the payload and secrets go.
    fn body(&self, spec: &AttemptSpec, plan: &Plan) -> ContainerCreateBody {
        let mut host_config = HostConfig {
            // The runner is PID 1, not the engine's init.
            init: Some(false),
            binds: Some(vec![format!("{}:{RUNNER_PATH}:ro", self.config.runner.display())]),
            ..hardened_host_config(spec, self.pids_limit, self.tmp_size_mib)
        };
        // Where the runner writes the payload and secrets.
        if let Some(tmpfs) = host_config.tmpfs.as_mut() {
            tmpfs.insert(super::container::SECRETS_PATH.to_string(), tmpfs_options(16));
            tmpfs.insert("/run/shepherd".to_string(), tmpfs_options(self.tmp_size_mib));
        }
        ContainerCreateBody {
            image: Some(plan.key.image_id.clone()),
            entrypoint: Some(vec![RUNNER_PATH.to_string()]),
            cmd: Some(Vec::new()),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_string(), self.node_id.clone()),
                (LABEL_PROJECT.to_string(), spec.project.clone()),
                (LABEL_WARM.to_string(), plan.key.task_key.hint()),
            ])),
            user: spec.user.clone(),
            network_disabled: Some(spec.network != "bridge"),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// Every file of a host directory as a read-only file under `target` in
/// the container (secrets, dependencies' results).
async fn read_only_files(dir: &std::path::Path, target: &str) -> std::io::Result<Vec<FileSpec>> {
    use base64::Engine as _;
    let mut files = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let bytes = tokio::fs::read(entry.path()).await?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push(FileSpec {
            path: format!("{target}/{name}"),
            mode: 0o444,
            data: base64::engine::general_purpose::STANDARD.encode(&bytes),
        });
    }
    Ok(files)
}

async fn remove_container(docker: &Docker, name: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => {}
        Err(e) if is_status(&e, &[404]) => {}
        Err(e) => tracing::warn!(container = %name, error = %e, "could not remove a warm container"),
    }
}

/// A task running in a warm container.
struct WarmAttempt {
    pool: Arc<Pool>,
    key: PoolKey,
    runtime: AttemptRuntime,
    /// `None` once given back to the pool or discarded.
    conn: Option<Conn>,
    reuse: ReusePolicy,
    /// When the task was given to the runner (for the `oom` event query).
    since: std::time::SystemTime,
    exited: Option<Exited>,
    /// Where the result the runner sent is written for the agent to read.
    out_dir: Option<std::path::PathBuf>,
    status: Option<ExitStatus>,
    /// The conversation broke: the container is never reused.
    broken: bool,
    /// Shepherd sent SIGKILL: a 137 exit is ours, not the kernel's.
    killed: bool,
    oom: bool,
}

#[async_trait]
impl AttemptHandle for WarmAttempt {
    async fn wait(&mut self) -> Result<ExitStatus, DriverError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(conn) = self.conn.as_mut() else { return Err(DriverError::Io(std::io::Error::other("the warm container is gone"))) };
        while self.exited.is_none() {
            match conn.control.recv().await {
                Some(Control::Exited(exited)) => self.exited = Some(exited),
                Some(Control::Ended(why)) | Some(Control::Failure(why)) => {
                    self.broken = true;
                    conn.set_sink(None);
                    return Err(DriverError::Io(std::io::Error::other(format!("the warm container's runner stopped answering: {why}"))));
                }
                Some(other) => tracing::debug!(container = %conn.name, ?other, "unexpected message from the runner; ignored"),
                None => {
                    self.broken = true;
                    return Err(DriverError::Io(std::io::Error::other("the warm container's runner went away")));
                }
            }
        }
        let exited = self.exited.clone().unwrap_or(Exited { code: 255, signal: None, cpu_ms: None, peak_memory_bytes: None, result: None });
        // The result, where the agent reads a cold container's (the
        // attempt's own directory on the host; the runner cut it already).
        if let (Some(dir), Some(result)) = (&self.out_dir, &exited.result) {
            use base64::Engine as _;
            // A result that cannot be kept is no result: the exit stands.
            match base64::engine::general_purpose::STANDARD.decode(result) {
                Ok(bytes) => {
                    if let Err(e) = tokio::fs::write(dir.join("result"), &bytes[..bytes.len().min(protocol::MAX_RESULT as usize)]).await {
                        tracing::warn!(container = %self.runtime.container, error = %e, "could not keep the task's result; none kept");
                    }
                }
                Err(e) => {
                    tracing::warn!(container = %self.runtime.container, error = %e, "the runner sent a result that is not base64; none kept")
                }
            }
        }
        // A SIGKILL that Shepherd did not send: the kernel's OOM killer, if
        // the engine logged an `oom` event for the container since the task
        // began (it lands a moment after the kill).
        if exited.signal == Some(9) && !self.killed {
            let since = self.since.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
            let deadline = Instant::now() + OOM_WAIT;
            while !self.oom && Instant::now() < deadline {
                self.oom = oom_event_logged(&self.pool.docker, &self.runtime.container, &since).await;
                if !self.oom {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let status = ExitStatus {
            code: exited.code,
            oom_killed: self.oom,
            finished_at: None,
            usage: match (exited.cpu_ms, exited.peak_memory_bytes) {
                (Some(cpu_ms), Some(peak_memory_bytes)) => Some(shepherd_core::Usage { cpu_ms, peak_memory_bytes }),
                _ => None,
            },
        };
        self.status = Some(status);
        Ok(status)
    }

    async fn terminate(&mut self) -> Result<(), DriverError> {
        self.signal(15).await
    }

    async fn kill(&mut self) -> Result<(), DriverError> {
        if self.exited.is_none() {
            self.killed = true;
        }
        self.signal(9).await
    }

    async fn remove(&mut self) -> Result<(), DriverError> {
        let Some(conn) = self.conn.take() else { return Ok(()) };
        if self.exited.is_none() || self.broken || self.oom {
            tracing::debug!(container = %conn.name, "warm container not reusable after this task; removed");
            self.pool.discard(&self.key, conn).await;
        } else {
            self.pool.recycle(self.key.clone(), conn, self.reuse).await;
        }
        Ok(())
    }

    fn runtime(&self) -> Option<AttemptRuntime> {
        Some(self.runtime.clone())
    }

    fn outlives_agent(&self) -> bool {
        false
    }
}

impl WarmAttempt {
    /// Signals the task's process group (not the container: the runner stays).
    async fn signal(&mut self, signal: i32) -> Result<(), DriverError> {
        if self.exited.is_some() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        if let Err(e) = conn.send_json(Kind::Signal, &SignalRequest { signal }).await {
            // The runner is gone; `wait` says so.
            tracing::debug!(container = %conn.name, error = %e, "cannot signal through the runner");
            self.broken = true;
            if signal == 9 {
                // Make sure nothing of the task runs on.
                remove_container(&self.pool.docker, &conn.name).await;
            }
        }
        Ok(())
    }
}

impl Drop for WarmAttempt {
    fn drop(&mut self) {
        // A handle dropped without `remove` (the agent stopped watching):
        // the container is not left running nor counted.
        if let Some(conn) = self.conn.take() {
            let (pool, key) = (self.pool.clone(), self.key.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { pool.discard(&key, conn).await });
            }
        }
    }
}

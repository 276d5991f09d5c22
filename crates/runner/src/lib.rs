//! The warm-container runner (issue 14): the PID 1 of a container that runs
//! many tasks of one project, one at a time, for the agent. It speaks
//! [`protocol`] on its stdin and stdout, runs each task in a process group
//! of its own, forwards its output, reports its exit, and between tasks
//! restores a clean state: every other process in the container killed and
//! reaped, the scratch directories emptied, the task's files removed, the
//! runner's own settings a task could change (limits, priorities, CPU
//! affinity, `oom_score_adj`: [`pid1`]) and `/dev` as they were at start,
//! or the reset fails and the agent never reuses the container.
//!
//! It decides nothing: timeouts, cancels and whether to reuse the container
//! are the agent's. It is built statically (`-C target-feature=+crt-static`)
//! so that it runs in images without a libc.

pub mod clean;
pub mod pid1;
pub mod protocol;
pub mod reap;

use base64::Engine as _;
use clean::Scratch;
use protocol::{Exited, Failure, Kind, Ready, ResetDone, RunRequest, SignalRequest, Started};
use reap::Reaper;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the runner cleans between tasks.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories emptied by every reset (their contents, not themselves:
    /// they are usually mount points), e.g. `/tmp` and the secrets directory.
    /// Their permissions are put back as they were when the runner started.
    pub scratch: Vec<PathBuf>,
    /// Whether this process is the container's PID 1: it then reaps every
    /// process, and a reset kills every other process and removes System V
    /// IPC objects. Tests on the host run it as an ordinary child.
    pub pid1: bool,
    /// The environment every task starts from (the runner's own at start),
    /// under the request's.
    pub base_env: Vec<(String, String)>,
    /// A device directory (`/dev`) a reset puts back as it was at start:
    /// what a task added removed, what it changed refused.
    pub dev: Option<PathBuf>,
}

/// How long a reset waits for killed processes to be reaped and for the
/// task's output pipes to close.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// How long after the task's process exits its output is still forwarded
/// while nothing more arrives (something it left behind may hold the pipes).
const DRAIN: Duration = Duration::from_millis(200);

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

fn send_json(out: &Out, kind: Kind, value: &impl serde::Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut out = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
    protocol::write_frame(&mut *out, kind, &body)
}

/// The task being run (or just ended).
struct Task {
    /// The process (and process group) id.
    pid: i32,
    /// Files written for it.
    files: Vec<PathBuf>,
    /// Forwards stdout and stderr.
    readers: Vec<JoinHandle<()>>,
    /// Waits for the process and says `Exited`.
    waiter: Option<JoinHandle<()>>,
    ended: Arc<Mutex<bool>>,
}

/// The runner's state between frames.
struct Runner {
    config: Config,
    scratch: Vec<Scratch>,
    out: Out,
    /// Output is forwarded only while this matches the task that wrote it.
    generation: Arc<AtomicU64>,
    /// Reaps every process, as PID 1.
    reaper: Option<Arc<Reaper>>,
    task: Option<Task>,
    /// A task was asked for since the last reset (even one that failed to
    /// start): the next needs a reset first.
    dirty: bool,
    /// As PID 1: its own settings at start (or why they could not be read).
    settings: Option<Result<pid1::Settings, String>>,
    /// `/dev` at start.
    dev: Option<clean::DevSnapshot>,
}

/// Serves the protocol until `input` ends (or breaks); then kills what is
/// left.
pub fn serve(mut input: impl Read, output: impl Write + Send + 'static, config: Config) -> io::Result<()> {
    let scratch = config.scratch.iter().cloned().map(Scratch::record).collect();
    // Read on this thread, which forks every task and resets: nice and
    // affinity are per thread.
    let settings = config.pid1.then(|| pid1::Settings::read().map_err(|e| e.to_string()));
    let dev = config.dev.as_deref().and_then(clean::DevSnapshot::record);
    let reaper = config.pid1.then(Reaper::start);
    let mut runner = Runner {
        settings,
        dev,
        config,
        scratch,
        out: Arc::new(Mutex::new(Box::new(output))),
        generation: Arc::new(AtomicU64::new(0)),
        reaper,
        task: None,
        dirty: false,
    };
    send_json(&runner.out, Kind::Ready, &Ready { version: protocol::VERSION, pid1: runner.config.pid1 })?;
    let result = loop {
        match protocol::read_frame(&mut input) {
            Ok(Some((kind, body))) => runner.handle(kind, &body)?,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // The agent went away (or broke the protocol): nothing may outlive the
    // conversation.
    let _ = runner.reset();
    result
}

impl Runner {
    fn fail(&self, message: String) -> io::Result<()> {
        send_json(&self.out, Kind::Failure, &Failure { message })
    }

    fn handle(&mut self, kind: Kind, body: &[u8]) -> io::Result<()> {
        match kind {
            Kind::Run => {
                if self.task.as_ref().is_some_and(|t| !*t.ended.lock().unwrap_or_else(|e| e.into_inner())) {
                    return self.fail("a task is already running".into());
                }
                if self.dirty {
                    return self.fail("reset before the next task".into());
                }
                let request: RunRequest = match protocol::decode(body) {
                    Ok(request) => request,
                    Err(e) => return self.fail(format!("bad run request: {e}")),
                };
                self.dirty = true;
                let id = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                // `Started` goes out before any output or exit of the task:
                // its forwarders and waiter need the output lock, held here.
                let out = self.out.clone();
                let mut writer = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
                match start(&request, &self.config.base_env, &self.out, &self.generation, id, self.reaper.clone()) {
                    Ok(started) => {
                        let body = serde_json::to_vec(&Started { pid: started.pid }).map_err(io::Error::other)?;
                        self.task = Some(started);
                        protocol::write_frame(&mut *writer, Kind::Started, &body)?;
                    }
                    Err(message) => {
                        drop(writer);
                        return self.fail(message);
                    }
                }
            }
            Kind::Signal => {
                let request: SignalRequest = match protocol::decode(body) {
                    Ok(request) => request,
                    Err(e) => return self.fail(format!("bad signal request: {e}")),
                };
                if let Some(t) = self.task.as_ref().filter(|t| !*t.ended.lock().unwrap_or_else(|e| e.into_inner())) {
                    // The whole process group: what the task started too.
                    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
                    unsafe { libc::kill(-t.pid, request.signal) };
                }
            }
            Kind::Reset => {
                let done = self.reset();
                send_json(&self.out, Kind::ResetDone, &done)?;
            }
            other => return self.fail(format!("unexpected frame {other:?}")),
        }
        Ok(())
    }

    /// Restores a clean state after the last task. `ok` only if every step
    /// worked and this is PID 1 (elsewhere other processes cannot all be
    /// killed, nor IPC objects removed).
    fn reset(&mut self) -> ResetDone {
        let mut problems = Vec::new();
        let task = self.task.take();
        self.dirty = false;
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.config.pid1 {
            // SAFETY: kill(-1) from PID 1 signals every other process in the
            // container's PID namespace; the runner itself is spared.
            unsafe { libc::kill(-1, libc::SIGKILL) };
        } else {
            if let Some(task) = &task {
                // SAFETY: kill(2) on the task's process group; no memory is touched.
                unsafe { libc::kill(-task.pid, libc::SIGKILL) };
            }
            problems.push("not PID 1: processes outside the task's group may be left".to_string());
        }
        let deadline = Instant::now() + RESET_WAIT;
        let finished = |handle: &JoinHandle<()>| {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.is_finished()
        };
        if let Some(mut task) = task {
            if let Some(waiter) = task.waiter.take() {
                if finished(&waiter) {
                    let _ = waiter.join();
                } else {
                    problems.push("the task's process did not end".to_string());
                }
            }
            for reader in task.readers.drain(..) {
                if finished(&reader) {
                    let _ = reader.join();
                } else {
                    problems.push("the task's output is still held open".to_string());
                }
            }
            for file in &task.files {
                match std::fs::remove_file(file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => problems.push(format!("cannot remove {}: {e}", file.display())),
                }
            }
        }
        if self.config.pid1 {
            // Every other process gone (the reaper reaps them as they die).
            loop {
                match reap::other_processes() {
                    Ok(left) if left.is_empty() => break,
                    Ok(left) if Instant::now() >= deadline => {
                        problems.push(format!("processes still alive after SIGKILL: {left:?}"));
                        break;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => {
                        problems.push(format!("cannot list processes: {e}"));
                        break;
                    }
                }
            }
            if let Some(reaper) = &self.reaper {
                reaper.forget_unclaimed();
            }
            if let Err(e) = clean::remove_sysv_ipc() {
                problems.push(format!("cannot remove System V IPC objects: {e}"));
            }
        }
        for scratch in &self.scratch {
            if let Err(e) = scratch.restore() {
                problems.push(format!("cannot restore {}: {e}", scratch.path.display()));
            }
        }
        match &self.settings {
            Some(Ok(settings)) => problems.extend(settings.restore()),
            Some(Err(e)) => problems.push(format!("the runner's settings could not be read at start: {e}")),
            None => {}
        }
        if let Some(dev) = &self.dev {
            problems.extend(dev.restore());
        }
        ResetDone { ok: problems.is_empty(), error: (!problems.is_empty()).then(|| problems.join("; ")) }
    }
}

/// Writes the task's files and starts its process in a group of its own.
/// On failure, removes what it wrote.
fn start(
    request: &RunRequest,
    base_env: &[(String, String)],
    out: &Out,
    generation: &Arc<AtomicU64>,
    id: u64,
    reaper: Option<Arc<Reaper>>,
) -> Result<Task, String> {
    let mut files = Vec::new();
    let started = start_writing(request, base_env, out, generation, id, reaper, &mut files);
    if started.is_err() {
        for file in &files {
            let _ = std::fs::remove_file(file);
        }
    }
    started
}

fn start_writing(
    request: &RunRequest,
    base_env: &[(String, String)],
    out: &Out,
    generation: &Arc<AtomicU64>,
    id: u64,
    reaper: Option<Arc<Reaper>>,
    files: &mut Vec<PathBuf>,
) -> Result<Task, String> {
    let Some((program, args)) = request.argv.split_first() else { return Err("no command to run".into()) };
    for file in &request.files {
        let path = PathBuf::from(&file.path);
        if !path.is_absolute() {
            return Err(format!("file path `{}` is not absolute", file.path));
        }
        let data =
            base64::engine::general_purpose::STANDARD.decode(&file.data).map_err(|e| format!("file `{}` is not base64: {e}", file.path))?;
        files.push(path.clone());
        write_file(&path, &data, file.mode).map_err(|e| format!("cannot write `{}`: {e}", file.path))?;
    }
    if let Some(result) = &request.result_file {
        make_result_dir(Path::new(result)).map_err(|e| format!("cannot make the result directory of `{result}`: {e}"))?;
    }
    let result_file = request.result_file.clone().map(PathBuf::from);
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .current_dir(request.workdir.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe; it only makes the child the
    // leader of a new session and process group.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child: Child = command.spawn().map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let pid = child.id() as i32;
    if let Some(reaper) = &reaper {
        reaper.spawned();
    }
    let progress = Arc::new(Progress::new());
    let mut readers = Vec::new();
    let open = Arc::new(AtomicUsize::new(2));
    match child.stdout.take() {
        Some(stdout) => readers.push(forward(stdout, Kind::Stdout, out.clone(), generation.clone(), id, open.clone(), progress.clone())),
        None => drop(open.fetch_sub(1, Ordering::SeqCst)),
    }
    match child.stderr.take() {
        Some(stderr) => readers.push(forward(stderr, Kind::Stderr, out.clone(), generation.clone(), id, open.clone(), progress.clone())),
        None => drop(open.fetch_sub(1, Ordering::SeqCst)),
    }
    let ended = Arc::new(Mutex::new(false));
    let waiter = {
        let (out, generation, ended) = (out.clone(), generation.clone(), ended.clone());
        std::thread::spawn(move || {
            // As PID 1 the reaper waits for every process; elsewhere, the child.
            let (status, used) = match &reaper {
                Some(reaper) => {
                    let (status, used) = reaper.wait_for(pid);
                    (Some(std::process::ExitStatus::from_raw(status)), Some(used))
                }
                None => (child.wait().ok(), None),
            };
            // What is already in the pipes arrives first: until both close,
            // or until nothing has come for a moment (something the task
            // left behind may hold them open).
            progress.touch();
            while open.load(Ordering::SeqCst) > 0 && progress.since() < DRAIN {
                std::thread::sleep(Duration::from_millis(1));
            }
            let (code, signal) = match status {
                Some(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => (code, None),
                    (None, Some(signal)) => (128 + signal, Some(signal)),
                    (None, None) => (255, None),
                },
                None => (255, None),
            };
            let result = result_file.as_deref().and_then(read_result).map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
            let exited =
                Exited { code, signal, cpu_ms: used.map(|u| u.cpu_ms), peak_memory_bytes: used.map(|u| u.peak_memory_bytes), result };
            // Output written from now on (a background process) is not the
            // task's any more. Under the output lock, so that no output
            // frame of this task can follow its `Exited`.
            let Ok(mut writer) = out.lock() else { return };
            generation.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut ended) = ended.lock() {
                *ended = true;
            }
            if let Ok(body) = serde_json::to_vec(&exited) {
                let _ = protocol::write_frame(&mut *writer, Kind::Exited, &body);
            }
        })
    };
    Ok(Task { pid, files: std::mem::take(files), readers, waiter: Some(waiter), ended })
}

/// The result file's directory, writable for whatever user the task runs
/// as (the reset empties `/run/shepherd`, where it lives).
fn make_result_dir(file: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = file.parent() else { return Err(io::Error::other("no directory")) };
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// What the task left in its result file: a regular file only (a link, a
/// FIFO, a device are no result; opening never blocks nor follows the last
/// link), at most [`protocol::MAX_RESULT`] bytes.
fn read_result(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(protocol::MAX_RESULT).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Forwards one pipe as frames while the task is the current one.
/// When output last moved (read from a pipe or written to the agent).
struct Progress {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn since(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

fn forward(
    mut pipe: impl Read + Send + 'static,
    kind: Kind,
    out: Out,
    generation: Arc<AtomicU64>,
    id: u64,
    open: Arc<AtomicUsize>,
    progress: Arc<Progress>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    open.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => {
                    // After an error writing, the pipe is still read (and
                    // dropped), so the task never blocks on a full pipe.
                    progress.touch();
                    if let Ok(mut writer) = out.lock() {
                        if generation.load(Ordering::SeqCst) == id {
                            let _ = protocol::write_frame(&mut *writer, kind, &buffer[..n]);
                            progress.touch();
                        }
                    }
                }
            }
        }
    })
}

//! The warm-container runner (issue 14): the PID 1 of a container that runs
//! many tasks of one project, one at a time, for the agent. It speaks
//! [`protocol`] on its stdin and stdout, runs each task in a process group
//! of its own, forwards its output, reports its exit, and between tasks
//! restores a clean state: every other process in the container killed and
//! reaped, the scratch directories emptied, the task's files removed.
//!
//! It decides nothing: timeouts, cancels and whether to reuse the container
//! are the agent's. It is built statically (`-C target-feature=+crt-static`)
//! so that it runs in images without a libc.

pub mod protocol;

use base64::Engine as _;
use protocol::{Exited, Failure, Kind, Ready, ResetDone, RunRequest, SignalRequest};
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
    pub scratch: Vec<PathBuf>,
    /// Whether this process is the container's PID 1 (a reset then kills
    /// every other process). Tests on the host run it as an ordinary child.
    pub pid1: bool,
}

/// How long a reset waits for killed processes to be reaped and for the
/// task's output pipes to close.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// How long output still in the pipes is forwarded after the task's process
/// exits (a background process that keeps them open is cut off then).
const DRAIN: Duration = Duration::from_millis(200);

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(out: &Out, kind: Kind, body: &[u8]) -> io::Result<()> {
    let mut out = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
    protocol::write_frame(&mut *out, kind, body)
}

fn send_json(out: &Out, kind: Kind, value: &impl serde::Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    send(out, kind, &body)
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

/// Serves the protocol until `input` ends; then kills what is left.
pub fn serve(mut input: impl Read, output: impl Write + Send + 'static, config: Config) -> io::Result<()> {
    let out: Out = Arc::new(Mutex::new(Box::new(output)));
    // Output is forwarded only while this matches the task that wrote it.
    let generation = Arc::new(AtomicU64::new(0));
    send_json(&out, Kind::Ready, &Ready { version: protocol::VERSION, pid1: config.pid1 })?;
    let mut task: Option<Task> = None;
    while let Some((kind, body)) = protocol::read_frame(&mut input)? {
        match kind {
            Kind::Run => {
                if task.as_ref().is_some_and(|t| !*t.ended.lock().unwrap_or_else(|e| e.into_inner())) {
                    send_json(&out, Kind::Failure, &Failure { message: "a task is already running".into() })?;
                    continue;
                }
                if task.is_some() {
                    send_json(&out, Kind::Failure, &Failure { message: "reset before the next task".into() })?;
                    continue;
                }
                let request: RunRequest = match protocol::decode(&body) {
                    Ok(request) => request,
                    Err(e) => {
                        send_json(&out, Kind::Failure, &Failure { message: format!("bad run request: {e}") })?;
                        continue;
                    }
                };
                let id = generation.fetch_add(1, Ordering::SeqCst) + 1;
                match start(&request, &out, &generation, id) {
                    Ok(started) => task = Some(started),
                    Err(message) => send_json(&out, Kind::Failure, &Failure { message })?,
                }
            }
            Kind::Signal => {
                let request: SignalRequest = match protocol::decode(&body) {
                    Ok(request) => request,
                    Err(e) => {
                        send_json(&out, Kind::Failure, &Failure { message: format!("bad signal request: {e}") })?;
                        continue;
                    }
                };
                if let Some(t) = &task {
                    // The whole process group: what the task started too.
                    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
                    unsafe { libc::kill(-t.pid, request.signal) };
                }
            }
            Kind::Reset => {
                let done = reset(task.take(), &config, &generation);
                send_json(&out, Kind::ResetDone, &done)?;
            }
            other => {
                send_json(&out, Kind::Failure, &Failure { message: format!("unexpected frame {other:?}") })?;
            }
        }
    }
    // The agent went away: nothing may outlive the conversation.
    let _ = reset(task, &config, &generation);
    Ok(())
}

/// Writes the task's files and starts its process in a group of its own.
fn start(request: &RunRequest, out: &Out, generation: &Arc<AtomicU64>, id: u64) -> Result<Task, String> {
    let Some((program, args)) = request.argv.split_first() else { return Err("no command to run".into()) };
    let mut files = Vec::new();
    for file in &request.files {
        let path = PathBuf::from(&file.path);
        if !path.is_absolute() {
            return Err(format!("file path `{}` is not absolute", file.path));
        }
        let data =
            base64::engine::general_purpose::STANDARD.decode(&file.data).map_err(|e| format!("file `{}` is not base64: {e}", file.path))?;
        write_file(&path, &data, file.mode).map_err(|e| format!("cannot write `{}`: {e}", file.path))?;
        files.push(path);
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
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
    let mut readers = Vec::new();
    let open = Arc::new(AtomicUsize::new(2));
    match child.stdout.take() {
        Some(stdout) => readers.push(forward(stdout, Kind::Stdout, out.clone(), generation.clone(), id, open.clone())),
        None => drop(open.fetch_sub(1, Ordering::SeqCst)),
    }
    match child.stderr.take() {
        Some(stderr) => readers.push(forward(stderr, Kind::Stderr, out.clone(), generation.clone(), id, open.clone())),
        None => drop(open.fetch_sub(1, Ordering::SeqCst)),
    }
    let ended = Arc::new(Mutex::new(false));
    let waiter = {
        let (out, generation, ended) = (out.clone(), generation.clone(), ended.clone());
        std::thread::spawn(move || {
            let status = child.wait();
            // What is already in the pipes arrives first: until both close,
            // or for a moment if something the task left behind holds them.
            let drained_by = Instant::now() + DRAIN;
            while open.load(Ordering::SeqCst) > 0 && Instant::now() < drained_by {
                std::thread::sleep(Duration::from_millis(1));
            }
            let exited = match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exited { code, signal: None },
                    (None, Some(signal)) => Exited { code: 128 + signal, signal: Some(signal) },
                    (None, None) => Exited { code: 255, signal: None },
                },
                Err(_) => Exited { code: 255, signal: None },
            };
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
    Ok(Task { pid, files, readers, waiter: Some(waiter), ended })
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
fn forward(
    mut pipe: impl Read + Send + 'static,
    kind: Kind,
    out: Out,
    generation: Arc<AtomicU64>,
    id: u64,
    open: Arc<AtomicUsize>,
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
                    if let Ok(mut writer) = out.lock() {
                        if generation.load(Ordering::SeqCst) == id {
                            let _ = protocol::write_frame(&mut *writer, kind, &buffer[..n]);
                        }
                    }
                }
            }
        }
    })
}

/// Restores a clean state after `task`. `ok` only if every step worked and
/// this is PID 1 (elsewhere other processes cannot all be killed).
fn reset(task: Option<Task>, config: &Config, generation: &AtomicU64) -> ResetDone {
    let mut problems = Vec::new();
    if let Some(task) = &task {
        if !*task.ended.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: kill(2) on the task's process group; no memory is touched.
            unsafe { libc::kill(-task.pid, libc::SIGKILL) };
        }
    }
    generation.fetch_add(1, Ordering::SeqCst);
    if config.pid1 {
        // SAFETY: kill(-1) from PID 1 signals every other process in the
        // container's PID namespace; the runner itself is spared.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    } else if let Some(task) = &task {
        // SAFETY: as above, the task's process group only.
        unsafe { libc::kill(-task.pid, libc::SIGKILL) };
        problems.push("not PID 1: processes outside the task's group may be left".to_string());
    }
    let deadline = Instant::now() + RESET_WAIT;
    if let Some(mut task) = task {
        if let Some(waiter) = task.waiter.take() {
            let _ = waiter.join();
        }
        if config.pid1 {
            // Reap everything the kill ended (orphans are PID 1's children).
            loop {
                let mut status = 0;
                // SAFETY: waitpid(2) with WNOHANG writes only to `status`.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid < 0 {
                    break; // ECHILD: no child left
                }
                if pid == 0 {
                    if Instant::now() >= deadline {
                        problems.push("processes still alive after SIGKILL".to_string());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        for reader in task.readers.drain(..) {
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if reader.is_finished() {
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
    for dir in &config.scratch {
        if let Err(e) = empty_dir(dir) {
            problems.push(format!("cannot empty {}: {e}", dir.display()));
        }
    }
    ResetDone { ok: problems.is_empty(), error: (!problems.is_empty()).then(|| problems.join("; ")) }
}

/// Removes everything inside `dir`, and checks that nothing is left.
fn empty_dir(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // Not following links: a link is removed, never what it points to.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(io::Error::other("entries came back while it was emptied"));
    }
    Ok(())
}

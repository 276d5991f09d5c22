//! The `process` driver: the task's command runs as a child process on the
//! host. For machines without Docker and for testing the lifecycle; the
//! image is only recorded, and there is no isolation beyond a fresh
//! process group and a private working directory.
//!
//! Children are tied to the agent with `PR_SET_PDEATHSIG`, so an agent that
//! dies takes its tasks with it; after a restart their attempts are found
//! gone ([`Driver::recover`] returns `None`) and retried. Nothing is ever left
//! running unsupervised.

use super::seam::{AttemptHandle, Driver};
use super::spec::{AttemptSpec, Captured, DriverError, ExitStatus, OutputChunk, OutputSender};
use async_trait::async_trait;
use shepherd_core::{LogStream, TaskId};
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Runs attempts as host processes.
#[derive(Debug, Default)]
pub struct ProcessDriver;

struct ProcessAttempt {
    child: Child,
    pid: i32,
    /// Its usage once read at its exit (`Some(None)`: could not be): a
    /// `wait` cut short and called again goes straight to reaping.
    usage: Option<Option<shepherd_core::Usage>>,
}

/// Waits until `pid` (our child) has exited, without reaping it, and reads
/// what it and the children it waited for used: the kernel keeps a
/// zombie's resource usage (`waitid` with `WNOWAIT` fills `rusage`). The
/// exit is awaited on a pidfd, so no thread blocks. `None` where pidfds are
/// missing (Linux before 5.3) or the child is gone.
async fn usage_at_exit(pid: i32) -> Option<shepherd_core::Usage> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd was just opened for us and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd stays open and the same for the AsyncFd's whole life (it owns it).
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
    let _ready = fd.readable().await.ok()?;
    // SAFETY: zeroed siginfo_t and rusage are valid out-parameters.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) with valid pointers; WNOWAIT leaves the child to be reaped by `Child::wait`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PID,
            pid,
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOWAIT,
            &mut usage as *mut libc::rusage,
        )
    };
    if rc != 0 {
        return None;
    }
    let ms = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000;
    Some(shepherd_core::Usage { cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime), peak_memory_bytes: usage.ru_maxrss.max(0) as u64 * 1024 })
}

fn signal_group(pid: i32, signal: i32) -> std::io::Result<()> {
    // The child called setsid(), so its process group id is its pid and the
    // negative pid reaches it and everything it forked.
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(()) // already gone
    } else {
        Err(err)
    }
}

async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, stream: LogStream, output: OutputSender) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if output.send(OutputChunk { stream, data: buffer[..n].to_vec() }).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl AttemptHandle for ProcessAttempt {
    async fn wait(&mut self) -> Result<ExitStatus, DriverError> {
        use std::os::unix::process::ExitStatusExt;
        // What it used is read while it is a zombie, before it is reaped.
        let usage = match self.usage {
            Some(usage) => usage,
            None => *self.usage.insert(usage_at_exit(self.pid).await),
        };
        let status = self.child.wait().await?;
        let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(255);
        Ok(ExitStatus { code, oom_killed: false, finished_at: None, usage })
    }

    async fn terminate(&mut self) -> Result<(), DriverError> {
        Ok(signal_group(self.pid, libc::SIGTERM)?)
    }

    async fn kill(&mut self) -> Result<(), DriverError> {
        Ok(signal_group(self.pid, libc::SIGKILL)?)
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &AttemptSpec, output: OutputSender) -> Result<Box<dyn AttemptHandle>, DriverError> {
        let Some((program, args)) = spec.command.split_first() else {
            return Err(DriverError::StartFailed("the process driver needs a command: it cannot run an image's default entrypoint".into()));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &spec.work_dir)
            .envs(&spec.env)
            .env("SHEPHERD_TASK_ID", spec.task_id.to_string())
            .env("SHEPHERD_ATTEMPT", spec.attempt.to_string())
            .env("SHEPHERD_NODE_ID", &spec.node_id)
            .current_dir(&spec.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(file) = &spec.payload_file {
            command.env("SHEPHERD_PAYLOAD_FILE", file);
        }
        if let Some(dir) = &spec.secrets_dir {
            command.env("SHEPHERD_SECRETS_DIR", dir);
        }
        if let Some(dir) = &spec.package_dir {
            command.env("SHEPHERD_TASK_DIR", dir);
        }
        if let Some(dir) = &spec.out_dir {
            command.env("SHEPHERD_RESULT_FILE", dir.join("result"));
        }
        if let Some(dir) = &spec.inputs_dir {
            command.env("SHEPHERD_INPUTS_DIR", dir);
        }
        if !spec.volumes.is_empty() || !spec.networks.is_empty() || spec.gpus > 0 || !spec.devices.is_empty() {
            // No mounts, network namespaces or device cgroups here: refused, not ignored.
            return Err(DriverError::StartFailed(
                "project volumes, networks, devices and GPUs need the docker driver (this node runs tasks as plain processes)".into(),
            ));
        }
        if spec.scratch.is_some() {
            // No mounts here: a directory in the attempt's own, removed with
            // it (its size is not enforced).
            let dir = spec.work_dir.join("scratch");
            std::fs::create_dir_all(&dir).map_err(|e| DriverError::StartFailed(format!("making the scratch directory: {e}")))?;
            command.env("SHEPHERD_SCRATCH_DIR", dir);
        }
        // SAFETY: only async-signal-safe calls (setsid, prctl) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The agent keeps its own files private (umask 077); the
                // task gets the usual default.
                libc::umask(0o022);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DriverError::StartFailed(format!("command `{program}` not found")),
            std::io::ErrorKind::PermissionDenied => DriverError::StartFailed(format!("command `{program}` is not executable")),
            _ => DriverError::StartFailed(format!("could not start `{program}`: {e}")),
        })?;
        let pid = child.id().map(|p| p as i32).ok_or_else(|| DriverError::StartFailed("child exited at once".into()))?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump(stdout, LogStream::Stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump(stderr, LogStream::Stderr, output));
        }
        Ok(Box::new(ProcessAttempt { child, pid, usage: None }))
    }

    async fn recover(
        &self,
        _task_id: TaskId,
        _attempt: u32,
        _output: OutputSender,
        _captured: Captured,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        // Children die with the agent (PDEATHSIG): nothing survives to adopt.
        Ok(None)
    }
}

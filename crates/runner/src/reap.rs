//! PID 1's duty: reaping every process that ends in the container (the
//! task's own process, and the orphans it leaves, which become PID 1's
//! children), so that zombies never pile up against the pids limit while a
//! long task runs. The task's exit status is handed to whoever waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What a process used, from the kernel's record at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// Reaps every child of this process, on a thread of its own.
pub struct Reaper {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Exit statuses (as `waitpid` gives them) and what each used, not yet claimed.
    exited: HashMap<i32, (i32, Used)>,
    /// Bumped after each spawn, so a reaper with no children wakes up.
    spawned: u64,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper { state: Mutex::new(State::default()), changed: Condvar::new() });
        let worker = reaper.clone();
        std::thread::spawn(move || worker.run());
        reaper
    }

    fn run(&self) {
        let mut seen = 0;
        loop {
            let mut status = 0;
            // SAFETY: a zeroed rusage is a valid out-parameter.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4(2) writes only to `status` and `usage`.
            let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
            if pid > 0 {
                let ms = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000;
                let used =
                    Used { cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime), peak_memory_bytes: usage.ru_maxrss.max(0) as u64 * 1024 };
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.exited.insert(pid, (status, used));
                self.changed.notify_all();
                continue;
            }
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No child at all: the next one can only come from a spawn.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.spawned == seen {
                state = self.changed.wait_timeout(state, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
            }
            seen = state.spawned;
        }
    }

    /// Says that a child was just spawned.
    pub fn spawned(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.spawned += 1;
        self.changed.notify_all();
    }

    /// Waits for `pid` to end; its raw `waitpid` status, and what it (and
    /// the children it waited for) used.
    pub fn wait_for(&self, pid: i32) -> (i32, Used) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(status) = state.exited.remove(&pid) {
                return status;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Forgets the statuses of processes nobody waits for (orphans).
    pub fn forget_unclaimed(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).exited.clear();
    }
}

/// The other processes in this PID namespace (from `/proc`), zombies
/// included.
pub fn other_processes() -> std::io::Result<Vec<i32>> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) {
            if pid != me {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

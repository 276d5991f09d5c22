//! The runner's own settings that a task can change from inside the
//! container, and that every later task would inherit from it: a task runs
//! as the runner's user, so it may `prlimit`, `renice`, `taskset`,
//! `ionice` or `chrt` PID 1, or write its `oom_score_adj`. They are read
//! when the runner starts and put back by every reset; what cannot be put
//! back (a lowered hard limit, a nice value the container may not lower
//! again without `CAP_SYS_NICE`) fails the reset, so the container is never
//! given another task.
//!
//! Per-thread settings (nice, affinity, policy, timer slack) are the main
//! thread's: it reads requests, resets, and forks every task.

use std::io;

/// The resource limits a process has (`getrlimit(2)`).
const RLIMITS: [(libc::__rlimit_resource_t, &str); 16] = [
    (libc::RLIMIT_AS, "as"),
    (libc::RLIMIT_CORE, "core"),
    (libc::RLIMIT_CPU, "cpu"),
    (libc::RLIMIT_DATA, "data"),
    (libc::RLIMIT_FSIZE, "fsize"),
    (libc::RLIMIT_LOCKS, "locks"),
    (libc::RLIMIT_MEMLOCK, "memlock"),
    (libc::RLIMIT_MSGQUEUE, "msgqueue"),
    (libc::RLIMIT_NICE, "nice"),
    (libc::RLIMIT_NOFILE, "nofile"),
    (libc::RLIMIT_NPROC, "nproc"),
    (libc::RLIMIT_RSS, "rss"),
    (libc::RLIMIT_RTPRIO, "rtprio"),
    (libc::RLIMIT_RTTIME, "rttime"),
    (libc::RLIMIT_SIGPENDING, "sigpending"),
    (libc::RLIMIT_STACK, "stack"),
];

/// `ioprio_get`/`ioprio_set`'s "a process" (`IOPRIO_WHO_PROCESS`).
const IOPRIO_WHO_PROCESS: libc::c_long = 1;

/// What a task could change of the runner, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    rlimits: Vec<(u64, u64)>,
    nice: i32,
    /// The CPUs it may run on (a bit mask of `cpu_set_t`'s words).
    affinity: Vec<u64>,
    /// The scheduling policy (with `SCHED_RESET_ON_FORK`) and its priority.
    policy: (i32, i32),
    io_priority: i64,
    timer_slack: i64,
    oom_score_adj: Option<String>,
}

fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl Settings {
    /// Reads the calling thread's (and its process's) settings.
    pub fn read() -> io::Result<Settings> {
        let mut rlimits = Vec::with_capacity(RLIMITS.len());
        for (resource, name) in RLIMITS {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit(2) writes one rlimit into the struct given.
            if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
                return last_error(&format!("getrlimit {name}"));
            }
            rlimits.push((limit.rlim_cur, limit.rlim_max));
        }
        // getpriority(2) may return -1 as a value: errno tells.
        // SAFETY: errno is this thread's; getpriority reads no memory of ours.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                return last_error("getpriority");
            }
            nice
        };
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        let affinity = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return last_error("sched_getaffinity");
            }
            let words: [u64; std::mem::size_of::<libc::cpu_set_t>() / 8] = std::mem::transmute(set);
            words.to_vec()
        };
        // SAFETY: sched_getscheduler takes no pointer; sched_getparam writes one sched_param.
        let policy = unsafe {
            let policy = libc::sched_getscheduler(0);
            if policy < 0 {
                return last_error("sched_getscheduler");
            }
            let mut param = libc::sched_param { sched_priority: 0 };
            if libc::sched_getparam(0, &mut param) != 0 {
                return last_error("sched_getparam");
            }
            (policy, param.sched_priority)
        };
        // SAFETY: ioprio_get takes two integers and reads no memory.
        let io_priority = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long) };
        if io_priority < 0 {
            return last_error("ioprio_get");
        }
        // SAFETY: PR_GET_TIMERSLACK takes no pointer; the value is the return.
        let timer_slack = i64::from(unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) });
        let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj").ok().map(|s| s.trim().to_string());
        Ok(Settings { rlimits, nice, affinity, policy, io_priority, timer_slack, oom_score_adj })
    }

    /// Puts these settings back on the calling thread and its process;
    /// returns what differs afterwards (empty: all as they were).
    pub fn restore(&self) -> Vec<String> {
        let now = match Settings::read() {
            Ok(now) => now,
            Err(e) => return vec![format!("cannot read the runner's settings: {e}")],
        };
        if now == *self {
            return Vec::new();
        }
        for (i, (resource, _)) in RLIMITS.iter().enumerate() {
            if now.rlimits[i] != self.rlimits[i] {
                let limit = libc::rlimit { rlim_cur: self.rlimits[i].0, rlim_max: self.rlimits[i].1 };
                // SAFETY: setrlimit(2) reads one rlimit.
                unsafe { libc::setrlimit(*resource, &limit) };
            }
        }
        if now.oom_score_adj != self.oom_score_adj {
            if let Some(value) = &self.oom_score_adj {
                let _ = std::fs::write("/proc/self/oom_score_adj", value);
            }
        }
        // Policy before nice: leaving SCHED_IDLE depends on the nice value allowed.
        if now.policy != self.policy {
            let param = libc::sched_param { sched_priority: self.policy.1 };
            // SAFETY: sched_setscheduler reads one sched_param.
            unsafe { libc::sched_setscheduler(0, self.policy.0, &param) };
        }
        if now.nice != self.nice {
            // SAFETY: setpriority(2) takes integers only.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, self.nice) };
        }
        if now.affinity != self.affinity {
            let mut words = [0u64; std::mem::size_of::<libc::cpu_set_t>() / 8];
            words.copy_from_slice(&self.affinity);
            // SAFETY: the words are a cpu_set_t's bytes; sched_setaffinity reads its size.
            unsafe {
                let set: libc::cpu_set_t = std::mem::transmute(words);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
        if now.io_priority != self.io_priority {
            // SAFETY: ioprio_set takes integers only.
            unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0 as libc::c_long, self.io_priority) };
        }
        if now.timer_slack != self.timer_slack {
            // SAFETY: PR_SET_TIMERSLACK takes an integer.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, self.timer_slack as libc::c_ulong, 0, 0, 0) };
        }
        match Settings::read() {
            Ok(after) => self.differences(&after),
            Err(e) => vec![format!("cannot read the runner's settings: {e}")],
        }
    }

    /// What differs between these settings and `other`, by name.
    fn differences(&self, other: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (_, name)) in RLIMITS.iter().enumerate() {
            if self.rlimits[i] != other.rlimits[i] {
                out.push(format!("PID 1's rlimit {name} is {:?}, not {:?}", other.rlimits[i], self.rlimits[i]));
            }
        }
        let mut differ = |what: &str, differs: bool| {
            if differs {
                out.push(format!("PID 1's {what} was changed and cannot be put back"));
            }
        };
        differ("nice value", self.nice != other.nice);
        differ("CPU affinity", self.affinity != other.affinity);
        differ("scheduling policy", self.policy != other.policy);
        differ("I/O priority", self.io_priority != other.io_priority);
        differ("timer slack", self.timer_slack != other.timer_slack);
        differ("oom_score_adj", self.oom_score_adj != other.oom_score_adj);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_back_equal_and_changes_are_put_back() {
        // On a test thread of its own: nice and affinity are per thread.
        std::thread::spawn(|| {
            let before = Settings::read().unwrap();
            assert_eq!(Settings::read().unwrap(), before);
            // Raising the nice value and the timer slack needs no privilege.
            // SAFETY: integers only.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, (before.nice + 1).min(19));
                libc::prctl(libc::PR_SET_TIMERSLACK, 123_456 as libc::c_ulong, 0, 0, 0);
            }
            let changed = Settings::read().unwrap();
            assert_ne!(changed, before);
            let left = before.restore();
            // Lowering the nice value again may need a privilege the test lacks: then it says so.
            assert!(left.iter().all(|p| p.contains("nice")), "{left:?}");
            assert_eq!(Settings::read().unwrap().timer_slack, before.timer_slack);
        })
        .join()
        .unwrap();
    }
}

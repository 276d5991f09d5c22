//! A probe for the runner's container test (`tests/container.rs`): what a
//! hostile task does to PID 1 that busybox has no tool for, and what a
//! task inherits from it. Built statically beside the runner by
//! `scripts/test.sh` and bind-mounted into the test's container.
//!
//! - `pid1-probe show`: this process's limits, nice value, CPU affinity,
//!   scheduling policy, I/O priority, timer slack and `oom_score_adj`, one
//!   line (what PID 1 handed down at fork);
//! - `pid1-probe rlimit NAME SOFT HARD`: sets PID 1's limit (`prlimit(2)`);
//! - `pid1-probe idle`: puts PID 1 under `SCHED_IDLE`.

fn rlimit(name: &str) -> libc::__rlimit_resource_t {
    match name {
        "nofile" => libc::RLIMIT_NOFILE,
        "fsize" => libc::RLIMIT_FSIZE,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "nproc" => libc::RLIMIT_NPROC,
        "stack" => libc::RLIMIT_STACK,
        other => panic!("unknown limit {other}"),
    }
}

fn show() {
    let mut line = Vec::new();
    for name in ["nofile", "fsize", "core", "cpu", "nproc", "stack"] {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit.
        unsafe { libc::getrlimit(rlimit(name), &mut limit) };
        line.push(format!("{name}={}/{}", limit.rlim_cur, limit.rlim_max));
    }
    // SAFETY: integer-only calls, and sched_getaffinity/sched_getparam write into the structs given.
    unsafe {
        line.push(format!("nice={}", libc::getpriority(libc::PRIO_PROCESS, 0)));
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        line.push(format!("cpus={}", libc::CPU_COUNT(&set)));
        line.push(format!("policy={}", libc::sched_getscheduler(0)));
        line.push(format!("ioprio={}", libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, 0 as libc::c_long)));
        line.push(format!("slack={}", libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0)));
    }
    let oom = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    line.push(format!("oom={}", oom.trim()));
    println!("{}", line.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ok = match args.as_slice() {
        ["show"] => {
            show();
            true
        }
        ["rlimit", name, soft, hard] => {
            let limit = libc::rlimit { rlim_cur: soft.parse().expect("soft"), rlim_max: hard.parse().expect("hard") };
            // SAFETY: prlimit reads one rlimit and writes none (null old).
            unsafe { libc::prlimit(1, rlimit(name), &limit, std::ptr::null_mut()) == 0 }
        }
        ["idle"] => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler reads one sched_param.
            unsafe { libc::sched_setscheduler(1, libc::SCHED_IDLE, &param) == 0 }
        }
        _ => {
            eprintln!("usage: pid1-probe show | rlimit NAME SOFT HARD | idle");
            false
        }
    };
    if !ok {
        eprintln!("pid1-probe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
}

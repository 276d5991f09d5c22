//! `shepherd-runner [--scratch DIR]...`: the warm-container runner. Started
//! by the agent as a reused container's entrypoint; speaks the protocol of
//! `shepherd_runner::protocol` on stdin/stdout. Default scratch: `/tmp`,
//! `/run/secrets`, `/run/shepherd`, `/dev/shm` and `/dev/mqueue`.

use std::path::PathBuf;

fn main() {
    let mut scratch = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--scratch", Some(dir)) => scratch.push(PathBuf::from(dir)),
            _ => {
                eprintln!("usage: shepherd-runner [--scratch DIR]...");
                std::process::exit(2);
            }
        }
    }
    if scratch.is_empty() {
        scratch = ["/tmp", "/run/secrets", "/run/shepherd", "/dev/shm", "/dev/mqueue"].iter().map(PathBuf::from).collect();
    }
    let pid1 = std::process::id() == 1;
    if pid1 {
        // Not dumpable: without CAP_SYS_PTRACE (which containers do not
        // get), a task cannot open /proc/1/fd and write into the protocol.
        // Tasks are exec'd, which makes them dumpable again.
        // SAFETY: prctl(PR_SET_DUMPABLE) changes a flag of this process only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    let dev = pid1.then(|| PathBuf::from("/dev"));
    let config = shepherd_runner::Config { scratch, pid1, base_env: std::env::vars().collect(), dev };
    if let Err(e) = shepherd_runner::serve(std::io::stdin().lock(), std::io::stdout(), config) {
        eprintln!("shepherd-runner: {e}");
        std::process::exit(1);
    }
}

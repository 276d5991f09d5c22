//! Process-level setup of the long-running commands (`up`, `server`,
//! `agent`): private files, an exclusive lock on the data directory, and
//! enough file descriptors for thousands of tasks and connections.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Files Shepherd creates from now on are readable by its own user only
/// (the database, attempt directories, tokens): umask 077. Task processes
/// started by the process driver get the usual 022 back.
pub fn private_files() {
    // SAFETY: umask(2) cannot fail; it only swaps the process's mask.
    unsafe { libc::umask(0o077) };
}

/// Raises the soft limit on open files to the hard limit: each running
/// task holds pipes or an attached stream, each client a socket.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::debug!("could not raise the open files limit");
            }
        }
    }
}

/// Creates the data directory (mode 0700, also if it existed) and takes an
/// exclusive lock on it for as long as the returned file is open: a second
/// `shepherd` on the same directory would take the same node id and adopt
/// the first one's containers.
pub fn claim_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))?;
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who =
            if holder.is_empty() { "another shepherd process".to_string() } else { format!("another shepherd process (pid {holder})") };
        bail!("the data directory {} is in use by {who}; stop it first, or give this one its own --data-dir", dir.display());
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// A client command whose output goes to a closed pipe (`shepherd ps | head`)
/// ends quietly, as other Unix tools do, instead of panicking in `println!`.
pub fn quiet_on_closed_pipe() {
    // SAFETY: restores the default disposition of SIGPIPE (Rust ignores it).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_a_data_dir_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = claim_data_dir(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // flock is per open file description: a second open in this process conflicts too.
        let err = claim_data_dir(&data).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        claim_data_dir(&data).unwrap();
    }
}

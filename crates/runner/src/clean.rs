//! Restoring the container's writable state between tasks: scratch
//! directories emptied (and their own permissions put back), and, as PID 1
//! of the container's own IPC namespace, System V IPC objects removed.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch directory and the permissions it had when the runner started.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub path: PathBuf,
    /// `None`: it did not exist then (it is left alone).
    mode: Option<u32>,
}

impl Scratch {
    /// Records `path` as it is now.
    pub fn record(path: PathBuf) -> Scratch {
        let mode = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_dir()).map(|m| m.permissions().mode() & 0o7777);
        Scratch { path, mode }
    }

    /// Empties it and puts its permissions back.
    pub fn restore(&self) -> io::Result<()> {
        let Some(mode) = self.mode else { return Ok(()) };
        // Never through a link: a task may not redirect the reset.
        let meta = std::fs::symlink_metadata(&self.path)?;
        if !meta.is_dir() {
            return Err(io::Error::other("it is no longer a directory"));
        }
        empty_dir(&self.path)?;
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

/// Removes everything inside `dir`, and checks that nothing is left.
fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
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

/// Removes every System V shared memory segment, semaphore set and message
/// queue (listed in `/proc/sysvipc`). Only for PID 1 of a container, whose
/// IPC namespace is its own: on a host this would remove the host's.
pub fn remove_sysv_ipc() -> io::Result<()> {
    for (file, remove) in [
        // SAFETY (all three): the *ctl calls with IPC_RMID take an id and no
        // buffer that is read or written.
        ("/proc/sysvipc/shm", (|id| unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }) as fn(i32) -> i32),
        ("/proc/sysvipc/sem", |id| unsafe { libc::semctl(id, 0, libc::IPC_RMID) }),
        ("/proc/sysvipc/msg", |id| unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) }),
    ] {
        let table = match std::fs::read_to_string(file) {
            Ok(table) => table,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A header line, then one object per line: key, id, ...
        for line in table.lines().skip(1) {
            if let Some(id) = line.split_whitespace().nth(1).and_then(|id| id.parse::<i32>().ok()) {
                if remove(id) != 0 {
                    let e = io::Error::last_os_error();
                    // Gone meanwhile is as good as removed.
                    if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::EIDRM) {
                        return Err(io::Error::other(format!("{file} id {id}: {e}")));
                    }
                }
            }
        }
    }
    Ok(())
}

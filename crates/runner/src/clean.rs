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

/// What an entry of `/dev` is: its type, permissions, owner, device number
/// and (for a link) target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DevEntry {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    target: Option<PathBuf>,
}

impl DevEntry {
    fn of(path: &Path) -> io::Result<DevEntry> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        let target = meta.file_type().is_symlink().then(|| std::fs::read_link(path)).transpose()?;
        Ok(DevEntry {
            kind: meta.mode() & libc::S_IFMT,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev(),
            target,
        })
    }
}

/// The container's `/dev` as the runner found it: a root-owned tmpfs a
/// task running as root may write into (a file left there, a `/dev/null`
/// replaced by a file). A reset removes what was added and checks that
/// what was there still is; what it cannot make again (a device node
/// removed or replaced: making one needs `CAP_MKNOD`) fails the reset.
/// Mount points below it (`/dev/shm`, `/dev/mqueue`, `/dev/pts`) are
/// checked as entries, their contents are the scratch directories' or the
/// kernel's.
#[derive(Debug, Clone)]
pub struct DevSnapshot {
    root: PathBuf,
    device: u64,
    entries: std::collections::BTreeMap<PathBuf, DevEntry>,
}

impl DevSnapshot {
    /// Records `root` (`/dev`) as it is now; `None` if it is not a directory.
    pub fn record(root: &Path) -> Option<DevSnapshot> {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::symlink_metadata(root).ok().filter(|m| m.is_dir())?.dev();
        let mut entries = std::collections::BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let Ok(list) = std::fs::read_dir(&dir) else { continue };
            for entry in list.flatten() {
                let path = entry.path();
                let Ok(found) = DevEntry::of(&path) else { continue };
                let meta = std::fs::symlink_metadata(&path).ok();
                if found.kind == libc::S_IFDIR && meta.is_some_and(|m| m.dev() == device) {
                    dirs.push(path.clone());
                }
                entries.insert(path, found);
            }
        }
        Some(DevSnapshot { root: root.to_path_buf(), device, entries })
    }

    /// Removes what was added on `/dev`'s own filesystem, puts back the
    /// permissions of what was there, and returns what it could not.
    pub fn restore(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut problems = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(list) = std::fs::read_dir(&dir) else {
                problems.push(format!("cannot list {}", dir.display()));
                continue;
            };
            for entry in list.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if self.entries.contains_key(&path) {
                    if meta.is_dir() && meta.dev() == self.device {
                        dirs.push(path);
                    }
                    continue;
                }
                // Added by a task: removed, never followed.
                let removed = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                if let Err(e) = removed {
                    problems.push(format!("cannot remove {} (left by a task): {e}", path.display()));
                }
            }
        }
        for (path, was) in &self.entries {
            match DevEntry::of(path) {
                Ok(now) if now == *was => {}
                Ok(now) if DevEntry { mode: was.mode, ..now.clone() } == *was => {
                    // Only its permissions changed: put them back.
                    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(was.mode)) {
                        problems.push(format!("cannot restore the mode of {}: {e}", path.display()));
                    }
                }
                Ok(_) => problems.push(format!("{} was replaced by a task", path.display())),
                Err(_) => problems.push(format!("{} was removed by a task", path.display())),
            }
        }
        problems
    }
}

//! Code packages on a node: a zip checked against its SHA-256, unpacked
//! once per digest into a cache directory (readable by any user, since the
//! task's user inside a container is any uid), and mounted read-only into
//! the tasks that run it. Unpacking refuses what could escape the
//! directory (absolute paths, `..`, links) and bounds the files' count and
//! size, so a package cannot fill the node's disk.

use std::io::Read;
use std::path::{Path, PathBuf};

/// At most this many files in a package.
pub const MAX_FILES: usize = 10_000;
/// At most this many bytes unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;

/// The unpacked packages a node keeps: past this many bytes, the least
/// recently used ones that no attempt here uses are removed.
pub const CACHE_BUDGET_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Which packages the attempts of this node use (by digest, how many). A
/// package in use is never evicted; eviction runs under the same lock that
/// marks one in use, so no attempt starts on a directory being removed.
#[derive(Default)]
pub struct InUse {
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// Holds a package in use until dropped.
pub struct Hold<'a> {
    in_use: &'a InUse,
    digest: String,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.in_use.counts.lock() {
            if let Some(count) = counts.get_mut(&self.digest) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.digest);
                }
            }
        }
    }
}

impl InUse {
    /// Marks `digest` in use until the returned hold is dropped.
    pub fn hold(&self, digest: &str) -> Hold<'_> {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(digest.to_string()).or_default() += 1;
        }
        Hold { in_use: self, digest: digest.to_string() }
    }

    /// Removes the least recently used unpacked packages under `cache` that
    /// are not in use, until the rest fit in `budget` bytes. Returns how
    /// many it removed.
    pub fn evict(&self, cache: &Path, budget: u64) -> std::io::Result<usize> {
        let Ok(counts) = self.counts.lock() else { return Ok(0) };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(cache)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !shepherd_core::PackageRef::is_digest(&name) {
                continue;
            }
            let used = entry.metadata()?.modified().unwrap_or(std::time::UNIX_EPOCH);
            entries.push((used, name, dir_size(&entry.path())));
        }
        let mut total: u64 = entries.iter().map(|e| e.2).sum();
        entries.sort();
        let mut removed = 0;
        for (_, name, size) in entries {
            if total <= budget {
                break;
            }
            if counts.contains_key(&name) {
                continue;
            }
            std::fs::remove_dir_all(cache.join(&name))?;
            total = total.saturating_sub(size);
            removed += 1;
        }
        Ok(removed)
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Marks an unpacked package as just used (for eviction's order).
pub fn touch(dir: &Path) {
    if let Ok(file) = std::fs::File::open(dir) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Why a package could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the package is not a zip file: {0}")]
    NotZip(String),
    #[error("the package's SHA-256 is {found}, not {expected}")]
    Digest { expected: String, found: String },
    #[error("the package holds `{0}`, which is outside it (an absolute path, `..` or a link)")]
    Escapes(String),
    #[error("the package is too large unpacked (over {MAX_FILES} files or {MAX_UNPACKED_BYTES} bytes)")]
    TooLarge,
    #[error("the package has no file `{0}`")]
    NoExecutable(String),
    #[error("the package holds `{0}` twice, or as both a file and a directory")]
    Clash(String),
    #[error("the package's entry `{0}` is not what its header says (its size or checksum)")]
    Lies(String),
    #[error("could not unpack the package: {0}")]
    Io(#[from] std::io::Error),
}

/// SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a zip (paths relative to its root), checked as
/// [`unpack`] would check them.
pub fn files(zip: &[u8]) -> Result<Vec<String>, PackageError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() > MAX_FILES {
        return Err(PackageError::TooLarge);
    }
    // The zip crate keeps one entry per name: a name given twice shows as
    // fewer entries than the end record counts (unless that says zip64).
    let tail = &zip[zip.len().saturating_sub(65_557)..];
    if let Some(end) = tail.windows(4).rposition(|w| w == [0x50, 0x4b, 0x05, 0x06]) {
        if let Some(count) = tail.get(end + 10..end + 12).map(|b| u16::from_le_bytes([b[0], b[1]])) {
            if count != u16::MAX && usize::from(count) != archive.len() {
                return Err(PackageError::Clash("a name given twice".into()));
            }
        }
    }
    let mut names = Vec::new();
    let mut total = 0u64;
    // Every path and every directory above a file: a name met twice (as
    // two files, or a file where a directory must be) would fail the unpack.
    let mut files_seen = std::collections::HashSet::new();
    let mut dirs_seen = std::collections::HashSet::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| PackageError::NotZip(e.to_string()))?;
        let Some(path) = entry.enclosed_name().filter(|_| !entry.is_symlink()) else {
            return Err(PackageError::Escapes(entry.name().to_string()));
        };
        total = total.saturating_add(entry.size());
        if total > MAX_UNPACKED_BYTES {
            return Err(PackageError::TooLarge);
        }
        let name = path.to_string_lossy().into_owned();
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            let dir = dir.to_string_lossy().into_owned();
            if files_seen.contains(&dir) {
                return Err(PackageError::Clash(dir));
            }
            dirs_seen.insert(dir);
            parent = parent.and_then(Path::parent);
        }
        if entry.is_dir() {
            if files_seen.contains(&name) {
                return Err(PackageError::Clash(name));
            }
            dirs_seen.insert(name);
        } else {
            if dirs_seen.contains(&name) || !files_seen.insert(name.clone()) {
                return Err(PackageError::Clash(name));
            }
            names.push(name);
        }
    }
    Ok(names)
}

/// Checks a package as an upload must be checked: [`files`], and every
/// entry read to its end (CPU work: at most [`MAX_UNPACKED_BYTES`]), so
/// that a header that lies about an entry's size, or a checksum that does
/// not match, is refused now and not by every node that unpacks it.
pub fn verify(zip: &[u8]) -> Result<Vec<String>, PackageError> {
    let names = files(zip)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| PackageError::NotZip(e.to_string()))?;
    let mut read = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| PackageError::NotZip(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let (name, declared) = (entry.name().to_string(), entry.size());
        let left = MAX_UNPACKED_BYTES - read;
        // The zip crate checks the CRC at the end of the entry.
        let copied = std::io::copy(&mut (&mut entry).take(left + 1), &mut std::io::sink()).map_err(|_| PackageError::Lies(name.clone()))?;
        read += copied;
        if read > MAX_UNPACKED_BYTES {
            return Err(PackageError::TooLarge);
        }
        if copied != declared {
            return Err(PackageError::Lies(name));
        }
    }
    Ok(names)
}

/// Unpacks `zip` (whose SHA-256 must be `digest`) under `cache`, unless
/// it is there already; the directory holding its files.
pub fn unpack(zip: &[u8], digest: &str, cache: &Path) -> Result<PathBuf, PackageError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = cache.join(digest);
    if dir.is_dir() {
        return Ok(dir);
    }
    let found = sha256_hex(zip);
    if found != digest {
        return Err(PackageError::Digest { expected: digest.to_string(), found });
    }
    files(zip)?;
    std::fs::create_dir_all(cache)?;
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o755))?;
    // Unpacked beside its final place, then renamed: a reader never sees half a package.
    // Unique per call: attempts of one package may unpack it at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = cache.join(format!(".{digest}.{}.{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    let result = unpack_into(zip, &staging);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another attempt unpacked it first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(e.into()),
    }
}

fn unpack_into(zip: &[u8], root: &Path) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| PackageError::NotZip(e.to_string()))?;
    let mut written = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| PackageError::NotZip(e.to_string()))?;
        let Some(relative) = entry.enclosed_name().filter(|_| !entry.is_symlink()) else {
            return Err(PackageError::Escapes(entry.name().to_string()));
        };
        let path = root.join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut out = std::fs::File::create(&path)?;
        // Read at most what is left of the bound: a zip can lie about sizes.
        let left = MAX_UNPACKED_BYTES - written;
        let copied = std::io::copy(&mut (&mut entry).take(left + 1), &mut out)?;
        written += copied;
        if written > MAX_UNPACKED_BYTES {
            return Err(PackageError::TooLarge);
        }
        // Executable for everyone if the zip says so for its owner; readable by all.
        let executable = entry.unix_mode().is_some_and(|mode| mode & 0o100 != 0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buffer = std::io::Cursor::new(Vec::new());
        {
            let mut writer = zip::ZipWriter::new(&mut buffer);
            for (name, data) in files {
                writer.start_file(*name, zip::write::SimpleFileOptions::default().unix_permissions(0o755)).unwrap();
                writer.write_all(data).unwrap();
            }
            writer.finish().unwrap();
        }
        buffer.into_inner()
    }

    #[test]
    fn a_package_unpacks_once_by_digest_and_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("worker.sh", b"echo hi\n"), ("lib/util.sh", b"true\n")]);
        let digest = sha256_hex(&zip);
        assert_eq!(files(&zip).unwrap(), vec!["worker.sh", "lib/util.sh"]);
        let unpacked = unpack(&zip, &digest, dir.path()).unwrap();
        assert_eq!(std::fs::read(unpacked.join("lib/util.sh")).unwrap(), b"true\n");
        assert_eq!(unpack(&zip, &digest, dir.path()).unwrap(), unpacked, "a second unpack finds it");
        let wrong = unpack(&zip, &"0".repeat(64), dir.path()).unwrap_err();
        assert!(matches!(wrong, PackageError::Digest { .. }), "{wrong}");
        let evil = zip_of(&[("../../etc/passwd", b"x")]);
        assert!(matches!(files(&evil).unwrap_err(), PackageError::Escapes(_)));
        assert!(matches!(unpack(&evil, &sha256_hex(&evil), dir.path()).unwrap_err(), PackageError::Escapes(_)));
        assert!(matches!(files(b"not a zip").unwrap_err(), PackageError::NotZip(_)));
    }

    /// Replaces every `from` in the zip's bytes (names in both headers).
    fn patched(zip: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut out = zip.to_vec();
        let mut at = 0;
        while let Some(found) = out[at..].windows(from.len()).position(|w| w == from) {
            out[at + found..at + found + to.len()].copy_from_slice(to);
            at += found + to.len();
        }
        out
    }

    #[test]
    fn clashing_names_and_lying_headers_are_refused_at_upload() {
        let clash = zip_of(&[("a", b"file"), ("a/b", b"under a file")]);
        assert!(matches!(files(&clash).unwrap_err(), PackageError::Clash(name) if name == "a"));
        let twice = patched(&zip_of(&[("dup1", b"one"), ("dup2", b"two")]), b"dup2", b"dup1");
        assert!(matches!(verify(&twice).unwrap_err(), PackageError::Clash(_)));
        // A header that says 1 byte for 4,096 (central directory's
        // uncompressed size, at offset 24 of its header).
        let honest = {
            let mut buffer = std::io::Cursor::new(Vec::new());
            let mut writer = zip::ZipWriter::new(&mut buffer);
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            writer.start_file("big", options).unwrap();
            writer.write_all(&[b'z'; 4096]).unwrap();
            writer.finish().unwrap();
            buffer.into_inner()
        };
        assert_eq!(verify(&honest).unwrap(), vec!["big"]);
        let mut lying = honest.clone();
        let central = lying.windows(4).rposition(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
        lying[central + 24..central + 28].copy_from_slice(&1u32.to_le_bytes());
        assert!(files(&lying).is_ok(), "the headers alone look fine");
        assert!(matches!(verify(&lying).unwrap_err(), PackageError::Lies(name) if name == "big"));
    }

    #[test]
    fn eviction_removes_the_least_recently_used_packages_not_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let in_use = InUse::default();
        let mut digests = Vec::new();
        for n in 0..3 {
            let zip = zip_of(&[("data", &vec![b'x'; 1000 + n])]);
            let digest = sha256_hex(&zip);
            let unpacked = unpack(&zip, &digest, dir.path()).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - n as u64 * 10);
            std::fs::File::open(&unpacked).unwrap().set_modified(when).unwrap();
            digests.push(digest);
        }
        // The oldest is in use: the next oldest goes instead.
        let hold = in_use.hold(&digests[0]);
        assert_eq!(in_use.evict(dir.path(), 2100).unwrap(), 1);
        assert!(dir.path().join(&digests[0]).is_dir() && !dir.path().join(&digests[1]).exists() && dir.path().join(&digests[2]).is_dir());
        drop(hold);
        assert_eq!(in_use.evict(dir.path(), 1100).unwrap(), 1);
        assert!(!dir.path().join(&digests[0]).exists(), "released: evicted");
        assert_eq!(in_use.evict(dir.path(), 1100).unwrap(), 0, "within the budget");
    }

    #[test]
    fn attempts_unpacking_one_package_at_once_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("worker.sh", b"echo hi\n")]);
        let digest = sha256_hex(&zip);
        let unpacked: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| unpack(&zip, &digest, dir.path()).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(unpacked.iter().all(|d| d.join("worker.sh").is_file()));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no staging directory left: {left:?}");
    }
}

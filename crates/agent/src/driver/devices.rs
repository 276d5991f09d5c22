//! Devices and GPUs a node offers its tasks: host devices named on the
//! command line (`--device /dev/fuse`, or `/dev/fuse:/dev/fuse-in-task`),
//! and GPUs given to attempts one by one through the engine's
//! DeviceRequests, so that an attempt gets exactly the GPUs it was granted
//! and no two attempts share one.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// A host device a node offers, by name (the host path's file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// What tasks ask for: `fuse` for `/dev/fuse`.
    pub name: String,
    /// The device on the host.
    pub host: String,
    /// Where the task sees it (default: the same path).
    pub container: String,
}

impl HostDevice {
    /// Parses `HOST[:CONTAINER]`: absolute paths under `/dev/`.
    pub fn parse(text: &str) -> Result<HostDevice, String> {
        let (host, container) = text.split_once(':').unwrap_or((text, text));
        for path in [host, container] {
            let clean = path.starts_with("/dev/") && !path.split('/').any(|part| part == "..") && path.len() > 5;
            if !clean {
                return Err(format!("`{path}`: a device is a path under /dev/, e.g. /dev/fuse"));
            }
        }
        let name = host.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
        if !shepherd_core::is_short_name(&name) {
            return Err(format!("`{host}`: its name `{name}` must be 1-32 of a-z 0-9 - _"));
        }
        Ok(HostDevice { name, host: host.to_string(), container: container.to_string() })
    }

    /// The engine's mapping of this device into a container (read, write, mknod).
    pub fn mapping(&self) -> bollard::models::DeviceMapping {
        bollard::models::DeviceMapping {
            path_on_host: Some(self.host.clone()),
            path_in_container: Some(self.container.clone()),
            cgroup_permissions: Some("rwm".into()),
        }
    }
}

/// The engine's request for exactly these GPUs (by index), as `docker run
/// --gpus '"device=0,1"'` makes it.
pub fn gpu_request(ids: &[String]) -> Vec<bollard::models::DeviceRequest> {
    if ids.is_empty() {
        return Vec::new();
    }
    vec![bollard::models::DeviceRequest {
        driver: Some(String::new()),
        count: None,
        device_ids: Some(ids.to_vec()),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        options: None,
    }]
}

/// Which of a node's GPUs are free. Attempts take them at start and give
/// them back when their container is removed; adopted containers (after an
/// agent restart) hold theirs again.
#[derive(Debug, Default)]
pub struct GpuSlots {
    free: Mutex<BTreeSet<u32>>,
}

impl GpuSlots {
    /// GPUs 0..count, all free.
    pub fn new(count: u32) -> GpuSlots {
        GpuSlots { free: Mutex::new((0..count).collect()) }
    }

    /// Takes `n` free GPUs (lowest first); `None` if fewer are free.
    pub fn take(&self, n: u32) -> Option<Vec<String>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let mut free = self.free.lock().ok()?;
        if (free.len() as u32) < n {
            return None;
        }
        let taken: Vec<u32> = free.iter().copied().take(n as usize).collect();
        for id in &taken {
            free.remove(id);
        }
        Some(taken.into_iter().map(|id| id.to_string()).collect())
    }

    /// Marks GPUs held (an adopted container's).
    pub fn hold(&self, ids: &[String]) {
        if let Ok(mut free) = self.free.lock() {
            for id in ids.iter().filter_map(|id| id.parse::<u32>().ok()) {
                free.remove(&id);
            }
        }
    }

    /// Gives GPUs back.
    pub fn give_back(&self, ids: &[String]) {
        if let Ok(mut free) = self.free.lock() {
            free.extend(ids.iter().filter_map(|id| id.parse::<u32>().ok()));
        }
    }

    /// How many are free.
    pub fn free(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_to_names_and_mappings() {
        let fuse = HostDevice::parse("/dev/fuse").unwrap();
        assert_eq!((fuse.name.as_str(), fuse.host.as_str(), fuse.container.as_str()), ("fuse", "/dev/fuse", "/dev/fuse"));
        let moved = HostDevice::parse("/dev/null:/dev/shepherd-null").unwrap();
        assert_eq!((moved.name.as_str(), moved.container.as_str()), ("null", "/dev/shepherd-null"));
        assert_eq!(moved.mapping().cgroup_permissions.as_deref(), Some("rwm"));
        for bad in ["fuse", "/etc/passwd", "/dev/../etc/shadow", "/dev/fuse:/tmp/x", "/dev/"] {
            assert!(HostDevice::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gpus_are_granted_one_attempt_at_a_time_and_requested_by_id() {
        let slots = GpuSlots::new(4);
        let a = slots.take(2).unwrap();
        let b = slots.take(1).unwrap();
        assert_eq!((a.clone(), b.clone()), (vec!["0".to_string(), "1".to_string()], vec!["2".to_string()]));
        assert!(slots.take(2).is_none(), "one left");
        slots.give_back(&a);
        assert_eq!(slots.free(), 3);
        slots.hold(&["3".to_string()]);
        assert_eq!(slots.take(3), None);
        assert_eq!(slots.take(2), Some(vec!["0".to_string(), "1".to_string()]));
        // The engine's request names exactly the granted GPUs.
        let request = gpu_request(&b);
        assert_eq!(request.len(), 1);
        assert_eq!(request[0].device_ids, Some(vec!["2".to_string()]));
        assert_eq!(request[0].capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert!(gpu_request(&[]).is_empty(), "no GPU, no request");
    }
}

//! A task's placement shape: a hash of the fields that decide which nodes
//! may take it (project, profile, pool, resources, constraints and its
//! anti-affinity label value). Two queued tasks of one shape fit on exactly
//! the same nodes, so when one fits nowhere, neither does the other: the
//! scheduler skips a shape found not to fit instead of reading every task of
//! it, and explains every waiting task of that shape with one reason.
//!
//! The hash is FNV-1a over length-prefixed fields, stable across Rust
//! versions and processes, because stores keep it.

use crate::{AntiAffinitySpec, Resources, Task, TaskSpec};
use std::collections::BTreeMap;

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn opt(&mut self, text: Option<&str>) {
        match text {
            Some(text) => {
                self.bytes(b"1");
                self.bytes(text.as_bytes());
            }
            None => self.bytes(b"0"),
        }
    }
}

/// The placement shape of a task with these fields.
#[allow(clippy::too_many_arguments)]
pub fn placement_shape(
    project: &str,
    profile: Option<&str>,
    pool: Option<&str>,
    resources: Resources,
    constraints: &[String],
    anti_affinity: Option<&AntiAffinitySpec>,
    labels: &BTreeMap<String, String>,
    volumes: &[crate::VolumeMount],
    gpus: u32,
    devices: &[String],
) -> i64 {
    let mut h = Fnv::new();
    h.bytes(project.as_bytes());
    h.opt(profile);
    h.opt(pool);
    h.bytes(&resources.cpu_millicores.to_le_bytes());
    h.bytes(&resources.memory_mib.to_le_bytes());
    let mut sorted: Vec<&str> = constraints.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    h.bytes(&(sorted.len() as u64).to_le_bytes());
    for constraint in sorted {
        h.bytes(constraint.as_bytes());
    }
    match anti_affinity {
        Some(rule) => {
            h.bytes(b"1");
            h.bytes(rule.label.as_bytes());
            h.opt(labels.get(&rule.label).map(String::as_str));
            h.bytes(&rule.max_per_node.to_le_bytes());
        }
        None => h.bytes(b"0"),
    }
    // Volumes pin tasks to where they live. (Hashed only when there are
    // some: the shapes of tasks without stay what they were.)
    if !volumes.is_empty() {
        let mut names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        h.bytes(b"volumes");
        for name in names {
            h.bytes(name.as_bytes());
        }
    }
    if gpus > 0 || !devices.is_empty() {
        h.bytes(b"devices");
        h.bytes(&gpus.to_le_bytes());
        let mut sorted: Vec<&str> = devices.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        for device in sorted {
            h.bytes(device.as_bytes());
        }
    }
    h.0 as i64
}

/// `placement_shape` of a value with the task's placement fields (a spec
/// or a task: they name them alike).
macro_rules! shape_of {
    ($t:expr) => {
        placement_shape(
            &$t.project,
            $t.profile.as_deref(),
            $t.pool.as_deref(),
            $t.resources,
            &$t.constraints,
            $t.anti_affinity.as_ref(),
            &$t.labels,
            &$t.volumes,
            $t.gpus,
            &$t.devices,
        )
    };
}

impl TaskSpec {
    /// This task's placement shape (see [`crate::shape`]).
    pub fn placement_shape(&self) -> i64 {
        shape_of!(self)
    }
}

impl Task {
    /// This task's placement shape (see [`crate::shape`]).
    pub fn placement_shape(&self) -> i64 {
        shape_of!(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::{AntiAffinitySpec, Task, TaskId, TaskSpec, Timestamp};

    #[test]
    fn shape_follows_placement_fields_only() {
        let base = TaskSpec::new("busybox", vec!["true".into()]);
        let mut other_command = base.clone();
        other_command.command = vec!["false".into()];
        other_command.image = "alpine".into();
        other_command.priority = 7;
        other_command.labels.insert("x".into(), "1".into());
        assert_eq!(base.placement_shape(), other_command.placement_shape(), "command, image, priority and labels do not matter");
        let mut cpu = base.clone();
        cpu.resources.cpu_millicores += 1;
        assert_ne!(base.placement_shape(), cpu.placement_shape());
        let mut project = base.clone();
        project.project = "other".into();
        assert_ne!(base.placement_shape(), project.placement_shape());
        let mut c1 = base.clone();
        c1.constraints = vec!["a==1".into(), "b==2".into()];
        let mut c2 = base.clone();
        c2.constraints = vec!["b==2".into(), "a==1".into()];
        assert_eq!(c1.placement_shape(), c2.placement_shape(), "constraint order does not matter");
        assert_ne!(base.placement_shape(), c1.placement_shape());
        let mut aa1 = base.clone();
        aa1.labels.insert("svc".into(), "a".into());
        aa1.anti_affinity = Some(AntiAffinitySpec { label: "svc".into(), max_per_node: 1 });
        let mut aa2 = aa1.clone();
        aa2.labels.insert("svc".into(), "b".into());
        assert_ne!(aa1.placement_shape(), aa2.placement_shape(), "the anti-affinity label's value matters");
        let task = Task::from_spec(TaskId(ulid::Ulid::nil()), aa1.clone(), 0, Timestamp(0));
        assert_eq!(task.placement_shape(), aa1.placement_shape(), "spec and task agree");
    }

    #[test]
    fn shape_is_stable() {
        // Stores keep shapes: the hash of a fixed spec must never change.
        assert_eq!(TaskSpec::new("busybox", vec![]).placement_shape(), TaskSpec::new("x", vec![]).placement_shape());
        let mut spec = TaskSpec::new("busybox", vec![]);
        spec.project = "default".into();
        let value = spec.placement_shape();
        assert_eq!(value, super::placement_shape("default", None, None, Default::default(), &[], None, &Default::default(), &[], 0, &[]));
        assert_eq!(value, 8_031_604_373_575_033_668);
    }
}

/// What a node reports, among its images, for each key it holds an idle
/// warm container of: `warm=` and the key's hash. (No image reference
/// contains `=`.)
pub const WARM_PREFIX: &str = "warm=";

/// The key of the warm containers a task that asks for `reuse` may run in:
/// the fields that decide what its container is (project, image, user,
/// workdir, network, CPU and memory limits, pull policy), hashed, with
/// [`WARM_PREFIX`]. `None` for a task that does not ask for reuse. The
/// agent adds the image's resolved id; the scheduler prefers nodes that
/// report the key (`warm_locality`).
pub fn warm_key(spec: &TaskSpec) -> Option<String> {
    spec.reuse?;
    if spec.scratch.is_some() || !spec.volumes.is_empty() || !spec.networks.is_empty() || spec.gpus > 0 || !spec.devices.is_empty() {
        return None; // its mounts are the container's own: such tasks run cold
    }
    let mut h = Fnv::new();
    h.bytes(spec.project.as_bytes());
    h.bytes(spec.image.as_bytes());
    h.opt(spec.user.as_deref());
    h.opt(spec.workdir.as_deref());
    h.bytes(spec.network.as_bytes());
    h.bytes(&spec.resources.cpu_millicores.to_le_bytes());
    h.bytes(&spec.resources.memory_mib.to_le_bytes());
    h.bytes(format!("{:?}", spec.pull_policy).as_bytes());
    Some(format!("{WARM_PREFIX}{:016x}", h.0))
}

#[cfg(test)]
mod warm_key_tests {
    use super::*;

    #[test]
    fn warm_keys_are_per_project_and_container_shape() {
        let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
        assert_eq!(warm_key(&spec), None, "no reuse, no key");
        spec.reuse = Some(crate::ReusePolicy::default());
        spec.project = "a".into();
        let key = warm_key(&spec).unwrap();
        assert!(key.starts_with(WARM_PREFIX) && key.len() == WARM_PREFIX.len() + 16, "{key}");
        let mut same = spec.clone();
        same.command = vec!["other".into()];
        same.env.insert("X".into(), "1".into());
        same.reuse = Some(crate::ReusePolicy { idle_seconds: 5, max_tasks: 2 });
        assert_eq!(warm_key(&same).as_ref(), Some(&key), "command, env and the reuse settings are per task");
        let differs = |change: fn(&mut TaskSpec)| {
            let mut other = spec.clone();
            change(&mut other);
            warm_key(&other).unwrap() != key
        };
        assert!(differs(|s| s.project = "b".into()));
        assert!(differs(|s| s.image = "busybox:2".into()));
        assert!(differs(|s| s.user = Some("1000".into())));
        assert!(differs(|s| s.workdir = Some("/w".into())));
        assert!(differs(|s| s.network = "bridge".into()));
        assert!(differs(|s| s.resources.cpu_millicores += 1));
        assert!(differs(|s| s.resources.memory_mib += 1));
        assert!(differs(|s| s.pull_policy = crate::PullPolicy::Always));
    }
}

//! A task's placement shape: a keyed hash of the fields that decide which
//! nodes may take it (project, profile, pool, resources, constraints and its
//! anti-affinity label value). Two queued tasks of one shape fit on exactly
//! the same nodes, so when one fits nowhere, neither does the other: the
//! scheduler skips a shape found not to fit instead of reading every task of
//! it, and explains every waiting task of that shape with one reason.
//!
//! The shape stands for the task's identity in placement: a task whose
//! shape equals another's is skipped with it. So it is HMAC-SHA-256 under
//! the cluster's secret [`ShapeKey`] (kept by the store), truncated to 64
//! bits: a tenant cannot compute shapes, so cannot choose fields whose
//! shape collides with another project's (a plain 64-bit hash collides in
//! minutes). The project is one of the hashed fields, so shapes never span
//! projects. Stable across processes and servers: every server of a
//! cluster reads the same key.
//!
//! A warm container's key ([`WarmKey`]) is compared in full by the node
//! that keeps the containers; only its hint travels ([`WarmKey::hint`]).

use crate::{AntiAffinitySpec, Resources, Task, TaskSpec};
use std::collections::BTreeMap;

/// The cluster's secret for placement shapes.
#[derive(Clone)]
pub struct ShapeKey(ring::hmac::Key);

impl ShapeKey {
    /// A key from the cluster's secret bytes.
    pub fn new(secret: &[u8]) -> ShapeKey {
        ShapeKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// A key from the secret as the store keeps it (hex); `None` if it is not hex.
    pub fn from_hex(hex: &str) -> Option<ShapeKey> {
        let bytes = decode_hex(hex)?;
        (bytes.len() >= 16).then(|| ShapeKey::new(&bytes))
    }
}

impl std::fmt::Debug for ShapeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShapeKey(..)")
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// The fields of a shape or key, each length-prefixed, so that no two
/// different field lists encode alike.
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
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
    key: &ShapeKey,
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
    let mut h = Fields::default();
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
    let tag = ring::hmac::sign(&key.0, &h.0);
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag.as_ref()[..8]);
    i64::from_le_bytes(first)
}

/// `placement_shape` of a value with the task's placement fields (a spec
/// or a task: they name them alike).
macro_rules! shape_of {
    ($key:expr, $t:expr) => {
        placement_shape(
            $key,
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
    /// This task's placement shape under the cluster's key (see [`crate::shape`]).
    pub fn placement_shape(&self, key: &ShapeKey) -> i64 {
        shape_of!(key, self)
    }
}

impl Task {
    /// This task's placement shape under the cluster's key (see [`crate::shape`]).
    pub fn placement_shape(&self, key: &ShapeKey) -> i64 {
        shape_of!(key, self)
    }
}

#[cfg(test)]
mod tests {
    use super::ShapeKey;
    use crate::{AntiAffinitySpec, Task, TaskId, TaskSpec, Timestamp};

    fn key() -> ShapeKey {
        ShapeKey::new(b"a test key of the cluster, 32 bytes")
    }

    #[test]
    fn shape_follows_placement_fields_only() {
        let key = &key();
        let base = TaskSpec::new("busybox", vec!["true".into()]);
        let mut other_command = base.clone();
        other_command.command = vec!["false".into()];
        other_command.image = "alpine".into();
        other_command.priority = 7;
        other_command.labels.insert("x".into(), "1".into());
        assert_eq!(base.placement_shape(key), other_command.placement_shape(key), "command, image, priority and labels do not matter");
        let mut cpu = base.clone();
        cpu.resources.cpu_millicores += 1;
        assert_ne!(base.placement_shape(key), cpu.placement_shape(key));
        let mut project = base.clone();
        project.project = "other".into();
        assert_ne!(base.placement_shape(key), project.placement_shape(key));
        let mut c1 = base.clone();
        c1.constraints = vec!["a==1".into(), "b==2".into()];
        let mut c2 = base.clone();
        c2.constraints = vec!["b==2".into(), "a==1".into()];
        assert_eq!(c1.placement_shape(key), c2.placement_shape(key), "constraint order does not matter");
        assert_ne!(base.placement_shape(key), c1.placement_shape(key));
        let mut aa1 = base.clone();
        aa1.labels.insert("svc".into(), "a".into());
        aa1.anti_affinity = Some(AntiAffinitySpec { label: "svc".into(), max_per_node: 1 });
        let mut aa2 = aa1.clone();
        aa2.labels.insert("svc".into(), "b".into());
        assert_ne!(aa1.placement_shape(key), aa2.placement_shape(key), "the anti-affinity label's value matters");
        let task = Task::from_spec(TaskId(ulid::Ulid::nil()), aa1.clone(), 0, Timestamp(0));
        assert_eq!(task.placement_shape(key), aa1.placement_shape(key), "spec and task agree");
    }

    #[test]
    fn shapes_are_stable_under_one_key_and_differ_under_another() {
        // Stores keep shapes: the shape of a fixed spec under a fixed key never changes.
        let mut spec = TaskSpec::new("busybox", vec![]);
        spec.project = "default".into();
        let value = spec.placement_shape(&key());
        assert_eq!(
            value,
            super::placement_shape(&key(), "default", None, None, Default::default(), &[], None, &Default::default(), &[], 0, &[])
        );
        let other = ShapeKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_ne!(value, spec.placement_shape(&other), "another cluster's key gives other shapes");
        assert!(ShapeKey::from_hex("zz").is_none() && ShapeKey::from_hex("abcd").is_none());
    }

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        // A pool and a profile that spell the same bytes in another split
        // must not meet: every field is length-prefixed.
        let key = &key();
        let mut a = TaskSpec::new("busybox", vec![]);
        a.profile = Some("ab".into());
        a.pool = Some("c".into());
        let mut b = a.clone();
        b.profile = Some("a".into());
        b.pool = Some("bc".into());
        assert_ne!(a.placement_shape(key), b.placement_shape(key));
        let mut p = TaskSpec::new("busybox", vec![]);
        p.project = "ab".into();
        p.profile = Some("c".into());
        let mut q = p.clone();
        q.project = "a".into();
        q.profile = Some("bc".into());
        assert_ne!(p.placement_shape(key), q.placement_shape(key));
    }
}

/// What a node reports, among its images, for each key it holds an idle
/// warm container of: `warm=` and the key's hash. (No image reference
/// contains `=`.)
pub const WARM_PREFIX: &str = "warm=";

/// The key of the warm containers a task that asks for `reuse` may run
/// in: the fields that decide what its container is (project, image,
/// user, workdir, network, CPU and memory limits, pull policy). Compared in
/// full wherever a container is chosen, project first: a task never runs
/// in a container made for another key, whatever its fields hash to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WarmKey {
    pub project: String,
    pub image: String,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub network: String,
    pub cpu_millicores: u32,
    pub memory_mib: u32,
    pub pull_policy: crate::PullPolicy,
}

impl WarmKey {
    /// The key of a task that asks for reuse; `None` for one that does not,
    /// or whose mounts are its container's own (such tasks run cold).
    pub fn of(spec: &TaskSpec) -> Option<WarmKey> {
        spec.reuse?;
        if spec.scratch.is_some() || !spec.volumes.is_empty() || !spec.networks.is_empty() || spec.gpus > 0 || !spec.devices.is_empty() {
            return None;
        }
        Some(WarmKey {
            project: spec.project.clone(),
            image: spec.image.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            network: spec.network.clone(),
            cpu_millicores: spec.resources.cpu_millicores,
            memory_mib: spec.resources.memory_mib,
            pull_policy: spec.pull_policy,
        })
    }

    /// What a node reports for an idle container of this key, and what the
    /// scheduler's `warm_locality` looks for: [`WARM_PREFIX`] and 128 bits
    /// of SHA-256 over the fields (a preference only; finding two keys with
    /// one hint takes about 2^64 tries).
    pub fn hint(&self) -> String {
        let mut h = Fields::default();
        h.bytes(self.project.as_bytes());
        h.bytes(self.image.as_bytes());
        h.opt(self.user.as_deref());
        h.opt(self.workdir.as_deref());
        h.bytes(self.network.as_bytes());
        h.bytes(&self.cpu_millicores.to_le_bytes());
        h.bytes(&self.memory_mib.to_le_bytes());
        h.bytes(format!("{:?}", self.pull_policy).as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &h.0);
        let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{WARM_PREFIX}{hex}")
    }
}

/// The hint of the task's warm key ([`WarmKey::hint`]), `None` without one.
pub fn warm_key(spec: &TaskSpec) -> Option<String> {
    WarmKey::of(spec).map(|k| k.hint())
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
        assert!(key.starts_with(WARM_PREFIX) && key.len() == WARM_PREFIX.len() + 32, "{key}");
        let mut same = spec.clone();
        same.command = vec!["other".into()];
        same.env.insert("X".into(), "1".into());
        same.reuse = Some(crate::ReusePolicy { idle_seconds: 5, max_tasks: 2 });
        assert_eq!(warm_key(&same).as_ref(), Some(&key), "command, env and the reuse settings are per task");
        assert_eq!(WarmKey::of(&same), WarmKey::of(&spec));
        let differs = |change: fn(&mut TaskSpec)| {
            let mut other = spec.clone();
            change(&mut other);
            warm_key(&other).unwrap() != key && WarmKey::of(&other) != WarmKey::of(&spec)
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

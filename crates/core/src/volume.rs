//! Named volumes: a project's persistent storage, made on the Docker
//! Engine through a volume driver the admin allows for the project, and
//! mounted by the tasks that name it. Pure data and validation; the store
//! keeps volumes, the server resolves a task's mounts into the launch spec,
//! the docker driver makes and mounts them.

use crate::{FieldError, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most volumes one task may mount.
pub const MAX_MOUNTS: usize = 16;

/// Whether `name` is a valid volume name: 1-63 of lower-case letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit (it ends up in
/// the engine's volume name).
pub fn is_volume_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The engine's name of a project's volume: `shepherd-vol-PROJECT-NAME`.
/// Two projects could spell the same engine name (`a-b`+`c`, `a`+`b-c`):
/// the store keeps engine names unique, so the second is refused.
pub fn engine_volume_name(project: &str, name: &str) -> String {
    format!("shepherd-vol-{project}-{name}")
}

/// Where a volume's data lives, which decides where its tasks may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeScope {
    /// On one node's engine (the `local` driver's default): the volume is
    /// made on the node where its first task runs, and every later task
    /// that mounts it runs there too (the `volume_locality` filter).
    Node,
    /// The same data from every node (a multi-host driver, or `local` with
    /// an NFS or CIFS mount in its options): tasks may run anywhere.
    Cluster,
}

/// What `POST /v1/volumes` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// 1-63 of `a-z 0-9 - _ .`, starting with a letter or digit.
    pub name: String,
    /// The Docker volume driver (default `local`); must be on the
    /// project's allow-list.
    #[serde(default = "VolumeSpec::default_driver")]
    pub driver: String,
    /// Driver options (`docker volume create --opt`), at most 32.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// The size in MiB, where the driver can bound it (passed as the
    /// `size` option); counted against the project's `max_volume_size_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    /// Where its data lives (default: `node` for `local`, `cluster` for
    /// any other driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<VolumeScope>,
}

impl VolumeSpec {
    fn default_driver() -> String {
        "local".into()
    }

    /// A `local` volume with no options.
    pub fn local(name: impl Into<String>) -> VolumeSpec {
        VolumeSpec { name: name.into(), driver: Self::default_driver(), options: BTreeMap::new(), size_mib: None, scope: None }
    }

    /// The scope it has: the one given, else by driver.
    pub fn effective_scope(&self) -> VolumeScope {
        let nfs = matches!(self.options.get("type").map(String::as_str), Some("nfs" | "nfs4"));
        self.scope.unwrap_or(if self.driver == "local" && !nfs { VolumeScope::Node } else { VolumeScope::Cluster })
    }

    /// Refuses what the engine could not make or a tenant may not ask,
    /// naming the field. Options go through the allow-list of their driver
    /// ([`crate::volume_options`]) under the project's `policy`: a `local`
    /// volume is plain, a tmpfs or NFS from a listed server, never a host
    /// path.
    pub fn validate(&self, policy: &crate::ProjectPolicy) -> Result<(), FieldError> {
        if !is_volume_name(&self.name) {
            return Err(FieldError::new("name", format!("`{}`: use 1-63 of a-z 0-9 - _ . starting with a letter or digit", self.name)));
        }
        if !crate::tenant::is_driver_name(&self.driver) {
            return Err(FieldError::new("driver", format!("`{}` is not a driver name", self.driver)));
        }
        if self.options.len() > 32 {
            return Err(FieldError::new("options", "at most 32 options"));
        }
        for (key, value) in &self.options {
            if key.is_empty() || key.len() > 128 || value.len() > 4096 || key.contains('\0') || value.contains('\0') {
                return Err(FieldError::new(format!("options.{key}"), "keys are 1-128 bytes, values at most 4096, no NUL"));
            }
        }
        let servers = policy.nfs_server_addresses();
        let allowed = crate::volume_options::OptionPolicy {
            nfs_servers: crate::volume_options::NfsServers::Listed(&servers),
            plugin_keys: &policy.volume_options,
        };
        crate::volume_options::check(&self.driver, &self.options, allowed)?;
        if self.size_mib == Some(0) {
            return Err(FieldError::new("size_mib", "at least 1"));
        }
        Ok(())
    }
}

/// A project's volume as the store keeps it and the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    pub project: String,
    pub name: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    pub scope: VolumeScope,
    /// Its name on the engine (`shepherd-vol-PROJECT-NAME`).
    pub engine_name: String,
    /// The node a `node`-scoped volume lives on, once a task used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl Volume {
    /// A volume of `project` from a validated spec.
    pub fn new(project: &str, spec: VolumeSpec, now: Timestamp) -> Volume {
        let scope = spec.effective_scope();
        Volume {
            project: project.to_string(),
            engine_name: engine_volume_name(project, &spec.name),
            name: spec.name,
            driver: spec.driver,
            options: spec.options,
            size_mib: spec.size_mib,
            scope,
            node_id: None,
            created_at: now,
        }
    }
}

/// A task's mount of one of its project's volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name in the task's project.
    pub name: String,
    /// An absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl VolumeMount {
    /// Parses the CLI's `NAME:/target[:ro]`. A source that is a path
    /// (`/var/run/docker.sock:/x`, `./data:/x`) is refused: only volumes.
    pub fn parse(text: &str) -> Result<VolumeMount, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let (name, target, read_only) = match parts.as_slice() {
            [name, target] => (*name, *target, false),
            [name, target, "ro"] => (*name, *target, true),
            [name, target, "rw"] => (*name, *target, false),
            _ => return Err(format!("`{text}`: use NAME:/target or NAME:/target:ro")),
        };
        if name.contains('/') || name.starts_with('.') || name.starts_with('~') {
            return Err(format!("`{name}` is a path: a task mounts only its project's volumes, never a host path"));
        }
        Ok(VolumeMount { name: name.to_string(), target: target.to_string(), read_only })
    }
}

/// Paths a mount (volume or scratch) may not be at or under: the
/// container's own machinery and what Shepherd mounts.
const RESERVED: [&str; 6] = ["/proc", "/sys", "/dev", "/run/secrets", "/run/shepherd", "/task"];

/// Checks a mount target: an absolute, clean path, not reserved. `field`
/// names it in the error.
pub fn check_target(target: &str, field: &str) -> Result<(), FieldError> {
    let clean = target.starts_with('/')
        && target.len() <= 1024
        && !target.contains('\0')
        && !target.contains(',')
        && !target.contains(':')
        && target.split('/').skip(1).all(|part| !part.is_empty() && part != "." && part != "..");
    if !clean {
        return Err(FieldError::new(
            field,
            format!("`{target}`: use an absolute path without `.`, `..`, empty parts, `,` or `:`, e.g. /work"),
        ));
    }
    let reserved = target == "/tmp" || RESERVED.iter().any(|r| target == *r || target.starts_with(&format!("{r}/")));
    if reserved {
        return Err(FieldError::new(
            field,
            format!("`{target}` is reserved (/tmp, /proc, /sys, /dev, /run/secrets, /run/shepherd, /task)"),
        ));
    }
    Ok(())
}

/// Checks a task's mounts: known names (validated), clean targets, none
/// twice, none at the scratch directory.
pub fn check_mounts(mounts: &[VolumeMount], scratch_target: Option<&str>) -> Result<(), FieldError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(FieldError::new("volumes", format!("at most {MAX_MOUNTS} volumes")));
    }
    let mut targets: Vec<&str> = scratch_target.into_iter().collect();
    let mut names: Vec<&str> = Vec::new();
    for (i, mount) in mounts.iter().enumerate() {
        if !is_volume_name(&mount.name) {
            let why = if mount.name.contains('/') {
                format!("`{}` is a path: a task mounts only its project's volumes, never a host path", mount.name)
            } else {
                format!("`{}` is not a volume name", mount.name)
            };
            return Err(FieldError::new(format!("volumes[{i}].name"), why));
        }
        check_target(&mount.target, &format!("volumes[{i}].target"))?;
        if targets
            .iter()
            .any(|t| *t == mount.target || t.starts_with(&format!("{}/", mount.target)) || mount.target.starts_with(&format!("{t}/")))
        {
            return Err(FieldError::new(format!("volumes[{i}].target"), format!("`{}` overlaps another mount", mount.target)));
        }
        if names.contains(&mount.name.as_str()) {
            return Err(FieldError::new(format!("volumes[{i}].name"), format!("`{}` is mounted twice", mount.name)));
        }
        targets.push(&mount.target);
        names.push(&mount.name);
    }
    Ok(())
}

/// A volume mount resolved by the server for the agent: what to make on
/// the engine and where to mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMount {
    pub engine_name: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// The project and name (the engine volume's labels).
    pub project: String,
    pub name: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl ResolvedMount {
    /// The mount of `volume` described by `mount`. A size becomes the
    /// driver's `size` option unless the options set one.
    pub fn new(volume: &Volume, mount: &VolumeMount) -> ResolvedMount {
        let mut options = volume.options.clone();
        if let Some(size) = volume.size_mib {
            // The local driver sizes only tmpfs (`o=size=…`); plugins read `size`.
            if volume.driver != "local" {
                options.entry("size".into()).or_insert_with(|| format!("{size}M"));
            }
        }
        ResolvedMount {
            engine_name: volume.engine_name.clone(),
            driver: volume.driver.clone(),
            options,
            project: volume.project.clone(),
            name: volume.name.clone(),
            target: mount.target.clone(),
            read_only: mount.read_only,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_engine_names() {
        assert!(is_volume_name("cache"));
        assert!(is_volume_name("my-cache.v2"));
        assert!(!is_volume_name(""));
        assert!(!is_volume_name("Cache"));
        assert!(!is_volume_name("/etc"));
        assert!(!is_volume_name(".hidden"));
        assert!(!is_volume_name(&"a".repeat(64)));
        assert_eq!(engine_volume_name("acme", "cache"), "shepherd-vol-acme-cache");
    }

    #[test]
    fn host_paths_are_refused_in_specs_and_mounts() {
        let policy = crate::ProjectPolicy { nfs_servers: vec!["10.0.0.1".into()], ..Default::default() };
        let mut spec = VolumeSpec::local("data");
        assert!(spec.validate(&policy).is_ok());
        spec.options = BTreeMap::from([("type".into(), "none".into()), ("o".into(), "bind".into()), ("device".into(), "/etc".into())]);
        assert_eq!(spec.validate(&policy).unwrap_err().field, "options");
        spec.options = BTreeMap::from([("o".into(), "rbind,ro".into())]);
        assert_eq!(spec.validate(&policy).unwrap_err().field, "options");
        spec.options = BTreeMap::from([("type".into(), "ext4".into()), ("device".into(), "/dev/sda1".into())]);
        assert_eq!(spec.validate(&policy).unwrap_err().field, "options");
        // tmpfs and a listed NFS server are fine; an unlisted one is not.
        spec.options =
            BTreeMap::from([("type".into(), "tmpfs".into()), ("device".into(), "tmpfs".into()), ("o".into(), "size=64m".into())]);
        assert!(spec.validate(&policy).is_ok());
        spec.options =
            BTreeMap::from([("type".into(), "nfs".into()), ("o".into(), "addr=10.0.0.1".into()), ("device".into(), ":/x".into())]);
        assert!(spec.validate(&policy).is_ok());
        assert_eq!(spec.validate(&crate::ProjectPolicy::default()).unwrap_err().field, "options");
        assert!(VolumeMount::parse("/var/run/docker.sock:/sock").unwrap_err().contains("host path"));
        assert!(VolumeMount::parse("./data:/data").is_err());
        assert_eq!(
            VolumeMount::parse("cache:/cache:ro").unwrap(),
            VolumeMount { name: "cache".into(), target: "/cache".into(), read_only: true }
        );
        assert!(VolumeMount::parse("cache").is_err());
        let mount = |name: &str, target: &str| VolumeMount { name: name.into(), target: target.into(), read_only: false };
        assert_eq!(check_mounts(&[mount("/var/run/docker.sock", "/x")], None).unwrap_err().field, "volumes[0].name");
        assert_eq!(check_mounts(&[mount("a", "/proc/x")], None).unwrap_err().field, "volumes[0].target");
        assert_eq!(check_mounts(&[mount("a", "/data"), mount("b", "/data/x")], None).unwrap_err().field, "volumes[1].target");
        assert_eq!(check_mounts(&[mount("a", "/data"), mount("a", "/other")], None).unwrap_err().field, "volumes[1].name");
        assert_eq!(check_mounts(&[mount("a", "/work")], Some("/work")).unwrap_err().field, "volumes[0].target");
        assert!(check_mounts(&[mount("a", "/data"), mount("b", "/data2")], Some("/work")).is_ok());
    }

    #[test]
    fn scope_follows_the_driver_unless_given() {
        let mut spec = VolumeSpec::local("a");
        assert_eq!(spec.effective_scope(), VolumeScope::Node);
        spec.scope = Some(VolumeScope::Cluster);
        assert_eq!(spec.effective_scope(), VolumeScope::Cluster);
        spec = VolumeSpec { driver: "rexray/ebs".into(), ..VolumeSpec::local("a") };
        assert_eq!(spec.effective_scope(), VolumeScope::Cluster);
    }
}

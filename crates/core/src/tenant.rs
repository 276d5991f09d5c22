//! Tenants: project names, a project's quotas, and the secrets a task asks
//! for. Pure data and validation; the server enforces, the store keeps.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether `name` is a valid project name: 1-63 of lower-case letters,
/// digits, `-` and `_`, starting with a letter or digit. Project names end
/// up in Docker network names, so they are kept this narrow.
pub fn is_project_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `name` is a valid secret name: 1-64 of letters, digits, `.`, `_`
/// and `-`, not starting with a dot (it becomes a file name).
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `name` is one of the names Shepherd keeps for itself among a
/// project's secrets: its registry logins (`registry.HOST`) and its own
/// (starting with `.`, such as the webhook signing key). No task receives
/// them, and the secrets API neither sets, lists nor removes them.
pub fn is_reserved_secret_name(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("registry.")
}

/// Whether `name` is a valid environment variable name.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A project's quotas; `None` (absent) is unlimited. A zero quota holds
/// everything it counts: `max_queued: 0` refuses new tasks, `max_running`,
/// `max_cpu_millicores` or `max_memory_mib` of 0 keep every task queued (a
/// paused project). `requests_per_second` must be at least 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimits {
    /// Most tasks waiting in the queue; a create beyond it is refused (429). 0: no new tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Most tasks scheduled or running at once; the rest wait in the queue. 0: all wait (paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most CPU held by the project's scheduled and running tasks. 0: all wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_millicores: Option<u64>,
    /// Most memory held by the project's scheduled and running tasks. 0: all wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Requests per second each of the project's tokens may make (bursts
    /// up to twice as many); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Most named volumes the project may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volumes: Option<u64>,
    /// Most MiB its volumes may add up to (volumes without a size count 0:
    /// the size is known only where the driver bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volume_size_mib: Option<u64>,
    /// Most GPUs held by the project's scheduled and running tasks. 0: its GPU tasks wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u64>,
    /// Most code packages it may store (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packages: Option<u64>,
    /// Most MiB its packages may add up to (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_package_mib: Option<u64>,
    /// Most live codes (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_codes: Option<u64>,
    /// Most revisions of one code (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_code_revisions: Option<u64>,
    /// Most schedules that are not cancelled or ended (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_schedules: Option<u64>,
}

/// What a project may store when its limits do not say: everything a
/// tenant can fill has a bound.
pub mod default_limits {
    pub const PACKAGES: u64 = 100;
    pub const PACKAGE_MIB: u64 = 1024;
    pub const CODES: u64 = 1000;
    pub const CODE_REVISIONS: u64 = 1000;
    pub const SCHEDULES: u64 = 1000;
}

impl ProjectLimits {
    /// Code packages it may store.
    pub fn packages(&self) -> u64 {
        self.max_packages.unwrap_or(default_limits::PACKAGES)
    }
    /// Bytes its packages may add up to.
    pub fn package_bytes(&self) -> u64 {
        self.max_package_mib.unwrap_or(default_limits::PACKAGE_MIB).saturating_mul(1024 * 1024)
    }
    /// Live codes it may have.
    pub fn codes(&self) -> u64 {
        self.max_codes.unwrap_or(default_limits::CODES)
    }
    /// Revisions one of its codes may have.
    pub fn code_revisions(&self) -> u64 {
        self.max_code_revisions.unwrap_or(default_limits::CODE_REVISIONS)
    }
    /// Schedules it may have (not cancelled or ended).
    pub fn schedules(&self) -> u64 {
        self.max_schedules.unwrap_or(default_limits::SCHEDULES)
    }

    /// Refuses limits that have no meaning, naming the field.
    pub fn validate(&self) -> Result<(), crate::FieldError> {
        if self.requests_per_second == Some(0) {
            return Err(crate::FieldError::new(
                "limits.requests_per_second",
                "must be at least 1 (0 would refuse every request; leave it out for no limit)",
            ));
        }
        Ok(())
    }
}

/// A project secret a task receives: always as a read-only file named
/// after the secret (`/run/secrets/NAME` in a container,
/// `$SHEPHERD_SECRETS_DIR/NAME` otherwise), and as an environment variable
/// too when `env` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name in the task's project.
    pub name: String,
    /// Also expose the value as this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_project_name("acme-prod_2"));
        assert!(!is_project_name("Acme"));
        assert!(!is_project_name(""));
        assert!(!is_project_name("-x"));
        assert!(is_secret_name("db.password"));
        assert!(!is_secret_name("../etc"));
        assert!(!is_secret_name(".hidden"));
        assert!(!is_secret_name("a/b"));
        assert!(is_env_name("DB_PASSWORD"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
    }
}

/// Whether `name` is a valid network or device name: 1-32 of lower-case
/// letters, digits, `-` and `_`, starting with a letter or digit.
pub fn is_short_name(name: &str) -> bool {
    name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `name` could be a Docker volume or network driver (`local`,
/// `rexray/ebs:latest`): 1-128 of letters, digits and `- _ . / :`.
pub fn is_driver_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
}

/// What a project's tasks may use beyond CPU and memory: volume drivers,
/// named networks, egress and devices; and how long its finished tasks
/// are kept. Set by the admin
/// (`PUT /v1/projects/{name}/policy`); the defaults are the closed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPolicy {
    /// Volume drivers its volumes may use; empty: `local` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_drivers: Vec<String>,
    /// Its named networks (a task joins those it names in `networks`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Whether its tasks may reach anything beyond their own networks.
    #[serde(default)]
    pub egress: Egress,
    /// Devices (as nodes name them, e.g. `fuse`) its tasks may ask for; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// NFS servers (IP addresses) its `local` volumes may mount; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nfs_servers: Vec<String>,
    /// Option keys its volumes may give each plugin driver (by driver);
    /// a plugin driver gets no options the admin did not name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, Vec<String>>,
    /// How long its finished tasks (with their attempts and logs) are kept
    /// after they finish, in seconds; then they are removed (exported
    /// first, where the cluster names a directory for it), their usage
    /// kept as hourly sums and their audit lines as they are. Absent: the
    /// cluster's `--task-retention` (by default, kept forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<u64>,
}

/// The longest retention a project may be given (100 years, in seconds).
pub const MAX_RETENTION_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// A project's egress policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Its networks may route out (`bridge` is NATed to the host's network).
    #[default]
    Allowed,
    /// Every network of the project is made `internal`: tasks reach their
    /// project's peers on the same network and nothing else.
    None,
}

/// A project's named network, made on each engine that runs a task on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The Docker network driver: `bridge` (default), `macvlan`,
    /// `ipvlan`, `overlay` or a plugin's.
    #[serde(default = "NetworkSpec::default_driver")]
    pub driver: String,
    /// Driver options (`docker network create --opt`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// No route out: tasks on it reach only each other.
    #[serde(default)]
    pub internal: bool,
}

impl NetworkSpec {
    fn default_driver() -> String {
        "bridge".into()
    }

    /// A bridge network, internal or not.
    pub fn bridge(internal: bool) -> NetworkSpec {
        NetworkSpec { driver: Self::default_driver(), options: BTreeMap::new(), internal }
    }
}

/// The engine's name of a project's named network: `shepherd-net-PROJECT.NAME`
/// (a dot, which neither name may hold, keeps projects apart).
pub fn engine_network_name(project: &str, name: &str) -> String {
    format!("shepherd-net-{project}.{name}")
}

impl ProjectPolicy {
    /// Whether the project may make volumes with `driver`.
    pub fn allows_volume_driver(&self, driver: &str) -> bool {
        if self.volume_drivers.is_empty() {
            driver == "local"
        } else {
            self.volume_drivers.iter().any(|d| d == driver)
        }
    }

    /// The NFS servers it lists, as addresses (entries that do not parse
    /// are refused by [`Self::validate`], so none are lost here).
    pub fn nfs_server_addresses(&self) -> Vec<std::net::IpAddr> {
        self.nfs_servers.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// Refuses names and drivers the engine could not take, naming the field.
    pub fn validate(&self) -> Result<(), crate::FieldError> {
        if let Some(seconds) = self.retention_seconds {
            if !(1..=MAX_RETENTION_SECONDS).contains(&seconds) {
                return Err(crate::FieldError::new(
                    "retention_seconds",
                    format!("must be 1 to {MAX_RETENTION_SECONDS} (100 years); leave it out for the cluster's retention"),
                ));
            }
        }
        if self.nfs_servers.len() > 64 {
            return Err(crate::FieldError::new("nfs_servers", "at most 64 servers"));
        }
        for (i, server) in self.nfs_servers.iter().enumerate() {
            match server.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.to_string() == *server && !ip.is_unspecified() && !ip.is_multicast() => {}
                _ => {
                    return Err(crate::FieldError::new(
                        format!("nfs_servers[{i}]"),
                        format!("`{server}` is not a host IP address in its usual spelling (e.g. 10.0.0.5)"),
                    ))
                }
            }
        }
        if self.volume_options.len() > 16 {
            return Err(crate::FieldError::new("volume_options", "at most 16 drivers"));
        }
        for (driver, keys) in &self.volume_options {
            let key_ok = |k: &String| {
                !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            };
            if driver == "local" || !is_driver_name(driver) || keys.len() > 32 || !keys.iter().all(key_ok) {
                return Err(crate::FieldError::new(
                    format!("volume_options.{driver}"),
                    "a plugin driver's name (not local: its options are fixed) with at most 32 option keys of a-z A-Z 0-9 - _ .",
                ));
            }
        }
        let driver_ok = is_driver_name;
        for (i, driver) in self.volume_drivers.iter().enumerate() {
            if !driver_ok(driver) {
                return Err(crate::FieldError::new(format!("volume_drivers[{i}]"), format!("`{driver}` is not a driver name")));
            }
        }
        if self.networks.len() > 16 {
            return Err(crate::FieldError::new("networks", "at most 16 networks"));
        }
        for (name, network) in &self.networks {
            if !is_short_name(name) {
                return Err(crate::FieldError::new(
                    format!("networks.{name}"),
                    "network names are 1-32 of a-z 0-9 - _, starting with a letter or digit",
                ));
            }
            if !driver_ok(&network.driver) {
                return Err(crate::FieldError::new(
                    format!("networks.{name}.driver"),
                    format!("`{}` is not a driver name", network.driver),
                ));
            }
            if matches!(network.driver.as_str(), "host" | "none") {
                return Err(crate::FieldError::new(
                    format!("networks.{name}.driver"),
                    "`host` and `none` are not project networks (a task without networks has none; the host's is never given)",
                ));
            }
            if network.options.len() > 32 || network.options.keys().any(|k| k.is_empty() || k.len() > 128) {
                return Err(crate::FieldError::new(format!("networks.{name}.options"), "at most 32 options, keys of 1-128 bytes"));
            }
        }
        for (i, device) in self.devices.iter().enumerate() {
            if !is_short_name(device) {
                return Err(crate::FieldError::new(format!("devices[{i}]"), format!("`{device}` is not a device name (e.g. fuse)")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn defaults_are_closed_and_names_checked() {
        let policy = ProjectPolicy::default();
        assert!(policy.allows_volume_driver("local"));
        assert!(!policy.allows_volume_driver("rexray/ebs"));
        assert_eq!(policy.egress, Egress::Allowed);
        let open = ProjectPolicy { volume_drivers: vec!["nfs".into()], ..ProjectPolicy::default() };
        assert!(!open.allows_volume_driver("local"), "an allow-list names local too if it wants it");
        let mut bad = ProjectPolicy::default();
        bad.networks.insert("Bad".into(), NetworkSpec::bridge(false));
        assert_eq!(bad.validate().unwrap_err().field, "networks.Bad");
        let mut host = ProjectPolicy::default();
        host.networks.insert("h".into(), NetworkSpec { driver: "host".into(), ..NetworkSpec::bridge(false) });
        assert_eq!(host.validate().unwrap_err().field, "networks.h.driver");
        assert_eq!(engine_network_name("a-b", "c"), "shepherd-net-a-b.c");
        assert_ne!(engine_network_name("a", "b-c"), engine_network_name("a-b", "c"));
    }
}

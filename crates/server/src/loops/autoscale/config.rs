//! The autoscale configuration (`--autoscale-config FILE`, TOML): the
//! provisioners machines are made with, and the pools they make up.
//!
//! ```toml
//! join_urls = ["http://10.0.0.1:7070"]   # where machines' agents join (default: this server)
//!
//! [provisioners.local]
//! driver = "docker"                       # or "exec", with command = [...]
//! image = "shepherd:latest"
//!
//! [pools.burst]
//! provisioner = "local"
//! min = 0
//! max = 3
//! cpu_millicores = 2000
//! memory_mib = 2048
//! max_tasks = 20
//! labels = { tier = "burst" }
//! scale_up_cooldown = "5s"
//! idle_time = "60s"
//! max_creating = 2
//! join_timeout = "3m"
//! cost = "0.05/h"
//! ```

use serde::{Deserialize, Serialize};
use shepherd_core::MachineShape;
use shepherd_provision::docker::DockerProvisionerConfig;
use shepherd_provision::exec::{duration_text, ExecProvisionerConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// The servers machines' agents join; default: this server's address.
    #[serde(default)]
    pub join_urls: Vec<String>,
    /// How often the autoscaler looks (default 1 s).
    #[serde(default = "default_interval", with = "duration_text")]
    pub interval: Duration,
    #[serde(default)]
    pub provisioners: BTreeMap<String, ProvisionerConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// One provisioner, by driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum ProvisionerConfig {
    Docker(DockerProvisionerConfig),
    Exec(ExecProvisionerConfig),
}

/// One autoscaled pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The provisioner (a name under `[provisioners]`).
    pub provisioner: String,
    /// Machines kept even when idle.
    #[serde(default)]
    pub min: u32,
    /// Machines never exceeded, whatever waits.
    pub max: u32,
    /// CPU of each machine's node, in millicores.
    pub cpu_millicores: u32,
    /// Memory of each machine's node, in MiB.
    pub memory_mib: u32,
    /// Most tasks at once on each machine (default 256).
    #[serde(default = "default_max_tasks")]
    pub max_tasks: u32,
    /// Labels of each machine's node (besides `pool` and `machine`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Least time between two scale-ups of the pool (default 5 s).
    #[serde(default = "default_cooldown", with = "duration_text")]
    #[schema(value_type = String)]
    pub scale_up_cooldown: Duration,
    /// How long a machine runs no task before it is drained and destroyed (default 5 min).
    #[serde(default = "default_idle", with = "duration_text")]
    #[schema(value_type = String)]
    pub idle_time: Duration,
    /// Most machines of the pool being made at once (default 4).
    #[serde(default = "default_max_creating")]
    pub max_creating: u32,
    /// A machine whose agent has not joined this long after its create began is destroyed (default 5 min).
    #[serde(default = "default_join_timeout", with = "duration_text")]
    #[schema(value_type = String)]
    pub join_timeout: Duration,
    /// A free-form cost label shown with its machines (e.g. `0.05/h`).
    #[serde(default)]
    pub cost: Option<String>,
}

fn default_max_tasks() -> u32 {
    256
}
fn default_cooldown() -> Duration {
    Duration::from_secs(5)
}
fn default_idle() -> Duration {
    Duration::from_secs(300)
}
fn default_max_creating() -> u32 {
    4
}
fn default_join_timeout() -> Duration {
    Duration::from_secs(300)
}

impl AutoscaleConfig {
    /// Its pools as a history carries them (what a replay's autoscaler runs with).
    pub fn history(&self) -> Vec<shepherd_core::history::PoolRecord> {
        self.pools
            .iter()
            .map(|(name, p)| shepherd_core::history::PoolRecord {
                pool: name.clone(),
                min: p.min,
                max: p.max,
                max_creating: p.max_creating,
                cpu: p.cpu_millicores,
                memory: p.memory_mib,
                max_tasks: p.max_tasks,
                labels: p.labels.clone(),
                cooldown_seconds: p.scale_up_cooldown.as_secs_f64(),
                idle_seconds: p.idle_time.as_secs_f64(),
                interval_seconds: self.interval.as_secs_f64(),
            })
            .collect()
    }
}

impl PoolConfig {
    /// What its machines are made as.
    pub fn shape(&self) -> MachineShape {
        MachineShape {
            cpu_millicores: self.cpu_millicores,
            memory_mib: self.memory_mib,
            max_tasks: self.max_tasks,
            labels: self.labels.clone(),
        }
    }
}

/// A configuration that cannot work, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AutoscaleConfigError {
    AutoscaleConfigError::Invalid { field: field.into(), message: message.into() }
}

impl AutoscaleConfig {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<AutoscaleConfig, AutoscaleConfigError> {
        let config: AutoscaleConfig = toml::from_str(text).map_err(|e| AutoscaleConfigError::Parse(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), AutoscaleConfigError> {
        for url in &self.join_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("join_urls", format!("`{url}` is not an http(s) URL")));
            }
        }
        if self.interval < Duration::from_millis(100) {
            return Err(invalid("interval", "at least 100ms"));
        }
        for (name, provisioner) in &self.provisioners {
            if let ProvisionerConfig::Exec(exec) = provisioner {
                if exec.command.is_empty() {
                    return Err(invalid(format!("provisioners.{name}.command"), "name the program to run"));
                }
            }
        }
        for (name, pool) in &self.pools {
            let field = |f: &str| format!("pools.{name}.{f}");
            if !shepherd_core::is_project_name(name) {
                return Err(invalid(format!("pools.{name}"), "a pool name is 1-63 lowercase letters, digits and dashes"));
            }
            if !self.provisioners.contains_key(&pool.provisioner) {
                return Err(invalid(field("provisioner"), format!("no provisioner named `{}`", pool.provisioner)));
            }
            if pool.max == 0 {
                return Err(invalid(field("max"), "at least 1"));
            }
            if pool.min > pool.max {
                return Err(invalid(field("min"), format!("{} is more than max ({})", pool.min, pool.max)));
            }
            if pool.cpu_millicores == 0 || pool.memory_mib == 0 || pool.max_tasks == 0 {
                return Err(invalid(field("cpu_millicores"), "cpu_millicores, memory_mib and max_tasks must be above 0"));
            }
            if pool.max_creating == 0 {
                return Err(invalid(field("max_creating"), "at least 1"));
            }
            for reserved in ["pool", "machine"] {
                if pool.labels.contains_key(reserved) {
                    return Err(invalid(field("labels"), format!("`{reserved}` is set by the autoscaler")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [provisioners.local]
        driver = "docker"
        image = "shepherd:test"

        [provisioners.cloud]
        driver = "exec"
        command = ["python3", "examples/provisioners/local_agents.py"]
        timeout = "30s"

        [pools.burst]
        provisioner = "local"
        max = 3
        cpu_millicores = 2000
        memory_mib = 2048
        max_tasks = 20
        labels = { tier = "b" }
        idle_time = "10s"
    "#;

    #[test]
    fn a_good_file() {
        let config = AutoscaleConfig::parse(GOOD).unwrap();
        let pool = &config.pools["burst"];
        assert_eq!((pool.min, pool.max, pool.max_creating), (0, 3, 4));
        assert_eq!(pool.idle_time, Duration::from_secs(10));
        assert_eq!(pool.scale_up_cooldown, Duration::from_secs(5));
        assert_eq!(pool.shape().labels["tier"], "b");
        match &config.provisioners["local"] {
            ProvisionerConfig::Docker(d) => assert_eq!((d.image.as_str(), d.network.as_str()), ("shepherd:test", "host")),
            other => panic!("{other:?}"),
        }
        match &config.provisioners["cloud"] {
            ProvisionerConfig::Exec(e) => assert_eq!(e.timeout, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            (GOOD.replace("max = 3", "max = 3\nmin = 4"), "pools.burst.min"),
            (GOOD.replace("provisioner = \"local\"", "provisioner = \"nope\""), "pools.burst.provisioner"),
            (GOOD.replace("max = 3", "max = 0"), "pools.burst.max"),
            (GOOD.replace("tier = \"b\"", "pool = \"x\""), "pools.burst.labels"),
            (GOOD.replace("idle_time = \"10s\"", "idle_time = \"soon\""), "idle_time"),
            (GOOD.replace("driver = \"docker\"", "driver = \"ec2\""), "ec2"),
            (GOOD.replace("image = ", "imgae = "), "imgae"),
            (GOOD.replace("[pools.burst]", "[pools.Burst]"), "pools.Burst"),
        ];
        for (text, needle) in cases {
            let e = AutoscaleConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}

//! The CLI's config file, as `docker` keeps `~/.docker/config.json` and
//! `nomad` its env vars: which server to talk to and with which tokens.
//! `shepherd up` writes it on a cluster's first start; flags and
//! environment variables override it.
//!
//! Where: `$SHEPHERD_CONFIG`, else `$XDG_CONFIG_HOME/shepherd/config.toml`,
//! else `~/.config/shepherd/config.toml`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the config file holds; every field optional.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A project's API token: used for tasks, logs and secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster's admin token: used for nodes, projects and tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
}

/// Where the config file is (whether or not it exists).
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SHEPHERD_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(dir).join("shepherd/config.toml"));
    }
    std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|home| PathBuf::from(home).join(".config/shepherd/config.toml"))
}

/// The config, or an empty one if there is no file.
pub fn load() -> Result<CliConfig> {
    let Some(path) = path() else { return Ok(CliConfig::default()) };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading the CLI config {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading the CLI config {}", path.display())),
    }
}

/// Writes the config (readable by its owner only); returns where.
pub fn save(config: &CliConfig) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path().context("no place for the CLI config: set SHEPHERD_CONFIG or HOME")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("encoding the CLI config")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

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
    /// The data directory of the cluster `shepherd up` wrote this for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
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
    Ok(load_from(&path)?.unwrap_or_default())
}

/// The config at `path`, `None` if there is no file.
pub fn load_from(path: &std::path::Path) -> Result<Option<CliConfig>> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map(Some).with_context(|| format!("reading the CLI config {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the CLI config {}", path.display())),
    }
}

/// Where the CLI config should go: the usual place, unless a config there
/// belongs to another cluster (another data dir); then a file beside it,
/// named after this data dir, so the other cluster's tokens (shown once)
/// are never lost. Returns the path and whether it is the usual one.
pub fn place_for(data_dir: &std::path::Path) -> Result<(PathBuf, bool)> {
    let usual = path().context("no place for the CLI config: set SHEPHERD_CONFIG or HOME")?;
    let ours = |config: &CliConfig| config.data_dir.as_deref().is_some_and(|d| same_dir(d, data_dir));
    match load_from(&usual) {
        Ok(None) => Ok((usual, true)),
        Ok(Some(config)) if ours(&config) => Ok((usual, true)),
        // Another cluster's, or unreadable: leave it alone.
        _ => {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in canonical(data_dir).to_string_lossy().bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            let stem = usual.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "config".into());
            Ok((usual.with_file_name(format!("{stem}-{:08x}.toml", hash as u32)), false))
        }
    }
}

fn canonical(path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    canonical(a) == canonical(b)
}

/// Writes the config at `path` (readable by its owner only).
pub fn save_at(config: &CliConfig, path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
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
    Ok(())
}

//! `[plugins.NAME]` in the scheduler config: where a plugin comes from and
//! its sandbox or connection settings.

use crate::http::OnError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A plugin as configured.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A WebAssembly module (a path relative to the config file's folder).
    Wasm { path: PathBuf, fuel: u64, memory_mib: u32, disable_after: u32 },
    /// An HTTP extender.
    Http { url: String, filter: bool, score: bool, timeout: Duration, on_error: OnError, disable_after: u32, retry_after: Duration },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    wasm: Option<String>,
    http: Option<String>,
    fuel: Option<u64>,
    memory_mib: Option<u32>,
    disable_after: Option<u32>,
    timeout_ms: Option<u64>,
    on_error: Option<OnError>,
    filter: Option<bool>,
    score: Option<bool>,
    retry_after_seconds: Option<u64>,
}

/// Default fuel per call: about 50 ms of the interpreter on this machine kind.
pub const DEFAULT_FUEL: u64 = 20_000_000;
/// Default memory cap of an instance.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// Failures in a row before a plugin is disabled.
pub const DEFAULT_DISABLE_AFTER: u32 = 5;

/// Whether `name` may name a plugin: 1-64 of `a-z 0-9 _ -`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Spec {
    /// Reads one `[plugins.NAME]` table; `base` is the config file's folder.
    pub fn parse(table: &toml::Table, base: &std::path::Path) -> Result<Spec, String> {
        let raw: Raw = toml::Value::Table(table.clone()).try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        let disable_after = raw.disable_after.unwrap_or(DEFAULT_DISABLE_AFTER).max(1);
        match (raw.wasm, raw.http) {
            (Some(path), None) => {
                if raw.timeout_ms.is_some()
                    || raw.on_error.is_some()
                    || raw.filter.is_some()
                    || raw.score.is_some()
                    || raw.retry_after_seconds.is_some()
                {
                    return Err("timeout_ms, on_error, filter, score and retry_after_seconds are for http extenders; a wasm plugin filters and scores as it exports".into());
                }
                let fuel = raw.fuel.unwrap_or(DEFAULT_FUEL);
                if !(1_000..=10_000_000_000).contains(&fuel) {
                    return Err("fuel: between 1000 and 10000000000".into());
                }
                let memory_mib = raw.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
                if !(1..=4096).contains(&memory_mib) {
                    return Err("memory_mib: between 1 and 4096".into());
                }
                Ok(Spec::Wasm { path: base.join(path), fuel, memory_mib, disable_after })
            }
            (None, Some(url)) => {
                if raw.fuel.is_some() || raw.memory_mib.is_some() {
                    return Err("fuel and memory_mib are for wasm plugins".into());
                }
                let (filter, score) = (raw.filter.unwrap_or(false), raw.score.unwrap_or(false));
                if !filter && !score {
                    return Err("an http extender needs `filter = true`, `score = true` or both".into());
                }
                let timeout_ms = raw.timeout_ms.unwrap_or(500);
                if !(1..=60_000).contains(&timeout_ms) {
                    return Err("timeout_ms: between 1 and 60000".into());
                }
                Ok(Spec::Http {
                    url,
                    filter,
                    score,
                    timeout: Duration::from_millis(timeout_ms),
                    on_error: raw.on_error.unwrap_or(OnError::Reject),
                    disable_after,
                    retry_after: Duration::from_secs(raw.retry_after_seconds.unwrap_or(30).clamp(1, 3600)),
                })
            }
            _ => Err("give exactly one of `wasm = \"FILE\"` or `http = \"URL\"`".into()),
        }
    }
}

//! # shepherd-plugins
//!
//! Scheduling plugins that operators load without rebuilding Shepherd:
//! WebAssembly filters and scorers run in a sandbox ([`wasm`], ABI in
//! [`abi`] and `docs/plugins.md`) and HTTP extenders ([`http`]), named in
//! the scheduler config and used in profiles exactly like the built-ins:
//!
//! ```toml
//! [plugins.licences]
//! wasm = "plugins/licences.wasm"
//! [profiles.licensed]
//! filters = ["node_ready", "resources", "licences"]
//! scores = { binpack = 1.0, licences = 2.0 }
//! [profiles.licensed.args.licences]
//! label = "licence.matlab"
//! ```
//!
//! [`load`] turns a config into an [`Engine`] whose registry holds them;
//! [`Scheduling`] is the live configuration of a server: reloaded when the
//! file (or a plugin file) changes, on SIGHUP or through the API, keeping
//! the previous version when the new one does not load. Each plugin's
//! calls, time and failures are in [`health`]; one that fails
//! `disable_after` times in a row is disabled (until reloaded, or for an
//! extender until its circuit breaker half-opens) and the tasks of the
//! profiles using it wait with the reason, while other profiles keep placing.
//!
//! Edges: used by the server and the CLI (`up`, `server`, `simulate`);
//! uses the engine (`shepherd-sched`), which stays free of I/O.

pub mod abi;
pub mod health;
pub mod http;
mod spec;
pub mod wasm;

pub use health::{Health, PluginStatus};
pub use spec::{valid_name, Spec};

use serde::Serialize;
use shepherd_sched::{ArgsError, Engine, FilterPlugin, Registry, SchedulerConfig, ScorePlugin, SharedEngine};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest WebAssembly file loaded.
pub const MAX_WASM_BYTES: u64 = 64 << 20;

/// A configuration that did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: String },
    #[error("{0}")]
    Config(#[from] shepherd_sched::ConfigError),
    #[error("plugin `{name}`: {message}")]
    Plugin { name: String, message: String },
}

/// An engine with the plugins of one configuration.
pub struct Loaded {
    pub engine: Engine,
    /// Each run-time plugin's health, by name.
    pub plugins: Vec<Arc<Health>>,
    /// The files it was made from (the config and each wasm file).
    pub files: Vec<PathBuf>,
}

/// Makes the engine of a scheduler config (`text`, from a file in `base`):
/// the built-in plugins plus those under `[plugins]`.
pub fn load(text: &str, base: &Path) -> Result<Loaded, LoadError> {
    let config = SchedulerConfig::from_toml(text)?;
    let mut registry = Registry::builtin();
    let mut plugins = Vec::new();
    let mut files = Vec::new();
    for (name, table) in &config.plugins {
        let error = |message: String| LoadError::Plugin { name: name.clone(), message };
        if !valid_name(name) {
            return Err(error("a plugin name is 1-64 of a-z, 0-9, _ and -, starting with a letter".into()));
        }
        if registry.contains(name) {
            return Err(error("that is the name of a built-in plugin".into()));
        }
        match Spec::parse(table, base).map_err(error)? {
            Spec::Wasm { path, fuel, memory_mib, disable_after } => {
                let bytes = read_wasm(&path)?;
                let digest = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
                let limits = wasm::Limits { fuel, memory_bytes: (memory_mib as usize) << 20 };
                let source = path.display().to_string();
                let module = wasm::WasmModule::compile(name, &bytes, limits, |filter, score| {
                    let health = Arc::new(Health::new(name, "wasm", source, Some(digest), (filter, score), disable_after, None));
                    plugins.push(health.clone());
                    health
                })
                .map_err(error)?;
                let module = Arc::new(module);
                let (filter, score) = module.kinds();
                if filter {
                    let m = module.clone();
                    registry = registry.with_filter(name.clone(), move |args| {
                        Ok(Arc::new(wasm::WasmPlugin::new(m.clone(), args)?) as Arc<dyn FilterPlugin>)
                    });
                }
                if score {
                    let m = module.clone();
                    registry = registry.with_scorer(name.clone(), move |args| {
                        Ok(Arc::new(wasm::WasmPlugin::new(m.clone(), args)?) as Arc<dyn ScorePlugin>)
                    });
                }
                files.push(path);
            }
            Spec::Http { url, filter, score, timeout, on_error, disable_after, retry_after } => {
                let health = Arc::new(Health::new(name, "http", url.clone(), None, (filter, score), disable_after, Some(retry_after)));
                plugins.push(health.clone());
                let extender = Arc::new(http::HttpExtender::new(name, &url, timeout, on_error, health).map_err(error)?);
                let plugin = move |args: Option<&toml::Value>, name: &str| -> Result<http::HttpPlugin, ArgsError> {
                    let args = match args {
                        Some(v) => serde_json::to_value(v).map_err(|e| ArgsError { plugin: name.to_string(), message: e.to_string() })?,
                        None => serde_json::Value::Object(Default::default()),
                    };
                    Ok(http::HttpPlugin { extender: extender.clone(), args })
                };
                let plugin = Arc::new(plugin);
                if filter {
                    let (p, n) = (plugin.clone(), name.clone());
                    registry = registry.with_filter(name.clone(), move |args| Ok(Arc::new(p(args, &n)?) as Arc<dyn FilterPlugin>));
                }
                if score {
                    let (p, n) = (plugin.clone(), name.clone());
                    registry = registry.with_scorer(name.clone(), move |args| Ok(Arc::new(p(args, &n)?) as Arc<dyn ScorePlugin>));
                }
            }
        }
    }
    let engine = Engine::with_registry(&config, &registry)?;
    Ok(Loaded { engine, plugins, files })
}

/// Reads and loads a scheduler config file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read { path: path.display().to_string(), error: e.to_string() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut loaded = load(&text, base)?;
    loaded.files.insert(0, path.to_path_buf());
    Ok(loaded)
}

fn read_wasm(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?.take(MAX_WASM_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read(path).map_err(|e| LoadError::Read { path: path.display().to_string(), error: e.to_string() })?;
    if bytes.len() as u64 > MAX_WASM_BYTES {
        return Err(LoadError::Read { path: path.display().to_string(), error: format!("over {} MiB", MAX_WASM_BYTES >> 20) });
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the last reload went.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Seconds since the epoch.
    pub at: u64,
    /// Whether the new configuration is in use.
    pub ok: bool,
    /// Why not (the previous version stays).
    pub error: Option<String>,
}

/// What `GET /v1/plugins` answers.
#[derive(Debug, Clone, Serialize)]
pub struct PluginsReport {
    /// The scheduler config file, if the server has one.
    pub config: Option<String>,
    /// Configurations loaded so far (1: the one it started with).
    pub version: u64,
    pub plugins: Vec<PluginStatus>,
    pub last_reload: Option<ReloadReport>,
}

/// What a file looked like: reloads happen when this changes.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files.iter().map(|f| (f.clone(), std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))).collect()
}

struct State {
    plugins: Vec<Arc<Health>>,
    stamp: Stamp,
    version: u64,
    last_reload: Option<ReloadReport>,
}

/// A running server's scheduler configuration: the engine its passes use,
/// the plugins in it, and reloads.
pub struct Scheduling {
    path: Option<PathBuf>,
    engine: SharedEngine,
    state: Mutex<State>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Scheduling {
    /// The configuration in `path`.
    pub fn from_file(path: &Path) -> Result<Scheduling, LoadError> {
        let loaded = load_file(path)?;
        Ok(Scheduling {
            path: Some(path.to_path_buf()),
            engine: SharedEngine::new(loaded.engine),
            state: Mutex::new(State { plugins: loaded.plugins, stamp: stamp(&loaded.files), version: 1, last_reload: None }),
            reloading: Mutex::new(()),
        })
    }

    /// A fixed engine, without a file (nothing to reload).
    pub fn fixed(engine: Engine) -> Scheduling {
        Scheduling {
            path: None,
            engine: SharedEngine::new(engine),
            state: Mutex::new(State { plugins: Vec::new(), stamp: Vec::new(), version: 1, last_reload: None }),
            reloading: Mutex::new(()),
        }
    }

    /// The engine passes take theirs from.
    pub fn engine(&self) -> SharedEngine {
        self.engine.clone()
    }

    /// Loads the file again; on success the next pass uses it, on failure
    /// the previous version stays. The configuration's version number.
    pub fn reload(&self) -> Result<u64, String> {
        let Some(path) = &self.path else { return Err("the server runs without --scheduler-config: nothing to reload".into()) };
        let _one = self.reloading.lock().map_err(|_| "reload lock poisoned")?;
        let result = load_file(path);
        let mut state = self.state.lock().map_err(|_| "state lock poisoned")?;
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match result {
            Ok(loaded) => {
                self.engine.replace(loaded.engine);
                state.stamp = stamp(&loaded.files);
                state.plugins = loaded.plugins;
                state.version += 1;
                state.last_reload = Some(ReloadReport { at, ok: true, error: None });
                tracing::info!(config = %path.display(), version = state.version, "scheduler config reloaded");
                Ok(state.version)
            }
            Err(e) => {
                // Do not try again until a file changes once more.
                let files: Vec<PathBuf> = state.stamp.iter().map(|(f, _)| f.clone()).collect();
                state.stamp = stamp(&files);
                let error = e.to_string();
                tracing::warn!(config = %path.display(), %error, "scheduler config not reloaded; the previous version stays");
                state.last_reload = Some(ReloadReport { at, ok: false, error: Some(error.clone()) });
                Err(error)
            }
        }
    }

    /// Reloads if the config file or a plugin file changed since the last
    /// load (or the last failed attempt).
    pub fn reload_if_changed(&self) -> Option<Result<u64, String>> {
        self.path.as_ref()?;
        let changed = {
            let state = self.state.lock().ok()?;
            let files: Vec<PathBuf> = state.stamp.iter().map(|(f, _)| f.clone()).collect();
            stamp(&files) != state.stamp
        };
        changed.then(|| self.reload())
    }

    /// Every run-time plugin with its counters.
    pub fn report(&self) -> PluginsReport {
        let state = self.state.lock();
        let (plugins, version, last_reload) = match &state {
            Ok(s) => (s.plugins.iter().map(|h| h.status()).collect(), s.version, s.last_reload.clone()),
            Err(_) => (Vec::new(), 0, None),
        };
        PluginsReport { config: self.path.as_ref().map(|p| p.display().to_string()), version, plugins, last_reload }
    }
}

//! WebAssembly filters and scorers (ABI v1, `docs/plugins.md`), run by
//! the wasmi interpreter in a sandbox: the only host import is `log`; each
//! call has a fuel budget (instructions) and each instance a memory cap. A
//! module is compiled once per load; each profile that uses it gets its own
//! instances (made with that profile's settings), pooled and reused across
//! passes. An instance that failed in any way is thrown away.

use crate::abi::{self, Call};
use crate::health::Health;
use shepherd_sched::{ArgsError, ClusterView, FilterPlugin, NodeSnapshot, PendingTask, Rejection, ScorePlugin};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmi::{Caller, Config, Engine, Extern, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, TrapCode, TypedFunc};

/// Sandbox limits of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel (about one unit per instruction) per call.
    pub fuel: u64,
    /// Linear memory an instance may hold.
    pub memory_bytes: usize,
}

/// Idle instances kept per profile's plugin.
const POOL: usize = 4;
/// The largest answer read back.
const MAX_ANSWER: usize = 16 << 20;
/// The longest line a plugin may log, in bytes.
const MAX_LOG_LINE: usize = 1024;

/// A compiled plugin module.
pub struct WasmModule {
    name: String,
    engine: Engine,
    module: Module,
    linker: Linker<HostState>,
    limits: Limits,
    filter: bool,
    score: bool,
    health: Arc<Health>,
}

struct HostState {
    limits: CapLimiter,
    health: Arc<Health>,
}

/// The store's limits, remembering whether the memory cap was hit (the
/// growth traps, and the failure says so).
struct CapLimiter {
    inner: StoreLimits,
    cap: usize,
    denied: bool,
}

impl wasmi::ResourceLimiter for CapLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, wasmi_core::LimiterError> {
        if desired > self.cap {
            self.denied = true;
            return Err(wasmi_core::LimiterError::ResourceLimiterDeniedAllocation);
        }
        self.inner.memory_growing(current, desired, maximum)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, wasmi_core::LimiterError> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

struct Instance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    /// The buffer the guest last gave (address, size): requests that fit
    /// are written there without asking again (ABI v1: it stays valid
    /// until `shepherd_alloc` is called again).
    buffer: Option<(i32, usize)>,
    filter: Option<TypedFunc<(i32, i32), i64>>,
    score: Option<TypedFunc<(i32, i32), i64>>,
}

impl WasmModule {
    /// Compiles `bytes` and checks its imports and exports. `health`
    /// receives its calls.
    pub fn compile(
        name: &str,
        bytes: &[u8],
        limits: Limits,
        health_of: impl FnOnce(bool, bool) -> Arc<Health>,
    ) -> Result<WasmModule, String> {
        let mut config = Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, bytes).map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
        for import in module.imports() {
            if (import.module(), import.name()) != ("shepherd", "log") {
                return Err(format!(
                    "imports {}.{}: a plugin may import only shepherd.log (no WASI, no other host functions)",
                    import.module(),
                    import.name()
                ));
            }
        }
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        for needed in ["memory", "shepherd_abi_v1", "shepherd_alloc"] {
            if !has(needed) {
                return Err(format!("does not export `{needed}` (see docs/plugins.md for ABI v1)"));
            }
        }
        let (filter, score) = (has("shepherd_filter"), has("shepherd_score"));
        if !filter && !score {
            return Err("exports neither `shepherd_filter` nor `shepherd_score`".into());
        }
        let mut linker = Linker::<HostState>::new(&engine);
        linker
            .func_wrap("shepherd", "log", |caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                let health = caller.data().health.clone();
                if !health.may_log() {
                    return;
                }
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return };
                let data = memory.data(&caller);
                let (start, len) = (ptr as u32 as usize, (len as u32 as usize).min(MAX_LOG_LINE));
                if let Some(bytes) = data.get(start..start.saturating_add(len)) {
                    let line = String::from_utf8_lossy(bytes);
                    tracing::info!(plugin = %health.name(), "{}", line.escape_debug());
                }
            })
            .map_err(|e| e.to_string())?;
        let health = health_of(filter, score);
        Ok(WasmModule { name: name.to_string(), engine, module, linker, limits, filter, score, health })
    }

    /// Whether it exports a filter / a scorer.
    pub fn kinds(&self) -> (bool, bool) {
        (self.filter, self.score)
    }

    /// A fresh instance, initialized with `settings`.
    fn instantiate(&self, settings: &[u8]) -> Result<Instance, String> {
        let inner = StoreLimitsBuilder::new().instances(1).tables(4).memories(1).table_elements(1 << 16).build();
        let limits = CapLimiter { inner, cap: self.limits.memory_bytes, denied: false };
        let mut store = Store::new(&self.engine, HostState { limits, health: self.health.clone() });
        store.limiter(|state| &mut state.limits);
        store.set_fuel(self.limits.fuel).map_err(|e| e.to_string())?;
        let instance = match self.linker.instantiate_and_start(&mut store, &self.module) {
            Ok(instance) => instance,
            Err(e) => return Err(self.explain(&e, store.data().limits.denied)),
        };
        let memory = instance.get_memory(&store, "memory").ok_or("`memory` is not a memory")?;
        let typed = |name: &str| instance.get_typed_func::<(i32, i32), i64>(&store, name).map_err(|e| format!("`{name}`: {e}"));
        let filter = if self.filter { Some(typed("shepherd_filter")?) } else { None };
        let score = if self.score { Some(typed("shepherd_score")?) } else { None };
        let alloc = instance.get_typed_func::<i32, i32>(&store, "shepherd_alloc").map_err(|e| format!("`shepherd_alloc`: {e}"))?;
        let mut made = Instance { store, memory, alloc, buffer: None, filter, score };
        if let Ok(init) = instance.get_typed_func::<(i32, i32), i32>(&made.store, "shepherd_init") {
            let ptr = made.write(settings)?;
            let code = match init.call(&mut made.store, (ptr, settings.len() as i32)) {
                Ok(code) => code,
                Err(e) => return Err(self.explain(&e, made.store.data().limits.denied)),
            };
            if code != 0 {
                return Err(format!("refused its settings (shepherd_init returned {code}; its log says why)"));
            }
        }
        Ok(made)
    }

    fn explain(&self, error: &wasmi::Error, memory_denied: bool) -> String {
        if memory_denied {
            return format!("allocated past its memory cap of {} MiB", self.limits.memory_bytes >> 20);
        }
        if error.as_trap_code() == Some(TrapCode::OutOfFuel) {
            return format!("out of fuel ({} per call)", self.limits.fuel);
        }
        let text = error.to_string();
        if text.contains("fuel") {
            return format!("out of fuel ({} per call)", self.limits.fuel);
        }
        format!("trapped: {text}")
    }
}

impl Instance {
    /// Copies `bytes` into a buffer the guest allocates; its address.
    fn write(&mut self, bytes: &[u8]) -> Result<i32, String> {
        let (ptr, dest) = self.buffer_for(bytes.len())?;
        dest.copy_from_slice(bytes);
        Ok(ptr)
    }

    /// `len` bytes of the guest's buffer (asked of `shepherd_alloc` when
    /// the last one is too small), and their address.
    fn buffer_for(&mut self, len: usize) -> Result<(i32, &mut [u8]), String> {
        let wanted = i32::try_from(len).map_err(|_| "a request over 2 GiB")?;
        let ptr = match self.buffer {
            Some((ptr, size)) if size >= len => ptr,
            _ => {
                let ptr = self.alloc.call(&mut self.store, wanted).map_err(|e| e.to_string())?;
                self.buffer = Some((ptr, len));
                ptr
            }
        };
        let start = ptr as u32 as usize;
        match self.memory.data_mut(&mut self.store).get_mut(start..start.saturating_add(len)) {
            Some(dest) => Ok((ptr, dest)),
            None => {
                self.buffer = None;
                Err(format!("answered garbage: shepherd_alloc({len}) gave {ptr}, outside its memory"))
            }
        }
    }

    /// Calls `func` on the request; the answer's bytes.
    /// Writes the request in place in the guest's buffer and calls `func`
    /// on it; the answer's bytes.
    fn call(
        &mut self,
        func: TypedFunc<(i32, i32), i64>,
        (call, task, nodes): (Call, &PendingTask, &[&NodeSnapshot]),
        fuel: u64,
    ) -> Result<&[u8], CallError> {
        self.store.set_fuel(fuel).map_err(|e| CallError::Message(e.to_string()))?;
        let plan = abi::plan(task, nodes);
        let (ptr, dest) = self.buffer_for(plan.len()).map_err(CallError::Message)?;
        abi::write_request(dest, &plan, call, task, nodes);
        let packed = func.call(&mut self.store, (ptr, plan.len() as i32)).map_err(CallError::Wasm)?;
        let (at, len) = ((packed as u64 >> 32) as usize, (packed as u64 & 0xffff_ffff) as usize);
        if len > MAX_ANSWER {
            return Err(CallError::Message(format!("answered garbage: an answer of {len} bytes")));
        }
        self.memory
            .data(&self.store)
            .get(at..at.saturating_add(len))
            .ok_or_else(|| CallError::Message(format!("answered garbage: an answer at {at}+{len}, outside its memory")))
    }
}

enum CallError {
    Wasm(wasmi::Error),
    Message(String),
}

/// One profile's use of a plugin module (its settings, its instances).
pub struct WasmPlugin {
    module: Arc<WasmModule>,
    settings: Vec<u8>,
    idle: Mutex<Vec<Instance>>,
}

impl WasmPlugin {
    /// The plugin with `args` (flat settings), one instance made now so
    /// that settings it refuses fail the load.
    pub fn new(module: Arc<WasmModule>, args: Option<&toml::Value>) -> Result<WasmPlugin, ArgsError> {
        let error = |message: String| ArgsError { plugin: module.name.clone(), message };
        let settings = abi::encode_settings(args).map_err(error)?;
        let first = module.instantiate(&settings).map_err(error)?;
        Ok(WasmPlugin { module, settings, idle: Mutex::new(vec![first]) })
    }

    fn failure(&self, reason: impl Into<String>) -> Rejection {
        Rejection::Other { filter: self.module.name.clone(), reason: reason.into() }
    }

    /// Runs one call on a pooled instance; decodes its answer with `decode`.
    fn run<T>(
        &self,
        call: Call,
        task: &PendingTask,
        nodes: &[&NodeSnapshot],
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        let health = &self.module.health;
        if let Some(why) = health.disabled() {
            return Err(why);
        }
        let started = Instant::now();
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let result = taken.map_or_else(|| self.module.instantiate(&self.settings), Ok).and_then(|mut instance| {
            let func = match call {
                Call::Filter => instance.filter,
                Call::Score => instance.score,
            }
            .ok_or("not exported")?;
            let answer = match instance.call(func, (call, task, nodes), self.module.limits.fuel) {
                Ok(bytes) => decode(bytes).map_err(|e| format!("answered garbage: {e}")),
                Err(CallError::Wasm(e)) => Err(self.module.explain(&e, instance.store.data().limits.denied)),
                Err(CallError::Message(m)) => Err(m),
            };
            if answer.is_ok() {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < POOL {
                        idle.push(instance);
                    }
                }
            }
            answer
        });
        match &result {
            Ok(_) => health.succeeded(nodes.len(), started.elapsed()),
            Err(e) => health.failed(nodes.len(), started.elapsed(), e),
        }
        result
    }
}

impl FilterPlugin for WasmPlugin {
    fn name(&self) -> &str {
        &self.module.name
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        shepherd_sched::plugin::filter_one(self, task, node)
    }
    fn batched(&self) -> bool {
        true
    }
    fn filter_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], out: &mut Vec<Result<(), Rejection>>) {
        match self.run(Call::Filter, task, nodes, |bytes| abi::decode_filter(bytes, nodes.len())) {
            Ok(verdicts) => out.extend(verdicts.into_iter().map(|v| match v {
                None => Ok(()),
                Some(reason) => Err(self.failure(reason)),
            })),
            Err(why) => {
                let rejection = self.failure(why);
                out.extend(nodes.iter().map(|_| Err(rejection.clone())));
            }
        }
    }
}

impl ScorePlugin for WasmPlugin {
    fn name(&self) -> &str {
        &self.module.name
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
        shepherd_sched::plugin::score_one(self, task, node, cluster)
    }
    fn batched(&self) -> bool {
        true
    }
    fn score_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], _: &ClusterView<'_>, out: &mut Vec<f64>) -> Result<(), Rejection> {
        let start = out.len();
        self.run(Call::Score, task, nodes, |bytes| abi::decode_scores(bytes, nodes.len(), out)).map_err(|why| {
            out.truncate(start);
            self.failure(why)
        })
    }
}

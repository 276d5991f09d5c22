//! How each run-time plugin is doing: calls, time, failures, and whether
//! it is disabled after failing too often in a row. Shared by every
//! profile's instance of a plugin; read by `/v1/plugins`, `/v1/health`
//! and the metrics.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One plugin's counters and state.
#[derive(Debug)]
pub struct Health {
    name: String,
    kind: &'static str,
    source: String,
    digest: Option<String>,
    filter: bool,
    score: bool,
    disable_after: u32,
    calls: AtomicU64,
    nodes: AtomicU64,
    nanos: AtomicU64,
    failures: AtomicU64,
    in_a_row: AtomicU32,
    disabled: AtomicBool,
    disabled_at: Mutex<Option<Instant>>,
    /// Disabled plugins are tried again after this long (an HTTP
    /// extender's circuit breaker, half open); `None`: until reloaded.
    retry_after: Option<Duration>,
    last_error: Mutex<Option<String>>,
    /// Log lines allowed in the current ten-second window.
    log_window: Mutex<(Instant, u32)>,
}

/// Log lines a plugin may write per ten seconds.
const LOG_LINES: u32 = 20;

/// What `/v1/plugins` shows of one plugin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginStatus {
    /// The name profiles use.
    pub name: String,
    /// `wasm` or `http`.
    pub kind: &'static str,
    /// The file (wasm) or URL (http) it came from.
    pub source: String,
    /// SHA-256 of the WebAssembly file loaded (hex).
    pub digest: Option<String>,
    /// Whether it filters, scores, or both.
    pub filter: bool,
    pub score: bool,
    /// `ok`, or `disabled` after `disable_after` failures in a row (until
    /// the next reload).
    pub state: &'static str,
    pub calls: u64,
    /// Nodes handed to it, over all calls.
    pub nodes: u64,
    /// Time spent in its calls.
    pub seconds: f64,
    pub failures: u64,
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
}

impl Health {
    /// A plugin with no calls yet.
    pub fn new(
        name: &str,
        kind: &'static str,
        source: String,
        digest: Option<String>,
        (filter, score): (bool, bool),
        disable_after: u32,
        retry_after: Option<Duration>,
    ) -> Health {
        Health {
            disabled_at: Mutex::new(None),
            retry_after,
            name: name.to_string(),
            kind,
            source,
            digest,
            filter,
            score,
            disable_after,
            calls: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
            disabled: AtomicBool::new(false),
            last_error: Mutex::new(None),
            log_window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether the plugin may write one more log line now (20 per 10 s).
    pub fn may_log(&self) -> bool {
        let Ok(mut window) = self.log_window.lock() else { return false };
        if window.0.elapsed() >= Duration::from_secs(10) {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        window.1 <= LOG_LINES
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(why)` when the plugin is disabled: calls are not made.
    pub fn disabled(&self) -> Option<String> {
        if !self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        if let (Some(after), Ok(at)) = (self.retry_after, self.disabled_at.lock()) {
            if at.is_some_and(|at| at.elapsed() >= after) {
                // Half open: one more try; its failure closes it again.
                return None;
            }
        }
        let last = self.last_error.lock().map(|e| e.clone()).unwrap_or_default();
        Some(format!("disabled after {} failures in a row (last: {})", self.disable_after, last.unwrap_or_default()))
    }

    /// Counts a call that went well.
    pub fn succeeded(&self, nodes: usize, took: Duration) {
        self.count(nodes, took);
        self.in_a_row.store(0, Ordering::Relaxed);
        if self.disabled.swap(false, Ordering::Relaxed) {
            tracing::info!(plugin = %self.name, "scheduling plugin answers again");
        }
    }

    /// Counts a call that failed; disables the plugin at the limit.
    pub fn failed(&self, nodes: usize, took: Duration, error: &str) {
        self.count(nodes, took);
        self.record_failure(error);
    }

    /// A call already counted turned out to have failed (its answer was garbage).
    pub fn record_failure(&self, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= self.disable_after {
            if let Ok(mut at) = self.disabled_at.lock() {
                *at = Some(Instant::now());
            }
        }
        if in_a_row >= self.disable_after && !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::warn!(plugin = %self.name, error, "scheduling plugin disabled after {in_a_row} failures in a row; tasks of profiles using it wait until it is reloaded");
        } else {
            tracing::debug!(plugin = %self.name, error, "scheduling plugin failed");
        }
    }

    fn count(&self, nodes: usize, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nodes.fetch_add(nodes as u64, Ordering::Relaxed);
        self.nanos.fetch_add(took.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// A snapshot for the API.
    pub fn status(&self) -> PluginStatus {
        PluginStatus {
            name: self.name.clone(),
            kind: self.kind,
            source: self.source.clone(),
            digest: self.digest.clone(),
            filter: self.filter,
            score: self.score,
            state: if self.disabled.load(Ordering::Relaxed) { "disabled" } else { "ok" },
            calls: self.calls.load(Ordering::Relaxed),
            nodes: self.nodes.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            failures: self.failures.load(Ordering::Relaxed),
            failures_in_a_row: self.in_a_row.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

//! The node's own metrics: attempts running, Docker Engine call latency
//! by call, containers that failed to start. One set per process (drivers
//! are made in many places; the engine calls they time are the process's),
//! registered into a Prometheus registry by whoever serves `/metrics`: the
//! all-in-one server, or `shepherd agent --metrics-listen`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Instant;

/// An engine call's label: `create`, `start`, `wait`, `remove`, …
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: &'static str,
}

/// The node's metrics.
pub struct AgentMetrics {
    /// Attempts this process is running now.
    pub running: Gauge,
    /// Docker Engine call latency, by call.
    pub engine_calls: Family<CallLabel, Histogram>,
    /// Containers that could not be created or started.
    pub start_failures: Counter,
    /// Image pulls made (one serves every attempt that waited for it).
    pub pulls: Counter,
    /// Image pulls under way now.
    pub pulls_in_flight: Gauge,
    /// How long pulls took, failed ones included.
    pub pull_seconds: Histogram,
    /// Images removed by the image cleanup.
    pub images_removed: Counter,
}

fn engine_histogram() -> Histogram {
    // 0.5 ms to ~16 s: a warm task's round trip to a pull.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16))
}

static METRICS: LazyLock<AgentMetrics> = LazyLock::new(|| AgentMetrics {
    running: Gauge::default(),
    engine_calls: Family::new_with_constructor(engine_histogram),
    start_failures: Counter::default(),
    pulls: Counter::default(),
    pulls_in_flight: Gauge::default(),
    // 10 ms to ~20 min.
    pull_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 17)),
    images_removed: Counter::default(),
});

/// This process's node metrics.
pub fn metrics() -> &'static AgentMetrics {
    &METRICS
}

impl AgentMetrics {
    /// Adds the node's metrics to `registry` (under `shepherd_agent_…`).
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register("shepherd_agent_running_attempts", "Attempts this node runs now", self.running.clone());
        registry.register(
            "shepherd_engine_call_seconds",
            "Docker Engine call latency by call (create, start, wait, remove)",
            self.engine_calls.clone(),
        );
        registry.register(
            "shepherd_container_start_failures",
            "Containers that could not be created or started",
            self.start_failures.clone(),
        );
        registry.register("shepherd_image_pulls", "Image pulls made (one serves every attempt waiting for it)", self.pulls.clone());
        registry.register("shepherd_image_pulls_in_flight", "Image pulls under way now", self.pulls_in_flight.clone());
        registry.register("shepherd_image_pull_seconds", "How long image pulls took, failed ones included", self.pull_seconds.clone());
        registry.register(
            "shepherd_images_removed",
            "Images the image cleanup removed (unused past their time, the engine's images above the threshold)",
            self.images_removed.clone(),
        );
    }

    /// Times an engine call.
    pub fn time<T>(&self, call: &'static str, started: Instant, result: T) -> T {
        self.engine_calls.get_or_create(&CallLabel { call }).observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Counts an attempt as running while it lives.
pub struct RunningGuard(());

impl RunningGuard {
    /// One more attempt running, until the guard drops.
    pub fn new() -> RunningGuard {
        metrics().running.inc();
        RunningGuard(())
    }
}

impl Default for RunningGuard {
    fn default() -> Self {
        RunningGuard::new()
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        metrics().running.dec();
    }
}

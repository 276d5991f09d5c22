//! Prometheus metrics (`GET /metrics`, or `--metrics-listen` without
//! auth), through `prometheus-client`.
//!
//! Counters and histograms move where things happen: the store's observer
//! ([`StoreObserver`]: tasks created, tasks finished, queue wait and run
//! time, commit latency and group size, for every write whichever API or
//! loop made it), the scheduler (pass duration, placements per pass), the
//! API layer (request duration by route and status), authentication and
//! admission (rate-limited and quota-refused requests). Gauges that
//! describe the whole cluster (tasks by project and state, nodes by state)
//! are read from the store when scraped. Labels are bounded: projects,
//! states, routes as declared (`/v1/tasks/{id}`), never a task id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shepherd_core::TaskState;
use shepherd_store::{ApplyResult, Store, StoreObserver};
use std::time::Duration;

/// A project.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectLabel {
    pub project: String,
}

/// A project and a task state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectStateLabel {
    pub project: String,
    pub state: &'static str,
}

/// A node state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// An autoscaled pool and a machine state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabel {
    pub pool: String,
    pub state: &'static str,
}

/// An autoscaled pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// An autoscaled pool and how a machine create ended (`made`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabel {
    pub pool: String,
    pub outcome: &'static str,
}

/// A stage of the task pipeline whose busy time is counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// What the agent API refused of a node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    pub kind: &'static str,
}

/// An API route (as declared), its method and the answer's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// The server's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    tasks_created: Family<ProjectLabel, Counter>,
    tasks_finished: Family<ProjectStateLabel, Counter>,
    queue_wait: Histogram,
    run_time: Histogram,
    tasks: Family<ProjectStateLabel, Gauge>,
    nodes: Family<StateLabel, Gauge>,
    pass_seconds: Histogram,
    pass_placed: Histogram,
    placed: Counter,
    commit_seconds: Histogram,
    commit_requests: Histogram,
    api_requests: Family<RouteLabel, Histogram>,
    rate_limited: Family<ProjectLabel, Counter>,
    quota_refused: Family<ProjectLabel, Counter>,
    event_subscribers: Gauge,
    machines: Family<PoolStateLabel, Gauge>,
    pool_failing: Family<PoolLabel, Gauge>,
    machine_creates: Family<PoolOutcomeLabel, Counter>,
    agent_refusals: Family<RefusalLabel, Counter>,
    plugin_calls: Family<PluginLabel, Counter>,
    plugin_failures: Family<PluginLabel, Counter>,
    plugin_seconds: Family<PluginLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    plugin_disabled: Family<PluginLabel, Gauge>,
    stage_seconds: Family<StageLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pool_connections: Family<StateLabel, Gauge>,
    pool_waiting: Gauge,
    pool_waits: Counter,
    pool_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    store_bytes: Gauge,
    oldest_task: Gauge,
    retention_removed: Family<ProjectLabel, Counter>,
    retention_exported: Counter,
    /// Held while a scrape refills the gauges.
    scraping: tokio::sync::Mutex<()>,
    /// The request histograms met so far, by a hash of their labels.
    request_handles: std::sync::RwLock<std::collections::HashMap<u64, Histogram>>,
    /// Placements of the last minute, for queued tasks' start estimates.
    recent: std::sync::Mutex<Recent>,
    /// Tasks that ended since the dashboard's timeline last took them:
    /// per project, (succeeded, failed or timed out).
    ended: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

/// How far back placements count for start estimates.
const RECENT_SECONDS: u64 = 60;

/// Placements per second of the last minute, in total and per project.
#[derive(Default)]
struct Recent {
    /// (unix second, placements, per project), oldest first.
    seconds: std::collections::VecDeque<(u64, u64, std::collections::HashMap<String, u64>)>,
}

impl Recent {
    fn forget(&mut self, now: u64) {
        while self.seconds.front().is_some_and(|(at, ..)| *at + RECENT_SECONDS <= now) {
            self.seconds.pop_front();
        }
    }

    fn record(&mut self, now: u64, project: &str, count: u64) {
        self.forget(now);
        if self.seconds.back().is_none_or(|(at, ..)| *at != now) {
            self.seconds.push_back((now, 0, Default::default()));
        }
        if let Some((_, total, projects)) = self.seconds.back_mut() {
            *total += count;
            match projects.get_mut(project) {
                Some(n) => *n += count,
                None => {
                    projects.insert(project.to_string(), count);
                }
            }
        }
    }

    /// Placements per second over the window: all projects', and `project`'s.
    fn rates(&mut self, now: u64, project: &str) -> (f64, f64) {
        self.forget(now);
        let total: u64 = self.seconds.iter().map(|(_, n, _)| n).sum();
        let mine: u64 = self.seconds.iter().filter_map(|(_, _, p)| p.get(project)).sum();
        (total as f64 / RECENT_SECONDS as f64, mine as f64 / RECENT_SECONDS as f64)
    }
}

fn seconds(start: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, count))
}

/// 100 µs to ~52 s.
fn api_histogram() -> Histogram {
    seconds(0.0001, 20)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered; the node's own ([`shepherd_agent::metrics`]) too.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            tasks_created: Family::default(),
            tasks_finished: Family::default(),
            // 1 ms to ~9 h.
            queue_wait: seconds(0.001, 25),
            run_time: seconds(0.001, 25),
            tasks: Family::default(),
            nodes: Family::default(),
            // 50 µs to ~3 s.
            pass_seconds: seconds(0.00005, 16),
            // 1 to 32,768 placements.
            pass_placed: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            placed: Counter::default(),
            // 50 µs to ~3 s.
            commit_seconds: seconds(0.00005, 16),
            // 1 to 4,096 requests.
            commit_requests: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            api_requests: Family::new_with_constructor(api_histogram),
            rate_limited: Family::default(),
            quota_refused: Family::default(),
            event_subscribers: Gauge::default(),
            machines: Family::default(),
            pool_failing: Family::default(),
            machine_creates: Family::default(),
            agent_refusals: Family::default(),
            plugin_calls: Family::default(),
            plugin_failures: Family::default(),
            plugin_seconds: Family::default(),
            plugin_disabled: Family::default(),
            stage_seconds: Family::default(),
            pool_connections: Family::default(),
            pool_waiting: Gauge::default(),
            pool_waits: Counter::default(),
            pool_wait_seconds: Counter::default(),
            store_bytes: Gauge::default(),
            oldest_task: Gauge::default(),
            retention_removed: Family::default(),
            retention_exported: Counter::default(),
            recent: Default::default(),
            ended: Default::default(),
            request_handles: Default::default(),
            scraping: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "shepherd_sched_plugin_calls",
            "Calls to run-time scheduling plugins (WebAssembly, HTTP)",
            m.plugin_calls.clone(),
        );
        registry.register("shepherd_sched_plugin_failures", "Failed calls to run-time scheduling plugins", m.plugin_failures.clone());
        registry.register("shepherd_sched_plugin_seconds", "Time spent in run-time scheduling plugins' calls", m.plugin_seconds.clone());
        registry.register(
            "shepherd_sched_plugin_disabled",
            "1 while a run-time scheduling plugin is disabled after failing",
            m.plugin_disabled.clone(),
        );
        registry.register("shepherd_tasks_created", "Tasks created, by project", m.tasks_created.clone());
        registry.register("shepherd_tasks_finished", "Tasks that ended, by project and final state", m.tasks_finished.clone());
        registry.register(
            "shepherd_task_queue_wait_seconds",
            "From a task's creation to the start of its first attempt",
            m.queue_wait.clone(),
        );
        registry.register("shepherd_task_run_seconds", "From an attempt's start to its end", m.run_time.clone());
        registry.register("shepherd_tasks", "Tasks queued, scheduled and running, by project and state", m.tasks.clone());
        registry.register("shepherd_nodes", "Nodes by state", m.nodes.clone());
        registry.register("shepherd_placement_pass_seconds", "Duration of the scheduler's passes that had work", m.pass_seconds.clone());
        registry.register("shepherd_placement_pass_placed", "Tasks placed per pass that had work", m.pass_placed.clone());
        registry.register("shepherd_placements", "Tasks placed", m.placed.clone());
        registry.register(
            "shepherd_store_commit_seconds",
            "Store transaction latency, from its first statement to the end of its commit",
            m.commit_seconds.clone(),
        );
        registry.register(
            "shepherd_store_commit_requests",
            "Write requests per committed transaction (group commit)",
            m.commit_requests.clone(),
        );
        registry.register("shepherd_api_request_seconds", "API request duration by route, method and status", m.api_requests.clone());
        registry.register("shepherd_rate_limited_requests", "Requests refused by a token's rate limit, by project", m.rate_limited.clone());
        registry.register(
            "shepherd_quota_refused_requests",
            "Task submissions refused by a project's quota, by project",
            m.quota_refused.clone(),
        );
        registry.register("shepherd_event_subscribers", "Clients following the event stream on this server", m.event_subscribers.clone());
        registry.register("shepherd_machines", "Provisioned machines by autoscaled pool and state", m.machines.clone());
        registry.register(
            "shepherd_autoscale_pool_failing",
            "1 while an autoscaled pool's machine creates keep failing (it backs off)",
            m.pool_failing.clone(),
        );
        registry.register("shepherd_machine_creates", "Machine creates by pool and outcome (made, failed)", m.machine_creates.clone());
        registry.register(
            "shepherd_agent_refusals",
            "What the agent API refused of nodes: reports and output about attempts not theirs, output past its bounds, registrations with another node's id",
            m.agent_refusals.clone(),
        );
        registry.register(
            "shepherd_stage_busy_seconds",
            "Time spent in each stage of the task pipeline: the scheduler's queue reads (sched_read), placement (sched_place), \
             commit of placements (sched_commit) and assignment to nodes (sched_assign); the store's writer (store_write); \
             task submissions checked (api_submit) and stored (api_submit_store), and agents' reports (agent_report). A serial stage busy all the time is saturated.",
            m.stage_seconds.clone(),
        );
        registry.register(
            "shepherd_store_pool_connections",
            "The store's connection pool (PostgreSQL): connections open, idle, and at most (state)",
            m.pool_connections.clone(),
        );
        registry.register(
            "shepherd_store_pool_waiting",
            "Callers waiting for a connection of the store's pool now",
            m.pool_waiting.clone(),
        );
        registry.register(
            "shepherd_store_pool_waits",
            "Callers that found no idle connection in the store's pool and waited",
            m.pool_waits.clone(),
        );
        registry.register(
            "shepherd_store_pool_wait_seconds",
            "Time callers waited for a connection of the store's pool (grow --store-pool-size if it climbs)",
            m.pool_wait_seconds.clone(),
        );
        registry.register(
            "shepherd_store_size_bytes",
            "Bytes the store's data takes (SQLite: pages in use; PostgreSQL: the database)",
            m.store_bytes.clone(),
        );
        registry.register(
            "shepherd_store_oldest_task_timestamp_seconds",
            "When the oldest task the store keeps was created (Unix seconds; 0 with no tasks)",
            m.oldest_task.clone(),
        );
        registry.register(
            "shepherd_retention_removed_tasks",
            "Finished tasks removed by their project's retention (with their attempts and logs)",
            m.retention_removed.clone(),
        );
        registry.register(
            "shepherd_retention_exported_tasks",
            "Tasks written to the retention export directory before they were removed",
            m.retention_exported.clone(),
        );
        shepherd_agent::metrics::metrics().register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The store's size and oldest task, as last measured.
    pub fn store_size(&self, size: shepherd_store::retention::StoreSize) {
        self.store_bytes.set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
        self.oldest_task.set(size.oldest_task.map_or(0, |t| t.millis() / 1000));
    }

    /// Retention removed `removed` of `project`'s tasks, `exported` of them
    /// written to the export directory first.
    pub fn retention_removed(&self, project: &str, removed: u64, exported: u64) {
        self.retention_removed.get_or_create(&ProjectLabel { project: project.to_string() }).inc_by(removed);
        self.retention_exported.inc_by(exported);
    }

    /// The agent API refused `count` things of `kind` from a node.
    pub fn agent_refused(&self, kind: &'static str, count: u64) {
        if count > 0 {
            self.agent_refusals.get_or_create(&RefusalLabel { kind }).inc_by(count);
        }
    }

    /// An autoscaled pool is failing (or recovered).
    pub fn pool_failing(&self, pool: &str, failing: bool) {
        self.pool_failing.get_or_create(&PoolLabel { pool: pool.to_string() }).set(i64::from(failing));
    }

    /// A machine create ended: `made` or `failed`.
    pub fn machine_create(&self, pool: &str, outcome: &'static str) {
        self.machine_creates.get_or_create(&PoolOutcomeLabel { pool: pool.to_string(), outcome }).inc();
    }

    /// A scheduling pass that had work: its duration and placements.
    pub fn pass(&self, took: Duration, placed: usize) {
        self.pass_seconds.observe(took.as_secs_f64());
        self.pass_placed.observe(placed as f64);
        self.placed.inc_by(placed as u64);
    }

    /// `took` more of the pipeline's `stage` (see `shepherd_stage_busy_seconds`).
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.stage_seconds.get_or_create(&StageLabel { stage }).inc_by(took.as_secs_f64());
    }

    /// An API request answered.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        // Every request lands here: its histogram is found by a hash of its
        // label, without building (allocating) the label again.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (route, method, status).hash(&mut hasher);
            hasher.finish()
        };
        let found = self.request_handles.read().ok().and_then(|h| h.get(&key).cloned());
        let histogram = match found {
            Some(histogram) => histogram,
            None => {
                let label = RouteLabel { route: route.to_string(), method: method.to_string(), status };
                let histogram = self.api_requests.get_or_create(&label).clone();
                if let Ok(mut handles) = self.request_handles.write() {
                    handles.insert(key, histogram.clone());
                }
                histogram
            }
        };
        histogram.observe(took.as_secs_f64());
    }

    /// A request refused by its token's rate limit.
    pub fn rate_limited(&self, project: &str) {
        self.rate_limited.get_or_create(&ProjectLabel { project: project.to_string() }).inc();
    }

    /// A submission refused by its project's quota.
    pub fn quota_refused(&self, project: &str) {
        self.quota_refused.get_or_create(&ProjectLabel { project: project.to_string() }).inc();
    }

    /// One more (or one fewer) client following the event stream.
    pub fn subscribers(&self) -> &Gauge {
        &self.event_subscribers
    }

    /// A queued task's place in line with an estimate of its start, from
    /// the placements of the last minute (its project's if it had any, else
    /// the cluster's). Only the leader places, so on another server of a
    /// shared store the estimate is unknown.
    /// `in_cluster` is `None` for a project's caller: nothing of other
    /// projects (their queue, the cluster's rate) goes into its answer.
    pub fn queue_position(&self, task: &shepherd_core::Task, in_project: u64, in_cluster: Option<u64>) -> shepherd_core::QueuePosition {
        let now = shepherd_core::Timestamp::now();
        let (estimated_start, estimate) = self.estimate(task, in_project, in_cluster, now);
        shepherd_core::QueuePosition { in_project, in_cluster, estimated_start, estimate }
    }

    fn estimate(
        &self,
        task: &shepherd_core::Task,
        in_project: u64,
        in_cluster: Option<u64>,
        now: shepherd_core::Timestamp,
    ) -> (Option<shepherd_core::Timestamp>, String) {
        let reason = task.reason.as_deref().unwrap_or_default();
        if reason.starts_with("no node can ever") {
            return (None, "unknown: no node can run it".into());
        }
        if reason.contains("quota") || reason.contains("runs at most") {
            return (None, "unknown: it waits for its project's quota".into());
        }
        let not_before = task.retry_at.or(task.start_at.filter(|_| task.attempts.is_empty())).filter(|at| *at > now);
        let second = (now.millis() / 1000).max(0) as u64;
        let (cluster, project) = self.recent.lock().map(|mut r| r.rates(second, &task.project)).unwrap_or((0.0, 0.0));
        let (wait, basis) = if project > 0.0 {
            (in_project as f64 / project, format!("from {project:.2} placements/s of project {} over the last minute", task.project))
        } else if let Some(in_cluster) = in_cluster.filter(|_| cluster > 0.0) {
            (in_cluster as f64 / cluster, format!("from {cluster:.2} placements/s over the last minute"))
        } else {
            return match not_before {
                Some(at) => (Some(at), "not before its start time; no placements in the last minute to go by".into()),
                None => (None, "unknown: nothing was placed in the last minute".into()),
            };
        };
        let at = now.plus(std::time::Duration::from_secs_f64(wait.min(1e9)));
        (Some(not_before.map_or(at, |nb| nb.max(at))), basis)
    }

    /// The tasks that ended since the last call, per project: (succeeded,
    /// failed or timed out). For the dashboard's timeline.
    pub fn take_ended(&self) -> std::collections::HashMap<String, (u64, u64)> {
        self.ended.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }

    /// The exposition in Prometheus' text format (0.0.4), with the
    /// cluster-wide gauges read from `store` now.
    pub async fn render(&self, store: &dyn Store, plugins: &[shepherd_plugins::PluginStatus]) -> String {
        // One scrape at a time: the gauges are cleared and refilled.
        let _one = self.scraping.lock().await;
        self.plugin_disabled.clear();
        for plugin in plugins {
            let label = PluginLabel { plugin: plugin.name.clone() };
            // Counters move up by what the plugin counted since the last
            // scrape (a reload starts its counts again).
            let calls = self.plugin_calls.get_or_create(&label);
            calls.inc_by(plugin.calls.checked_sub(calls.get()).unwrap_or(plugin.calls));
            let failures = self.plugin_failures.get_or_create(&label);
            failures.inc_by(plugin.failures.checked_sub(failures.get()).unwrap_or(plugin.failures));
            let seconds = self.plugin_seconds.get_or_create(&label);
            let delta = plugin.seconds - seconds.get();
            seconds.inc_by(if delta >= 0.0 { delta } else { plugin.seconds });
            self.plugin_disabled.get_or_create(&label).set(i64::from(plugin.state == "disabled"));
        }
        if let Some(pool) = store.pool_status() {
            for (state, count) in [("open", pool.open), ("idle", pool.idle), ("max", pool.max)] {
                self.pool_connections.get_or_create(&StateLabel { state }).set(count as i64);
            }
            self.pool_waiting.set(pool.waiting as i64);
            // Counters move up by what the store counted since the last scrape.
            self.pool_waits.inc_by(pool.waits.saturating_sub(self.pool_waits.get()));
            let delta = pool.waited_seconds - self.pool_wait_seconds.get();
            if delta > 0.0 {
                self.pool_wait_seconds.inc_by(delta);
            }
        }
        match store.active_counts().await {
            Ok(counts) => {
                self.tasks.clear();
                for (project, state, count) in counts {
                    self.tasks.get_or_create(&ProjectStateLabel { project, state: state.as_str() }).set(count as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: could not count tasks"),
        }
        match store.list_nodes().await {
            Ok(nodes) => {
                self.nodes.clear();
                for node in nodes {
                    self.nodes.get_or_create(&StateLabel { state: node.state.as_str() }).inc();
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: could not list nodes"),
        }
        match store.machines().await {
            Ok(machines) => {
                self.machines.clear();
                for machine in machines {
                    self.machines.get_or_create(&PoolStateLabel { pool: machine.pool, state: machine.state.as_str() }).inc();
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: could not list machines"),
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics: could not encode");
        }
        out
    }
}

impl StoreObserver for Metrics {
    fn committed(&self, requests: usize, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.stage("store_write", took);
        self.commit_requests.observe(requests as f64);
    }

    fn created(&self, project: &str, count: u64) {
        self.tasks_created.get_or_create(&ProjectLabel { project: project.to_string() }).inc_by(count);
    }

    fn applied(&self, results: &[ApplyResult]) {
        // Counted per call, then one label lookup each: a pass places thousands.
        let mut placed: Vec<(&str, u64)> = Vec::new();
        let mut finished: Vec<(&str, &'static str, u64)> = Vec::new();
        let mut second = 0;
        for applied in results.iter().filter_map(|r| r.as_ref().ok()) {
            let to = applied.decision.to;
            if to == TaskState::Scheduled && applied.from == TaskState::Queued {
                second = (applied.at.millis() / 1000).max(0) as u64;
                bump(&mut placed, &applied.project);
            }
            if to == TaskState::Running && applied.from != TaskState::Running && applied.attempt == 1 {
                if let Some(started) = applied.started_at {
                    self.queue_wait.observe(millis(started.millis() - applied.created_at.millis()));
                }
            }
            if applied.from == TaskState::Running && to != TaskState::Running {
                if let Some(started) = applied.started_at {
                    self.run_time.observe(millis(applied.at.millis() - started.millis()));
                }
            }
            if to.is_terminal() && !applied.from.is_terminal() {
                match finished.iter_mut().find(|(p, s, _)| *p == applied.project && *s == to.as_str()) {
                    Some((_, _, n)) => *n += 1,
                    None => finished.push((&applied.project, to.as_str(), 1)),
                }
            }
        }
        if !placed.is_empty() {
            if let Ok(mut recent) = self.recent.lock() {
                for (project, count) in &placed {
                    recent.record(second, project, *count);
                }
            }
        }
        if !finished.is_empty() {
            if let Ok(mut ended) = self.ended.lock() {
                for (project, state, count) in &finished {
                    let slot = match ended.get_mut(*project) {
                        Some(slot) => slot,
                        None => ended.entry(project.to_string()).or_default(),
                    };
                    match *state {
                        "succeeded" => slot.0 += count,
                        "failed" | "timed_out" => slot.1 += count,
                        _ => {}
                    }
                }
            }
        }
        for (project, state, count) in finished {
            self.tasks_finished.get_or_create(&ProjectStateLabel { project: project.to_string(), state }).inc_by(count);
        }
    }
}

/// Adds one to `project`'s count.
fn bump<'a>(counts: &mut Vec<(&'a str, u64)>, project: &'a str) {
    match counts.iter_mut().find(|(p, _)| *p == project) {
        Some((_, n)) => *n += 1,
        None => counts.push((project, 1)),
    }
}

fn millis(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Serves the node's own metrics on `addr` without a token, for `shepherd
/// agent --metrics-listen` (a joined node's engine calls and attempts are
/// its own; the server's `/metrics` has the cluster's).
pub async fn serve_node_metrics(addr: std::net::SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut registry = Registry::default();
    shepherd_agent::metrics::metrics().register(&mut registry);
    let registry = std::sync::Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut out = String::new();
                let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
                ([(axum::http::header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], out)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "node metrics server stopped");
        }
    }))
}

//! A node simulator: many simulated nodes in one process, each joined to a
//! real server over the real agent protocol (register, the assignment
//! stream, heartbeats, event reports, reconcile), each with its own
//! capacity and labels. A node "runs" an assignment by reporting its start
//! and, once a simulated run time has passed, its exit. No containers: it
//! measures the control plane, not the engine (`shepherd nodesim`).
//!
//! It is built to cost the simulator little per node, so the server is what
//! a benchmark measures: one task per node reads its stream; one per node
//! reports (events coalesced for `report_every`, one request at a time, so
//! a node's reports stay in order); one per node heartbeats (every
//! `heartbeat`, or as the server says); one timer task ends every simulated run.
//!
//! A task's run time is its label `nodesim.run_ms` if it has one, else drawn
//! from the configured range; its exit code is its label `nodesim.exit_code`
//! (default 0).

use crate::remote::{
    http_client, AgentMessage, AssignedAttempt, EventsRequest, EventsResponse, Heartbeat, HeartbeatAnswer, Registered, Registration,
};
use shepherd_core::{Event, Resources, TaskId, TaskState, Timestamp};
use shepherd_proto::{PROTOCOL_HEADER, PROTOCOL_VERSION};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Label giving a task's simulated run time in milliseconds.
pub const RUN_MS_LABEL: &str = "nodesim.run_ms";
/// Label giving a task's simulated exit code.
pub const EXIT_CODE_LABEL: &str = "nodesim.exit_code";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The server to join (one URL).
    pub server: String,
    pub join_token: String,
    /// How many nodes.
    pub nodes: usize,
    /// Node ids are `{prefix}-{index}`.
    pub prefix: String,
    pub capacity: Resources,
    pub max_tasks: u32,
    pub labels: BTreeMap<String, String>,
    /// Run times are drawn uniformly from this range (milliseconds).
    pub run_ms: (u64, u64),
    /// Heartbeat interval until the server says another.
    pub heartbeat: Duration,
    /// A node's events wait this long to travel together.
    pub report_every: Duration,
    /// Nodes that go silent for a while (a frozen agent) and come back.
    pub churn: Option<Churn>,
    /// Registrations in flight at once (a joining fleet does not stampede).
    pub registering: usize,
}

/// `nodes` nodes (the first ones) freeze `after` the whole fleet first
/// registered, for `pause`:
/// no heartbeats, no stream, reports held back; then they reconnect.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub nodes: usize,
    pub after: Duration,
    pub pause: Duration,
}

impl Churn {
    /// Parses `K@AFTER+PAUSE`, e.g. `5@10s+20s`.
    pub fn parse(text: &str) -> Result<Churn, String> {
        let bad = || format!("`{text}`: expected NODES@AFTER+PAUSE, e.g. 5@10s+20s");
        let (nodes, rest) = text.split_once('@').ok_or_else(bad)?;
        let (after, pause) = rest.split_once('+').ok_or_else(bad)?;
        Ok(Churn {
            nodes: nodes.trim().parse().map_err(|_| bad())?,
            after: humantime::parse_duration(after.trim()).map_err(|_| bad())?,
            pause: humantime::parse_duration(pause.trim()).map_err(|_| bad())?,
        })
    }
}

/// Counters of what the simulated fleet did.
#[derive(Debug, Default)]
pub struct SimStats {
    pub registrations: AtomicU64,
    pub assignments: AtomicU64,
    pub starts_accepted: AtomicU64,
    pub exits_accepted: AtomicU64,
    pub refused: AtomicU64,
    pub heartbeats: AtomicU64,
    pub request_errors: AtomicU64,
    pub reconciles: AtomicU64,
    pub declared_down: AtomicU64,
    /// Every task whose exit the server accepted, in order (kept when asked).
    exits: Mutex<Vec<TaskId>>,
    record_exits: bool,
}

/// A snapshot of [`SimStats`], as written to the stats file.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SimReport {
    pub nodes: usize,
    pub registrations: u64,
    pub assignments: u64,
    pub starts_accepted: u64,
    pub exits_accepted: u64,
    pub refused: u64,
    pub heartbeats: u64,
    pub request_errors: u64,
    pub reconciles: u64,
    pub declared_down: u64,
    /// Tasks with an accepted exit, one entry per acceptance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exited: Vec<TaskId>,
}

impl SimStats {
    /// The counters now.
    pub fn report(&self, nodes: usize) -> SimReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimReport {
            nodes,
            registrations: get(&self.registrations),
            assignments: get(&self.assignments),
            starts_accepted: get(&self.starts_accepted),
            exits_accepted: get(&self.exits_accepted),
            refused: get(&self.refused),
            heartbeats: get(&self.heartbeats),
            request_errors: get(&self.request_errors),
            reconciles: get(&self.reconciles),
            declared_down: get(&self.declared_down),
            exited: self.exits.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// One simulated node.
struct SimNode {
    id: String,
    token: Mutex<String>,
    inner: Mutex<NodeInner>,
    /// Reports are waiting.
    wake: Notify,
    /// Frozen: no heartbeats, no stream, no reports.
    paused: AtomicBool,
    /// The server declared it down: reconnect.
    reconnect: AtomicBool,
    /// The heartbeat interval the server asked for (ms; 0: the configured one).
    every_ms: AtomicU64,
}

#[derive(Default)]
struct NodeInner {
    /// Attempts "running" here.
    running: HashMap<TaskId, u32>,
    pending: Vec<(TaskId, Event)>,
}

/// Runs ending at a time: (due, node, task, attempt, exit code).
type Due = Reverse<(Instant, usize, TaskId, u32, i32)>;

/// The simulated fleet.
pub struct Fleet {
    config: SimConfig,
    http: reqwest::Client,
    nodes: Vec<Arc<SimNode>>,
    timers: Mutex<BinaryHeap<Due>>,
    stats: Arc<SimStats>,
    registering: Semaphore,
    /// Reports, heartbeats and reconciles in flight at once: the fleet's
    /// connections besides the streams stay few, as N real hosts' would be
    /// spread over N machines.
    requests: Semaphore,
}

/// Requests (other than streams) the whole fleet has in flight at most.
const REQUESTS_IN_FLIGHT: usize = 256;

impl Fleet {
    /// A fleet for `config`; `record_exits` keeps every accepted exit's task id.
    pub fn new(config: SimConfig, record_exits: bool) -> Result<Arc<Fleet>, crate::remote::ClientError> {
        crate::remote::install_crypto_provider();
        let http = reqwest::Client::builder().pool_max_idle_per_host(REQUESTS_IN_FLIGHT).build().or_else(|_| http_client(None))?;
        let nodes = (0..config.nodes)
            .map(|i| {
                Arc::new(SimNode {
                    id: format!("{}-{i}", config.prefix),
                    token: Mutex::new(String::new()),
                    inner: Mutex::new(NodeInner::default()),
                    wake: Notify::new(),
                    paused: AtomicBool::new(false),
                    reconnect: AtomicBool::new(false),
                    every_ms: AtomicU64::new(0),
                })
            })
            .collect();
        let registering = Semaphore::new(config.registering.max(1));
        let stats = Arc::new(SimStats { record_exits, ..Default::default() });
        let requests = Semaphore::new(REQUESTS_IN_FLIGHT);
        Ok(Arc::new(Fleet { config, http, nodes, timers: Mutex::new(BinaryHeap::new()), stats, registering, requests }))
    }

    /// The fleet's counters.
    pub fn stats(&self) -> Arc<SimStats> {
        self.stats.clone()
    }

    /// Runs every node until `shutdown` resolves.
    pub async fn run(self: Arc<Fleet>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tasks = Vec::new();
        for index in 0..self.nodes.len() {
            let fleet = self.clone();
            tasks.push(tokio::spawn(async move { fleet.node_loop(index).await }));
            let fleet = self.clone();
            tasks.push(tokio::spawn(async move { fleet.reporter(index).await }));
            let fleet = self.clone();
            tasks.push(tokio::spawn(async move { fleet.heartbeater(index).await }));
        }
        let timer = {
            let fleet = self.clone();
            tokio::spawn(async move { fleet.timer_loop().await })
        };
        tasks.push(timer);
        if let Some(churn) = self.config.churn {
            let fleet = self.clone();
            tasks.push(tokio::spawn(async move {
                // From when the whole fleet has joined (a loaded host may take
                // a while): a node frozen before it registered would never be
                // declared down.
                while fleet.stats.registrations.load(Ordering::Relaxed) < fleet.nodes.len() as u64 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(churn.after).await;
                tracing::info!(nodes = churn.nodes, "freezing nodes");
                for node in fleet.nodes.iter().take(churn.nodes) {
                    node.paused.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(churn.pause).await;
                tracing::info!(nodes = churn.nodes, "thawing nodes");
                for node in fleet.nodes.iter().take(churn.nodes) {
                    node.paused.store(false, Ordering::SeqCst);
                    node.wake.notify_one();
                }
            }));
        }
        shutdown.await;
        for task in tasks {
            task.abort();
        }
    }

    /// A request as the node: its token and the protocol header.
    fn request(&self, method: reqwest::Method, node: &SimNode, path: &str) -> reqwest::RequestBuilder {
        let token = node.token.lock().map(|t| t.clone()).unwrap_or_default();
        self.http.request(method, format!("{}{path}", self.config.server)).bearer_auth(token).header(PROTOCOL_HEADER, PROTOCOL_VERSION)
    }

    fn post(&self, node: &SimNode, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, node, path).timeout(Duration::from_secs(30))
    }

    /// Register, follow the stream, again after any break or a freeze.
    async fn node_loop(self: Arc<Fleet>, index: usize) {
        let node = self.nodes[index].clone();
        let mut wait = Duration::from_millis(200);
        loop {
            while node.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match self.session(index, &node).await {
                Ok(()) => wait = Duration::from_millis(200),
                Err(e) => {
                    tracing::debug!(node = %node.id, error = %e, "session ended");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn session(&self, index: usize, node: &Arc<SimNode>) -> Result<(), String> {
        let registration = Registration {
            join_token: self.config.join_token.clone(),
            node_id: node.id.clone(),
            hostname: node.id.clone(),
            driver: "simulated".into(),
            capacity: self.config.capacity,
            max_tasks: self.config.max_tasks,
            labels: self.config.labels.clone(),
            images: Vec::new(),
            // The same for a node in every run against a cluster (ids repeat across runs).
            node_secret: Some(crate::package::sha256_hex(format!("{}\n{}", self.config.join_token, node.id).as_bytes())),
        };
        let registered: Registered = {
            let _permit = self.registering.acquire().await.map_err(|e| e.to_string())?;
            let response = self
                .http
                .post(format!("{}/v1/agent/register", self.config.server))
                .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
                .json(&registration)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("register: {}", response.status()));
            }
            response.json().await.map_err(|e| e.to_string())?
        };
        if let Ok(mut token) = node.token.lock() {
            *token = registered.node_token;
        }
        node.every_ms.store(registered.heartbeat_ms.unwrap_or(0), Ordering::Relaxed);
        node.reconnect.store(false, Ordering::SeqCst);
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        let mut response = self.request(reqwest::Method::GET, node, "/v1/agent/stream").send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("stream: {}", response.status()));
        }
        node.wake.notify_one();
        let mut buffer = Vec::new();
        loop {
            if node.paused.load(Ordering::SeqCst) || node.reconnect.load(Ordering::SeqCst) {
                return Ok(());
            }
            let chunk = match tokio::time::timeout(Duration::from_millis(500), response.chunk()).await {
                Err(_) => continue,
                Ok(chunk) => chunk.map_err(|e| e.to_string())?,
            };
            let Some(chunk) = chunk else { return Err("stream closed".into()) };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                match serde_json::from_slice::<AgentMessage>(&line) {
                    Ok(AgentMessage::Assign { task_id, attempt, launch }) => {
                        self.stats.assignments.fetch_add(1, Ordering::Relaxed);
                        let labels = launch.map(|l| l.spec.labels).unwrap_or_default();
                        self.start(index, node, task_id, attempt, &labels);
                    }
                    Ok(AgentMessage::Cancel { task_id }) => {
                        if let Ok(mut inner) = node.inner.lock() {
                            if let Some(attempt) = inner.running.remove(&task_id) {
                                inner.pending.push((task_id, Event::Cancelled { attempt, usage: None }));
                            }
                        }
                        node.wake.notify_one();
                    }
                    Ok(AgentMessage::Reconcile) => self.reconcile(index, node).await?,
                    Ok(AgentMessage::Drain)
                    | Ok(AgentMessage::Ping)
                    | Ok(AgentMessage::RemoveVolume { .. })
                    | Ok(AgentMessage::Prefetch { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable message"),
                }
            }
        }
    }

    /// Starts a simulated run: reports the start, sets its end.
    fn start(&self, index: usize, node: &SimNode, task: TaskId, attempt: u32, labels: &BTreeMap<String, String>) {
        let run_ms = labels.get(RUN_MS_LABEL).and_then(|v| v.parse().ok()).unwrap_or_else(|| self.draw_run_ms(task));
        let code = labels.get(EXIT_CODE_LABEL).and_then(|v| v.parse().ok()).unwrap_or(0);
        if let Ok(mut inner) = node.inner.lock() {
            if inner.running.get(&task) == Some(&attempt) {
                return;
            }
            inner.running.insert(task, attempt);
            inner.pending.push((task, Event::Start { attempt, at: Some(Timestamp::now()), runtime: None }));
        }
        if let Ok(mut timers) = self.timers.lock() {
            timers.push(Reverse((Instant::now() + Duration::from_millis(run_ms), index, task, attempt, code)));
        }
        node.wake.notify_one();
    }

    fn draw_run_ms(&self, task: TaskId) -> u64 {
        let (low, high) = self.config.run_ms;
        if high <= low {
            return low;
        }
        // The id's random bits are as good a draw as any, and reproducible.
        low + (task.0.random() as u64) % (high - low + 1)
    }

    /// Compares what the server says this node runs with what it does.
    async fn reconcile(&self, index: usize, node: &Arc<SimNode>) -> Result<(), String> {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let _permit = self.requests.acquire().await.map_err(|e| e.to_string())?;
        let response = self.request(reqwest::Method::GET, node, "/v1/agent/assigned").send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("assigned: {}", response.status()));
        }
        let assigned: Vec<AssignedAttempt> = response.json().await.map_err(|e| e.to_string())?;
        let mut to_start = Vec::new();
        if let Ok(mut inner) = node.inner.lock() {
            let owned: HashMap<TaskId, &AssignedAttempt> = assigned.iter().map(|a| (a.task_id, a)).collect();
            // Given away while this node was gone: stop it, say nothing.
            inner.running.retain(|task, attempt| owned.get(task).is_some_and(|a| a.attempt == *attempt));
            for a in &assigned {
                let here = inner.running.get(&a.task_id) == Some(&a.attempt);
                match (a.state, here) {
                    (_, true) if a.cancel_requested => {
                        inner.running.remove(&a.task_id);
                        inner.pending.push((a.task_id, Event::Cancelled { attempt: a.attempt, usage: None }));
                    }
                    (TaskState::Scheduled, false) => to_start.push((a.task_id, a.attempt)),
                    (TaskState::Running, false) => {
                        inner.pending.push((a.task_id, Event::Lost { attempt: a.attempt, reason: "not running on this node".into() }))
                    }
                    _ => {}
                }
            }
        }
        for (task, attempt) in to_start {
            self.start(index, node, task, attempt, &BTreeMap::new());
        }
        node.wake.notify_one();
        Ok(())
    }

    /// Sends the node's reports, one request at a time (so they stay in order).
    async fn reporter(self: Arc<Fleet>, index: usize) {
        let node = self.nodes[index].clone();
        loop {
            node.wake.notified().await;
            tokio::time::sleep(self.config.report_every).await;
            if node.paused.load(Ordering::SeqCst) || node.token.lock().map(|t| t.is_empty()).unwrap_or(true) {
                continue;
            }
            let events = node.inner.lock().map(|mut inner| std::mem::take(&mut inner.pending)).unwrap_or_default();
            if !events.is_empty() {
                self.send_events(&node, events).await;
            }
        }
    }

    /// Heartbeats the node on its own schedule: a slow report never delays
    /// them (a real agent's heartbeat runs apart from its reports too).
    async fn heartbeater(self: Arc<Fleet>, index: usize) {
        let node = self.nodes[index].clone();
        // Spread over the interval, not all at once.
        let offset = self.config.heartbeat.mul_f64(index as f64 / self.nodes.len().max(1) as f64);
        tokio::time::sleep(offset).await;
        loop {
            let every = match node.every_ms.load(Ordering::Relaxed) {
                0 => self.config.heartbeat,
                ms => Duration::from_millis(ms),
            };
            tokio::time::sleep(every).await;
            if node.paused.load(Ordering::SeqCst) || node.token.lock().map(|t| t.is_empty()).unwrap_or(true) {
                continue;
            }
            self.heartbeat(&node).await;
        }
    }

    async fn send_events(&self, node: &SimNode, events: Vec<(TaskId, Event)>) {
        let body = EventsRequest { events };
        let mut wait = Duration::from_millis(100);
        for _ in 0..20 {
            let result = async {
                let _permit = self.requests.acquire().await.map_err(|e| e.to_string())?;
                let response = self.post(node, "/v1/agent/events").json(&body).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("events: {}", response.status()));
                }
                response.json::<EventsResponse>().await.map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(answer) => {
                    for ((task, event), accepted) in body.events.iter().zip(answer.accepted) {
                        match (event, accepted) {
                            (Event::Start { .. }, true) => {
                                self.stats.starts_accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            (Event::Exit { .. }, true) => {
                                self.stats.exits_accepted.fetch_add(1, Ordering::Relaxed);
                                if self.stats.record_exits {
                                    if let Ok(mut exits) = self.stats.exits.lock() {
                                        exits.push(*task);
                                    }
                                }
                            }
                            (_, true) => {}
                            (_, false) => {
                                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                                // Refused: not this node's attempt any more.
                                if let Ok(mut inner) = node.inner.lock() {
                                    if inner.running.get(task) == event.attempt().as_ref() {
                                        inner.running.remove(task);
                                    }
                                }
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.stats.request_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = %node.id, error = %e, "report not delivered; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                    // A refused token means a new session: its reconcile settles these.
                    if node.reconnect.load(Ordering::SeqCst) || node.paused.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        // Undelivered: keep them for the next try, in order.
        if let Ok(mut inner) = node.inner.lock() {
            let later = std::mem::take(&mut inner.pending);
            inner.pending = body.events;
            inner.pending.extend(later);
        }
    }

    async fn heartbeat(&self, node: &SimNode) {
        let running = node.inner.lock().map(|i| i.running.len()).unwrap_or(0);
        let body = Heartbeat { images: Vec::new(), running };
        let Ok(_permit) = self.requests.acquire().await else { return };
        match self.post(node, "/v1/agent/heartbeat").json(&body).send().await {
            Ok(response) if response.status().is_success() => {
                self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                if let Ok(answer) = response.json::<HeartbeatAnswer>().await {
                    node.every_ms.store(answer.heartbeat_ms.unwrap_or(0), Ordering::Relaxed);
                }
            }
            Ok(response) if response.status().as_u16() == 409 || response.status().as_u16() == 401 => {
                // Declared down (or a server that forgot us): a new session reconciles.
                self.stats.declared_down.fetch_add(1, Ordering::Relaxed);
                node.reconnect.store(true, Ordering::SeqCst);
            }
            Ok(_) | Err(_) => {
                self.stats.request_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends simulated runs when they are due.
    async fn timer_loop(self: Arc<Fleet>) {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = Instant::now();
            let mut due = Vec::new();
            if let Ok(mut timers) = self.timers.lock() {
                while timers.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
                    if let Some(Reverse(entry)) = timers.pop() {
                        due.push(entry);
                    }
                }
            }
            for (_, index, task, attempt, code) in due {
                let node = &self.nodes[index];
                if let Ok(mut inner) = node.inner.lock() {
                    if inner.running.get(&task) == Some(&attempt) {
                        inner.running.remove(&task);
                        inner.pending.push((
                            task,
                            Event::Exit { attempt, code, oom_killed: false, at: Some(Timestamp::now()), usage: None, result: None },
                        ));
                    }
                }
                node.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_parses_and_says_what_it_wants() {
        let churn = Churn::parse("5@10s+20s").unwrap();
        assert_eq!((churn.nodes, churn.after, churn.pause), (5, Duration::from_secs(10), Duration::from_secs(20)));
        assert!(Churn::parse("5@10s").unwrap_err().contains("NODES@AFTER+PAUSE"));
        assert!(Churn::parse("x@1s+1s").is_err());
    }
}

//! The agent API (`/v1/agent/…`, protocol v1) and the registry of
//! connected remote agents, which is how assignments and cancels reach
//! them ([`RemoteAgents`] implements [`NodeLinks`]).
//!
//! An agent registers with the cluster's join token and gets a node token;
//! it then holds `GET /v1/agent/stream` open and the server pushes
//! newline-delimited JSON messages on it (`assign`, `cancel`, `reconcile`
//! first on every connect, `ping` every 5 s). Reports come back as
//! `POST /v1/agent/events`; the state machine refuses any about an attempt
//! that is not the task's current one, and the server refuses any about a
//! task placed on another node: a node cut off and come back can never
//! change a task that was given away.

use crate::api::{ApiError, AppState};
use crate::links::NodeLinks;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use shepherd_core::{IllegalTransition, LaunchSpec, Machine, MachineState, TaskId, Timestamp};
use shepherd_proto::{
    AgentMessage, AssignedAttempt, Captured, EventsRequest, EventsResponse, Heartbeat, HeartbeatAnswer, LogsRequest, Registered,
    Registration, WireLaunch, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use shepherd_store::{ApplyError, NodeRecord, NodeState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Connected remote agents: their tokens and the senders of their streams.
#[derive(Default)]
pub struct RemoteAgents {
    /// node token → node id.
    tokens: Mutex<HashMap<String, String>>,
    /// node id → the open stream.
    streams: Mutex<HashMap<String, mpsc::UnboundedSender<AgentMessage>>>,
}

impl RemoteAgents {
    /// Drops a node's stream and token: it must register again (and
    /// reconcile) before it gets anything.
    pub fn disconnect(&self, node_id: &str) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(node_id);
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, node| node != node_id);
        }
    }

    /// Whether this server holds the node's stream.
    pub fn holds(&self, node_id: &str) -> bool {
        self.streams.lock().map(|s| s.contains_key(node_id)).unwrap_or(false)
    }

    /// Asks every agent connected here to reconcile (messages between
    /// servers may have been missed).
    pub fn reconcile_all(&self) {
        let nodes: Vec<String> = self.streams.lock().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        for node in nodes {
            self.send(&node, AgentMessage::Reconcile);
        }
    }

    /// Sends a cancel to the node's agent if its stream is here; false if not.
    pub fn cancel_here(&self, node_id: &str, task_id: TaskId) -> bool {
        self.send(node_id, AgentMessage::Cancel { task_id })
    }

    /// Tells the node's agent that its node drains, if its stream is here; false if not.
    pub fn drain_here(&self, node_id: &str) -> bool {
        self.send(node_id, AgentMessage::Drain)
    }

    /// Tells the node's agent to pull an image now, if its stream is here; false if not.
    pub fn prefetch_here(
        &self,
        node_id: &str,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        pull_timeout_seconds: u32,
    ) -> bool {
        let project = project.map(str::to_string);
        self.send(node_id, AgentMessage::Prefetch { image: image.into(), auth, project, pull_timeout_seconds })
    }

    /// Tells the node's agent to remove a volume, if its stream is here; false if not.
    pub fn remove_volume_here(&self, node_id: &str, engine_name: &str, project: &str) -> bool {
        self.send(node_id, AgentMessage::RemoveVolume { engine_name: engine_name.into(), project: project.into() })
    }

    fn is_current(&self, node_id: &str, tx: &mpsc::UnboundedSender<AgentMessage>) -> bool {
        self.streams.lock().map(|s| s.get(node_id).is_some_and(|t| t.same_channel(tx))).unwrap_or(false)
    }

    fn send(&self, node_id: &str, message: AgentMessage) -> bool {
        let mut streams = match self.streams.lock() {
            Ok(streams) => streams,
            Err(_) => return false,
        };
        match streams.get(node_id) {
            Some(tx) if tx.send(message).is_ok() => true,
            Some(_) => {
                streams.remove(node_id);
                false
            }
            None => false,
        }
    }
}

impl NodeLinks for RemoteAgents {
    fn assign(&self, node_id: &str, launch: LaunchSpec) -> bool {
        let (task_id, attempt) = (launch.id, launch.attempt);
        self.send(node_id, AgentMessage::Assign { task_id, attempt, launch: Some(Box::new(WireLaunch::from(launch))) })
    }

    fn cancel(&self, node_id: &str, task_id: TaskId) {
        self.send(node_id, AgentMessage::Cancel { task_id });
    }

    fn drain(&self, node_id: &str) {
        self.drain_here(node_id);
    }
}

/// The cluster's join token; `None` turns agent registration off.
#[derive(Clone)]
pub struct AgentApi {
    pub join_token: Option<String>,
    pub agents: Arc<RemoteAgents>,
    /// Heartbeats land here first, off the store's write path.
    pub liveness: Arc<crate::liveness::Liveness>,
    /// Applied reports reach the scheduler's view through this.
    pub observer: crate::view::Observer,
    /// A node silent this long is down (agents heartbeat well inside it).
    pub node_timeout: Duration,
    /// Which attempts' output a node may write, and how much.
    pub logs: Arc<crate::agent_guard::LogGuard>,
    /// Refused reports and output, logged a line per node now and then.
    pub refusals: Arc<crate::agent_guard::Refusals>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        // Never expected on Linux; fall back to two ULIDs' randomness.
        return format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_protocol(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) {
        Some(PROTOCOL_VERSION) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "protocol_mismatch",
            format!("agent protocol {other:?} is not supported; this server speaks {PROTOCOL_VERSION}"),
        )),
    }
}

/// The node a request's bearer token belongs to.
fn node_of(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    check_protocol(headers)?;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing node token"))?;
    state
        .agent_api
        .agents
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(token).cloned())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown node token: register again"))
}

/// The agent API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/register", post(register))
        .route("/v1/agent/stream", get(stream))
        .route("/v1/agent/heartbeat", post(heartbeat))
        .route("/v1/agent/events", post(events))
        .route("/v1/agent/logs", post(logs))
        .route("/v1/agent/assigned", get(assigned))
        .route("/v1/agent/tasks/{id}/launch", get(launch))
        .route("/v1/agent/tasks/{id}/captured", get(captured))
        .route("/v1/agent/tasks/{id}/package", get(package))
        .route("/v1/agent/tasks/{id}/progress", post(progress))
}

/// The code package of a task on this node (the zip's bytes).
async fn package(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let node = node_of(&state, &headers)?;
    let id: TaskId = id.parse().map_err(|_| ApiError::not_found("no such task"))?;
    match state.store.launch_spec(id).await? {
        Some(launch) if launch.node_id.as_deref() == Some(node.as_str()) => {}
        _ => return Err(ApiError::not_found("no such task on this node")),
    }
    let zip =
        crate::local_backend::package_of(state.store.as_ref(), id).await?.ok_or_else(|| ApiError::not_found("the task has no package"))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/zip")], zip).into_response())
}

async fn progress(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(report): Json<shepherd_proto::ProgressReport>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = node_of(&state, &headers)?;
    let id: TaskId = id.parse().map_err(|_| ApiError::not_found("no such task"))?;
    let progress =
        shepherd_core::Progress::new(f64::from(report.progress.percent), report.progress.message).map_err(|e| e.within("progress"))?;
    let taken = crate::local_backend::attempt_progress(state.store.as_ref(), Some(&node), id, report.attempt, progress).await?;
    Ok(Json(serde_json::json!({ "taken": taken })))
}

async fn register(State(state): State<AppState>, headers: HeaderMap, Json(reg): Json<Registration>) -> Result<Json<Registered>, ApiError> {
    check_protocol(&headers)?;
    if reg.node_id.is_empty() || reg.node_id.len() > 128 {
        return Err(ApiError::field("node_id", "1 to 128 characters"));
    }
    let mut reg = reg;
    // The cluster's join token, or a provisioned machine's own.
    let machine = match &state.agent_api.join_token {
        Some(expected) if reg.join_token == *expected => None,
        cluster_token => match machine_joining(&state, &mut reg).await? {
            Some(machine) => Some(machine),
            None if cluster_token.is_none() => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "joining_disabled",
                    "this server takes no agents (start it with --join-token)",
                ))
            }
            None => return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong join token")),
        },
    };
    // A node id is its first registrant's: bound to the hash of that
    // agent's own secret, so a holder of the join token cannot register
    // as a live node and be handed its tasks and their secrets.
    let credential = reg.node_secret.as_deref().map(crate::auth::hash_token);
    if !state.store.claim_node(&reg.node_id, credential).await? {
        tracing::warn!(node = %reg.node_id, "a registration with another node's id and not its secret was refused");
        state.metrics.agent_refused("registration", 1);
        let entry = shepherd_store::AuditEntry {
            seq: 0,
            at: Timestamp::now(),
            actor: "agent".into(),
            project: None,
            action: "node.register_refused".into(),
            target: reg.node_id.clone(),
            detail: Some(format!("from host {:?}: the id is bound to another node's secret", reg.hostname)),
        };
        if let Err(e) = state.store.append_audit(vec![entry]).await {
            tracing::warn!(error = %e, "could not audit a refused registration");
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "node_id_taken",
            format!(
                "node id {} belongs to another node (registered with another secret): use a data directory of this node's own",
                reg.node_id
            ),
        )
        .with_field("node_id"));
    }
    let now = Timestamp::now();
    let previous = state.store.get_node(&reg.node_id).await?;
    // Registered (again): ready, unless drained. The stream's first
    // message makes the agent reconcile before any new work.
    let node_state = previous.as_ref().map_or(Ok(NodeState::Ready), |n| n.state.next(shepherd_core::NodeEvent::Registered));
    let node_state = node_state.map_err(|e| ApiError::new(StatusCode::CONFLICT, "not_registrable", e.to_string()))?;
    state
        .store
        .upsert_node(NodeRecord {
            id: reg.node_id.clone(),
            hostname: reg.hostname,
            state: node_state,
            driver: reg.driver,
            capacity: reg.capacity,
            max_tasks: reg.max_tasks,
            labels: reg.labels,
            images: reg.images,
            registered_at: previous.map_or(now, |n| n.registered_at),
            last_heartbeat_at: now,
        })
        .await?;
    let token = random_token();
    if let Ok(mut tokens) = state.agent_api.agents.tokens.lock() {
        tokens.retain(|_, node| *node != reg.node_id);
        tokens.insert(token.clone(), reg.node_id.clone());
    }
    if let Some(machine) = machine {
        machine_joined(&state, machine, &reg.node_id, now).await?;
    }
    state.agent_api.liveness.registered(&reg.node_id);
    state.agent_api.observer.view.nodes_changed();
    tracing::info!(node = %reg.node_id, "agent registered");
    state.scheduler_wakeup.notify_one();
    let every = state.agent_api.liveness.interval(state.agent_api.node_timeout);
    Ok(Json(Registered { node_token: token, heartbeat_ms: Some(every.as_millis() as u64) }))
}

/// The provisioned machine whose join credential the registration carries,
/// if any; its node then registers as the machine's pool and shape say,
/// whatever the agent claims.
async fn machine_joining(state: &AppState, reg: &mut Registration) -> Result<Option<Machine>, ApiError> {
    let hash = crate::auth::hash_token(&reg.join_token);
    let machines = state.store.machines().await?;
    let Some(machine) = machines.into_iter().find(|m| m.join_token_sha256 == hash) else { return Ok(None) };
    if !matches!(machine.state, MachineState::Creating | MachineState::Joined | MachineState::Draining) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", format!("machine {} is {}", machine.id, machine.state)));
    }
    if machine.node_id.as_deref().is_some_and(|node| node != reg.node_id) {
        return Err(ApiError::new(StatusCode::CONFLICT, "machine_taken", format!("machine {} joined as another node", machine.id)));
    }
    reg.capacity = machine.shape.capacity();
    reg.max_tasks = machine.shape.max_tasks;
    reg.labels.extend(machine.shape.labels.clone());
    reg.labels.insert("pool".into(), machine.pool.clone());
    reg.labels.insert("machine".into(), machine.id.clone());
    reg.labels.remove(shepherd_sched::DEDICATED_LABEL);
    Ok(Some(machine))
}

/// Records that a machine's agent joined (compare-and-set on its state).
async fn machine_joined(state: &AppState, machine: Machine, node_id: &str, now: Timestamp) -> Result<(), ApiError> {
    if machine.state != MachineState::Creating && machine.node_id.is_some() {
        return Ok(());
    }
    let expected = machine.state;
    let mut joined = machine;
    joined.node_id = Some(node_id.to_string());
    if expected == MachineState::Creating {
        joined.state = MachineState::Joined;
        joined.joined_at = Some(now);
        joined.updated_at = now;
    }
    if state.store.put_machine(joined.clone(), Some(expected)).await? {
        tracing::info!(machine = %joined.id, node = node_id, pool = %joined.pool, "machine joined");
    }
    Ok(())
}

async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let node = node_of(&state, &headers)?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Reconcile first: the agent learns which attempts are still its own.
    let _ = tx.send(AgentMessage::Reconcile);
    if let Ok(mut streams) = state.agent_api.agents.streams.lock() {
        streams.insert(node.clone(), tx.clone());
    }
    // Pings keep the stream alive; once the node is disconnected (down, or
    // a newer stream replaced this one) the pinger stops and the stream ends.
    let agents = state.agent_api.agents.clone();
    let pinger_node = node.clone();
    let (liveness, node_timeout) = (state.agent_api.liveness.clone(), state.agent_api.node_timeout);
    tokio::spawn(async move {
        while agents.is_current(&pinger_node, &tx) && tx.send(AgentMessage::Ping).is_ok() {
            // As often as the node heartbeats, between 5 and 10 s: an agent
            // takes 15 s of silence for a broken link.
            tokio::time::sleep(liveness.interval(node_timeout).clamp(Duration::from_secs(5), Duration::from_secs(10))).await;
        }
    });
    // Messages waiting together go out in one write (a pass that places
    // many tasks on a node sends them as one chunk).
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut message = Some(rx.recv().await?);
        let mut lines = Vec::new();
        while let Some(next) = message.take() {
            lines.extend(serde_json::to_vec(&next).unwrap_or_default());
            lines.push(b'\n');
            if lines.len() < STREAM_CHUNK {
                message = rx.try_recv().ok();
            }
        }
        Some((Ok::<_, std::io::Error>(lines), rx))
    });
    tracing::info!(%node, "agent stream open");
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Bytes of messages one stream write gathers at most.
const STREAM_CHUNK: usize = 256 * 1024;

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(beat): Json<Heartbeat>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let node = node_of(&state, &headers)?;
    let liveness = state.agent_api.liveness.clone();
    if liveness.is_down(&node) {
        // Back after being declared down: its tasks were given away; it
        // must reconnect (and reconcile) before it is ready again.
        return Err(ApiError::new(StatusCode::CONFLICT, "node_down", "node was declared down: reconnect"));
    }
    // The store learns the time and images with the next batch (liveness::flush).
    liveness.beat_with(&node, beat.images);
    Ok(Json(HeartbeatAnswer { heartbeat_ms: Some(liveness.interval(state.agent_api.node_timeout).as_millis() as u64) }))
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<EventsRequest>,
) -> Result<Json<EventsResponse>, ApiError> {
    let node = node_of(&state, &headers)?;
    // A report is a sign of life as good as a heartbeat.
    state.agent_api.liveness.beat(&node);
    // Only reports about tasks placed on this node are considered: the
    // store checks, in the transaction that writes them.
    let results = state.store.apply_reported(node.clone(), request.events, Timestamp::now()).await?;
    state.agent_api.observer.observe(&results);
    let mut refused = 0;
    let mut example = None;
    let accepted = results
        .iter()
        .map(|result| {
            if let Err(ApplyError::NotOnNode(task) | ApplyError::NotFound(task)) = result {
                refused += 1;
                example.get_or_insert(*task);
            }
            // A report repeated after its answer was lost counts as accepted.
            matches!(result, Ok(_) | Err(ApplyError::Illegal(IllegalTransition::Repeated { .. })))
        })
        .collect();
    if refused > 0 {
        state.metrics.agent_refused("report", refused);
        // Counted always, logged a line per node now and then: a rogue node
        // cannot fill the server's log.
        if let Some(count) = state.agent_api.refusals.note(&node, refused) {
            tracing::info!(%node, count, example = ?example, "refused what a node sent (reports about tasks not on it; counted in shepherd_agent_refusals, logged at most every 10 s per node)");
        }
    }
    state.scheduler_wakeup.notify_one();
    Ok(Json(EventsResponse { accepted }))
}

async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<LogsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = node_of(&state, &headers)?;
    let chunks: Vec<_> = request.chunks.into_iter().filter_map(|c| c.decode()).collect();
    // Only output of attempts on this node that have not ended, bounded.
    let sorted = state.agent_api.logs.sort(state.store.as_ref(), &node, chunks).await?;
    state.store.append_logs(sorted.accepted).await?;
    let refused = (sorted.not_its_own + sorted.over_bound) as u64;
    if refused > 0 {
        state.metrics.agent_refused("output_not_its_own", sorted.not_its_own as u64);
        state.metrics.agent_refused("output_over_bound", sorted.over_bound as u64);
        if let Some(count) = state.agent_api.refusals.note(&node, refused) {
            tracing::info!(%node, count, "refused what a node sent (output of attempts not on it, or past the bounds; counted in shepherd_agent_refusals, logged at most every 10 s per node)");
        }
    }
    Ok(Json(serde_json::json!({"ok": true, "refused": refused})))
}

async fn assigned(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<AssignedAttempt>>, ApiError> {
    let node = node_of(&state, &headers)?;
    Ok(Json(crate::local_backend::assigned_to(state.store.as_ref(), &node).await?))
}

async fn launch(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Option<WireLaunch>>, ApiError> {
    let node = node_of(&state, &headers)?;
    let id: TaskId = id.parse().map_err(|_| ApiError::not_found("no such task"))?;
    let launch = state.store.launch_spec(id).await?.filter(|l| l.node_id.as_deref() == Some(node.as_str()));
    Ok(Json(launch.map(WireLaunch::from)))
}

#[derive(serde::Deserialize)]
struct CapturedQuery {
    attempt: u32,
}

/// How much of an attempt's output is stored, per stream: an agent that
/// adopts the attempt after a restart goes on from there.
async fn captured(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<CapturedQuery>,
) -> Result<Json<Captured>, ApiError> {
    let node = node_of(&state, &headers)?;
    let id: TaskId = id.parse().map_err(|_| ApiError::not_found("no such task"))?;
    match state.store.launch_spec(id).await? {
        Some(launch) if launch.node_id.as_deref() == Some(node.as_str()) => {}
        _ => return Err(ApiError::not_found("no such task on this node")),
    }
    let captured = crate::local_backend::captured_in(state.store.as_ref(), id, query.attempt).await?;
    Ok(Json(captured))
}

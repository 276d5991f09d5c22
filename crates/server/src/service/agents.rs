//! What the agent API does, apart from HTTP: registration (the join token
//! or a machine's own, node ids bound to their agents' secrets),
//! heartbeats, reports, output, and what a node may read about the
//! attempts placed on it.
//!
//! A node token proves which node speaks, not that what it says is its own
//! business: reports about tasks placed on another node are refused by the
//! store in the transaction that would write them, and output is kept only
//! for the node's own unfinished attempts ([`LogGuard`]).

use crate::metrics::Metrics;
use crate::nodes::guard::{LogGuard, Refusals};
use crate::nodes::liveness::Liveness;
use crate::nodes::remote::RemoteAgents;
use crate::nodes::view::Observer;
use shepherd_core::{FieldError, IllegalTransition, Machine, MachineState, TaskId, Timestamp};
use shepherd_proto::{
    AgentMessage, AssignedAttempt, Captured, EventsRequest, EventsResponse, Heartbeat, HeartbeatAnswer, LogsRequest, Registered,
    Registration, WireLaunch,
};
use shepherd_store::{ApplyError, NodeRecord, NodeState, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Why the agent API refused a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No node token, an unknown one, a wrong join token, a machine that may not join.
    #[error("{0}")]
    Unauthorized(String),
    /// This server takes no agents.
    #[error("this server takes no agents (start it with --join-token)")]
    JoiningDisabled,
    /// The node id is bound to another node's secret.
    #[error("node id {0} belongs to another node (registered with another secret): use a data directory of this node's own")]
    NodeIdTaken(String),
    /// The node's state does not allow it to register (or a machine joined as another node).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Not this node's, or no such thing.
    #[error("{0}")]
    NotFound(String),
    /// A field that is not acceptable.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The agent API's operations and what they need.
#[derive(Clone)]
pub struct AgentService {
    pub store: Arc<dyn Store>,
    /// The cluster's join token; `None` turns agent registration off
    /// (machines' own tokens still work).
    pub join_token: Option<String>,
    /// Agents connected to this server.
    pub remote: Arc<RemoteAgents>,
    /// Heartbeats land here first, off the store's write path.
    pub liveness: Arc<Liveness>,
    /// Applied reports reach the scheduler's view through this.
    pub observer: Observer,
    /// A node silent this long is down (agents heartbeat well inside it).
    pub node_timeout: Duration,
    /// Which attempts' output a node may write, and how much.
    pub logs: Arc<LogGuard>,
    /// Refused reports and output, logged a line per node now and then.
    pub refusals: Arc<Refusals>,
    pub metrics: Arc<Metrics>,
    /// Wakes the scheduler when nodes register or attempts end.
    pub wakeup: Arc<Notify>,
}

impl AgentService {
    /// The node a node token was issued to.
    pub fn node_of(&self, token: Option<&str>) -> Result<String, AgentError> {
        let token = token.ok_or_else(|| AgentError::Unauthorized("missing node token".into()))?;
        self.remote.node_of_token(token).ok_or_else(|| AgentError::Unauthorized("unknown node token: register again".into()))
    }

    /// Registers a node (again): checks its join credential and that its id
    /// is its own, records it ready (unless drained), and hands it a node token.
    pub async fn register(&self, reg: Registration) -> Result<Registered, AgentError> {
        if reg.node_id.is_empty() || reg.node_id.len() > 128 {
            return Err(FieldError::new("node_id", "1 to 128 characters").into());
        }
        let mut reg = reg;
        // The cluster's join token, or a provisioned machine's own.
        let machine = match &self.join_token {
            Some(expected) if reg.join_token == *expected => None,
            cluster_token => match self.machine_joining(&mut reg).await? {
                Some(machine) => Some(machine),
                None if cluster_token.is_none() => return Err(AgentError::JoiningDisabled),
                None => return Err(AgentError::Unauthorized("wrong join token".into())),
            },
        };
        // A node id is its first registrant's: bound to the hash of that
        // agent's own secret, so a holder of the join token cannot register
        // as a live node and be handed its tasks and their secrets.
        let credential = reg.node_secret.as_deref().map(crate::service::auth::hash_token);
        if !self.store.claim_node(&reg.node_id, credential).await? {
            tracing::warn!(node = %reg.node_id, "a registration with another node's id and not its secret was refused");
            self.metrics.agent_refused("registration", 1);
            let entry = shepherd_store::AuditEntry {
                seq: 0,
                at: Timestamp::now(),
                actor: "agent".into(),
                project: None,
                action: "node.register_refused".into(),
                target: reg.node_id.clone(),
                detail: Some(format!("from host {:?}: the id is bound to another node's secret", reg.hostname)),
            };
            if let Err(e) = self.store.append_audit(vec![entry]).await {
                tracing::warn!(error = %e, "could not audit a refused registration");
            }
            return Err(AgentError::NodeIdTaken(reg.node_id));
        }
        let now = Timestamp::now();
        let previous = self.store.get_node(&reg.node_id).await?;
        // Registered (again): ready, unless drained. The stream's first
        // message makes the agent reconcile before any new work.
        let node_state = previous.as_ref().map_or(Ok(NodeState::Ready), |n| n.state.next(shepherd_core::NodeEvent::Registered));
        let node_state = node_state.map_err(|e| AgentError::Conflict { code: "not_registrable", message: e.to_string() })?;
        self.store
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
        let token = self.remote.issue_token(&reg.node_id);
        if let Some(machine) = machine {
            self.machine_joined(machine, &reg.node_id, now).await?;
        }
        self.liveness.registered(&reg.node_id);
        self.observer.view.nodes_changed();
        crate::nodes::dispatch::nodes_changed_everywhere(self.store.as_ref()).await;
        tracing::info!(node = %reg.node_id, "agent registered");
        self.wakeup.notify_one();
        let every = self.liveness.interval(self.node_timeout);
        Ok(Registered { node_token: token, heartbeat_ms: Some(every.as_millis() as u64) })
    }

    /// The provisioned machine whose join credential the registration carries,
    /// if any; its node then registers as the machine's pool and shape say,
    /// whatever the agent claims.
    async fn machine_joining(&self, reg: &mut Registration) -> Result<Option<Machine>, AgentError> {
        let hash = crate::service::auth::hash_token(&reg.join_token);
        let machines = self.store.machines().await?;
        let Some(machine) = machines.into_iter().find(|m| m.join_token_sha256 == hash) else { return Ok(None) };
        if !matches!(machine.state, MachineState::Creating | MachineState::Joined | MachineState::Draining) {
            return Err(AgentError::Unauthorized(format!("machine {} is {}", machine.id, machine.state)));
        }
        if machine.node_id.as_deref().is_some_and(|node| node != reg.node_id) {
            return Err(AgentError::Conflict { code: "machine_taken", message: format!("machine {} joined as another node", machine.id) });
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
    async fn machine_joined(&self, machine: Machine, node_id: &str, now: Timestamp) -> Result<(), AgentError> {
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
        if self.store.put_machine(joined.clone(), Some(expected)).await? {
            tracing::info!(machine = %joined.id, node = node_id, pool = %joined.pool, "machine joined");
        }
        Ok(())
    }

    /// Opens the node's stream of messages (a newer one replaces an older
    /// one): it starts with a reconcile, and pings keep it alive until the
    /// node is disconnected (down, or a newer stream replaced it).
    pub fn open_stream(&self, node: &str) -> mpsc::UnboundedReceiver<AgentMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Reconcile first: the agent learns which attempts are still its own.
        let _ = tx.send(AgentMessage::Reconcile);
        self.remote.open_stream(node, tx.clone());
        let agents = self.remote.clone();
        let pinger_node = node.to_string();
        let (liveness, node_timeout) = (self.liveness.clone(), self.node_timeout);
        tokio::spawn(async move {
            while agents.is_current(&pinger_node, &tx) && tx.send(AgentMessage::Ping).is_ok() {
                // As often as the node heartbeats, between 5 and 10 s: an agent
                // takes 15 s of silence for a broken link.
                tokio::time::sleep(liveness.interval(node_timeout).clamp(Duration::from_secs(5), Duration::from_secs(10))).await;
            }
        });
        tracing::info!(%node, "agent stream open");
        rx
    }

    /// A heartbeat: the node is alive (and holds these images). A node
    /// declared down must reconnect and reconcile first.
    pub fn heartbeat(&self, node: &str, beat: Heartbeat) -> Result<HeartbeatAnswer, AgentError> {
        if self.liveness.is_down(node) {
            // Back after being declared down: its tasks were given away; it
            // must reconnect (and reconcile) before it is ready again.
            return Err(AgentError::Conflict { code: "node_down", message: "node was declared down: reconnect".into() });
        }
        // The store learns the time and images with the next batch (heartbeats::flush).
        self.liveness.beat_with(node, beat.images);
        Ok(HeartbeatAnswer { heartbeat_ms: Some(self.liveness.interval(self.node_timeout).as_millis() as u64) })
    }

    /// Applies what a node reports about its attempts; reports about tasks
    /// not placed on it are refused (and counted).
    pub async fn report(&self, node: &str, request: EventsRequest) -> Result<EventsResponse, AgentError> {
        // A report is a sign of life as good as a heartbeat.
        self.liveness.beat(node);
        // Only reports about tasks placed on this node are considered: the
        // store checks, in the transaction that writes them.
        let began = std::time::Instant::now();
        let results = self.store.apply_reported(node.to_string(), request.events, Timestamp::now()).await;
        self.metrics.stage("agent_report", began.elapsed());
        let results = results?;
        self.observer.observe(&results);
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
            self.metrics.agent_refused("report", refused);
            // Counted always, logged a line per node now and then: a rogue node
            // cannot fill the server's log.
            if let Some(count) = self.refusals.note(node, refused) {
                tracing::info!(%node, count, example = ?example, "refused what a node sent (reports about tasks not on it; counted in shepherd_agent_refusals, logged at most every 10 s per node)");
            }
        }
        self.wakeup.notify_one();
        Ok(EventsResponse { accepted })
    }

    /// Stores the output a node may write; the number of chunks refused.
    pub async fn logs(&self, node: &str, request: LogsRequest) -> Result<u64, AgentError> {
        let chunks: Vec<_> = request.chunks.into_iter().filter_map(|c| c.decode()).collect();
        // Only output of attempts on this node that have not ended, bounded.
        let sorted = self.logs.sort(self.store.as_ref(), node, chunks).await?;
        self.store.append_logs(sorted.accepted).await?;
        let refused = (sorted.not_its_own + sorted.over_bound) as u64;
        if refused > 0 {
            self.metrics.agent_refused("output_not_its_own", sorted.not_its_own as u64);
            self.metrics.agent_refused("output_over_bound", sorted.over_bound as u64);
            if let Some(count) = self.refusals.note(node, refused) {
                tracing::info!(%node, count, "refused what a node sent (output of attempts not on it, or past the bounds; counted in shepherd_agent_refusals, logged at most every 10 s per node)");
            }
        }
        Ok(refused)
    }

    /// The attempts placed on the node that have not ended.
    pub async fn assigned(&self, node: &str) -> Result<Vec<AssignedAttempt>, AgentError> {
        Ok(crate::nodes::backend::assigned_to(self.store.as_ref(), node).await?)
    }

    /// The launch spec of a task's current attempt, if it is on this node.
    pub async fn launch(&self, node: &str, id: &str) -> Result<Option<WireLaunch>, AgentError> {
        let id: TaskId = id.parse().map_err(|_| AgentError::NotFound("no such task".into()))?;
        let launch = self.store.launch_spec(id).await?.filter(|l| l.node_id.as_deref() == Some(node));
        Ok(launch.map(WireLaunch::from))
    }

    /// A task of this node, or 404.
    async fn own_task(&self, node: &str, id: &str) -> Result<TaskId, AgentError> {
        let id: TaskId = id.parse().map_err(|_| AgentError::NotFound("no such task".into()))?;
        match self.store.launch_spec(id).await? {
            Some(launch) if launch.node_id.as_deref() == Some(node) => Ok(id),
            _ => Err(AgentError::NotFound("no such task on this node".into())),
        }
    }

    /// How much of an attempt's output is stored, per stream: an agent that
    /// adopts the attempt after a restart goes on from there.
    pub async fn captured(&self, node: &str, id: &str, attempt: u32) -> Result<Captured, AgentError> {
        let id = self.own_task(node, id).await?;
        Ok(crate::nodes::backend::captured_in(self.store.as_ref(), id, attempt).await?)
    }

    /// The code package (the zip's bytes) of a task on this node.
    pub async fn package(&self, node: &str, id: &str) -> Result<Vec<u8>, AgentError> {
        let id = self.own_task(node, id).await?;
        crate::nodes::backend::package_of(self.store.as_ref(), id)
            .await?
            .ok_or_else(|| AgentError::NotFound("the task has no package".into()))
    }

    /// A progress report from a task, sent by its node; whether it was
    /// taken (only while that attempt still waits to start or runs there).
    pub async fn progress(&self, node: &str, id: &str, report: shepherd_proto::ProgressReport) -> Result<bool, AgentError> {
        let id: TaskId = id.parse().map_err(|_| AgentError::NotFound("no such task".into()))?;
        let progress =
            shepherd_core::Progress::new(f64::from(report.progress.percent), report.progress.message).map_err(|e| e.within("progress"))?;
        Ok(crate::nodes::backend::attempt_progress(self.store.as_ref(), Some(node), id, report.attempt, progress).await?)
    }
}

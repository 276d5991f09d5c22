//! The autoscaler: grows and shrinks autoscaled pools with machines made by
//! provisioners (`shepherd-provision`). Leader only; every `interval` it
//!
//! 1. destroys failed machines, and fails creates whose agent never joined
//!    within the pool's `join_timeout` and machines whose node has been
//!    down that long;
//! 2. drains machines idle past the pool's `idle_time` (never below `min`,
//!    never one holding a task), and destroys drained ones once empty;
//! 3. makes machines up to each pool's `min`;
//! 4. plans a scale-up with the placement engine
//!    ([`shepherd_sched::autoscale::plan`]): the ready queued tasks placed
//!    on the nodes there are plus the machines being made, then what is
//!    left on candidate machines of each pool; it makes what the plan
//!    says, within `max`, `max_creating`, the cooldown and any backoff, and
//!    tells every waiting task why (its `reason`).
//!
//! A machine is recorded (`creating`) before its provisioner is called, so
//! a crash mid-create leaves a record. When it starts to lead, and every
//! 30 s, the autoscaler reconciles the store with each provisioner's
//! `list`: a listed machine with no record is destroyed; a joined machine
//! that is not listed fails and is destroyed; a `creating` one that is not
//! listed and that no create answered (a server died mid-create) is asked
//! for again with the same id and join token (a machine's token is an HMAC
//! of its id under a key the store keeps; creates are idempotent), so it is
//! never made twice nor forgotten; one made but not listed yet keeps its
//! place until its join timeout. A create that fails or times out counts
//! against its pool: it backs off (1 s, doubling, at most 5 min), and after
//! three failures in a row the pool is `failing` (API, metrics, an error
//! log) until a machine of it joins. Other pools go on.

pub mod config;

use crate::loops::leader::Leadership;
use crate::metrics::Metrics;
use crate::nodes::links::NodeLinks;
use crate::nodes::view::ClusterView;
use crate::placement_notes::PlacementNotes;
use config::{AutoscaleConfig, PoolConfig, ProvisionerConfig};
use serde::Serialize;
use shepherd_core::{Machine, MachineState, NodeState, ProjectLimits, Timestamp};
use shepherd_provision::{MachineRequest, ProviderMachine, Provisioner};
use shepherd_sched::autoscale::{PoolOption, ScaleNote};
use shepherd_sched::{Engine, NodeSnapshot, QuotaLedger};
use shepherd_store::{AuditEntry, QueueQuery, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Creates that fail in a row before a pool is `failing`.
const FAILING_AFTER: u32 = 3;
/// The longest backoff between creates of a failing pool.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the store is reconciled with the provisioners' lists.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// The longest a destroy may take.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(300);
/// Queued tasks a scale-up plan looks at.
const PLAN_TASKS: usize = 2000;

/// What the autoscaler works with, from the rest of the server.
pub struct AutoscaleParts {
    pub store: Arc<dyn Store>,
    pub view: Arc<ClusterView>,
    pub engine: Arc<Engine>,
    pub leadership: Leadership,
    pub links: Arc<dyn NodeLinks>,
    pub notes: Arc<PlacementNotes>,
    pub metrics: Arc<Metrics>,
    pub wakeup: Arc<Notify>,
}

/// A pool's state between rounds (in memory: a new leader starts afresh).
#[derive(Default)]
struct PoolState {
    last_scale_up: Option<Instant>,
    failures: u32,
    backoff_until: Option<Instant>,
    last_failure_at: Option<Timestamp>,
    last_error: Option<String>,
}

/// The autoscaler of one server (it acts only while the server leads).
pub struct Autoscaler {
    parts: AutoscaleParts,
    config: AutoscaleConfig,
    provisioners: BTreeMap<String, Arc<dyn Provisioner>>,
    cluster: String,
    /// The key machines' join tokens are made with (shared by the store).
    token_key: ring::hmac::Key,
    join_urls: Vec<String>,
    pools: Mutex<HashMap<String, PoolState>>,
    /// Machines with a create or destroy of this server in flight.
    in_flight: Mutex<HashSet<String>>,
    /// When each idle node of a machine was first seen idle.
    idle_since: Mutex<HashMap<String, Instant>>,
    /// When a failed destroy of a machine may be tried again.
    destroy_retry: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Why the autoscaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error("provisioner {name}: {source}")]
    Provisioner { name: String, source: shepherd_provision::ProvisionError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A pool as the API shows it: its configuration and how it is doing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    pub name: String,
    pub config: PoolConfig,
    /// Its machines by state.
    pub machines: BTreeMap<String, u32>,
    /// Creates keep failing: it backs off.
    pub failing: bool,
    /// Creates that failed in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    /// No create before this time (backoff), if any.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub backoff_until: Option<Timestamp>,
}

impl Autoscaler {
    /// Builds the provisioners and learns the cluster's id. `server_url`
    /// is where machines join unless the configuration says otherwise;
    /// `machines_dir` is the default data root of docker machines.
    pub async fn new(
        config: AutoscaleConfig,
        parts: AutoscaleParts,
        server_url: &str,
        machines_dir: std::path::PathBuf,
    ) -> Result<Arc<Autoscaler>, AutoscaleError> {
        let mut provisioners: BTreeMap<String, Arc<dyn Provisioner>> = BTreeMap::new();
        for (name, p) in &config.provisioners {
            let made: Arc<dyn Provisioner> = match p {
                ProvisionerConfig::Docker(docker) => Arc::new(
                    shepherd_provision::docker::DockerProvisioner::connect(docker.clone(), machines_dir.clone())
                        .await
                        .map_err(|source| AutoscaleError::Provisioner { name: name.clone(), source })?,
                ),
                ProvisionerConfig::Exec(exec) => Arc::new(
                    shepherd_provision::exec::ExecProvisioner::new(exec.clone())
                        .map_err(|source| AutoscaleError::Provisioner { name: name.clone(), source })?,
                ),
            };
            provisioners.insert(name.clone(), made);
        }
        Self::with_provisioners(config, parts, server_url, provisioners).await
    }

    /// An autoscaler over provisioners already made (tests use the fake).
    pub async fn with_provisioners(
        config: AutoscaleConfig,
        parts: AutoscaleParts,
        server_url: &str,
        provisioners: BTreeMap<String, Arc<dyn Provisioner>>,
    ) -> Result<Arc<Autoscaler>, AutoscaleError> {
        let cluster = parts.store.cluster_id().await?;
        let proposed = crate::service::auth::random_hex().map_err(|_| StoreError::Unavailable("no randomness for a key".into()))?;
        let key = parts.store.cluster_value("machine_token_key", &proposed).await?;
        let join_urls = if config.join_urls.is_empty() { vec![server_url.to_string()] } else { config.join_urls.clone() };
        for pool in config.pools.keys() {
            parts.metrics.pool_failing(pool, false);
        }
        Ok(Arc::new(Autoscaler {
            parts,
            config,
            provisioners,
            cluster,
            token_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()),
            join_urls,
            pools: Mutex::default(),
            in_flight: Mutex::default(),
            idle_since: Mutex::default(),
            destroy_retry: Mutex::default(),
        }))
    }

    /// The cluster id machines are tagged with.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Runs until shutdown: a round every `interval` while leading, a
    /// reconcile on taking the lead and every 30 s.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut led_epoch = None;
        let mut reconciled = Instant::now();
        loop {
            if let Some(lease) = self.parts.leadership.lease() {
                if led_epoch != Some(lease.epoch) || reconciled.elapsed() >= RECONCILE_EVERY {
                    led_epoch = Some(lease.epoch);
                    if let Err(e) = self.reconcile().await {
                        tracing::warn!(error = %e, "autoscaler: could not reconcile machines");
                    }
                    reconciled = Instant::now();
                }
                if let Err(e) = self.clone().round().await {
                    tracing::warn!(error = %e, "autoscaler round failed");
                }
            } else {
                led_epoch = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A machine's join token: an HMAC of its id under the cluster's key,
    /// so that whichever server leads can make it again (to resume a
    /// create a dead server began) while the store keeps only its hash.
    fn join_token(&self, machine: &str) -> String {
        let tag = ring::hmac::sign(&self.token_key, machine.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.lock().map(|f| f.contains(id)).unwrap_or(true)
    }

    /// Takes a machine for a create or destroy; false if one is in flight.
    fn take(&self, id: &str) -> bool {
        self.in_flight.lock().map(|mut f| f.insert(id.to_string())).unwrap_or(false)
    }

    fn release(&self, id: &str) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.remove(id);
        }
    }

    /// The store's machines against the provisioners' lists.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), AutoscaleError> {
        let machines = self.parts.store.machines().await?;
        let known: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut listed: HashMap<String, ProviderMachine> = HashMap::new();
        let mut answered: HashSet<&str> = HashSet::new();
        for (name, provisioner) in &self.provisioners {
            match provisioner.list(&self.cluster).await {
                Ok(list) => {
                    answered.insert(name.as_str());
                    for machine in list {
                        if known.contains_key(machine.machine_id.as_str()) || self.is_in_flight(&machine.machine_id) {
                            listed.insert(machine.machine_id.clone(), machine);
                            continue;
                        }
                        // Made, but unknown to the store: a create whose record is gone.
                        tracing::warn!(machine = %machine.machine_id, provisioner = %name, "destroying a machine the store does not know");
                        if let Err(e) = provisioner.destroy(&self.cluster, &machine).await {
                            tracing::warn!(machine = %machine.machine_id, error = %e, "could not destroy an unknown machine");
                        } else {
                            self.audit("machine.destroy", &machine.machine_id, "unknown to the store (reconcile)".into()).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(provisioner = %name, error = %e, "autoscaler: could not list machines"),
            }
        }
        for machine in &machines {
            // Only what a provisioner that answered should have listed.
            let Some(pool) = self.config.pools.get(&machine.pool) else { continue };
            if !answered.contains(pool.provisioner.as_str()) || self.is_in_flight(&machine.id) {
                continue;
            }
            match (machine.state, listed.get(&machine.id)) {
                (MachineState::Creating | MachineState::Joined | MachineState::Draining, Some(found))
                    if machine.provider_id.as_deref() != Some(found.provider_id.as_str()) =>
                {
                    let mut updated = machine.clone();
                    updated.provider_id = Some(found.provider_id.clone());
                    self.parts.store.put_machine(updated, Some(machine.state)).await?;
                }
                // Not listed, and no create answered: one a dead server began
                // (its process may still run, or died with it, or was never
                // started). Asked again with the same id and join token: a
                // create is idempotent, so it is never made twice.
                (MachineState::Creating, None) if machine.provider_id.is_none() => {
                    if let Some(provisioner) = self.provisioners.get(&pool.provisioner).cloned() {
                        tracing::info!(machine = %machine.id, pool = %machine.pool, "resuming an interrupted create");
                        self.audit("machine.resume", &machine.id, format!("pool {}: a create a server began", machine.pool)).await;
                        self.take(&machine.id);
                        self.clone().launch(provisioner, machine.clone(), pool);
                    }
                }
                // Made but not listed yet (a slow provider): it keeps its
                // place until its join timeout; if it never joins, it fails then.
                (MachineState::Creating, None) => {}
                (MachineState::Joined | MachineState::Draining, None) => {
                    self.fail(machine, "gone from its provisioner's list").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Marks a machine failed (it is destroyed next round).
    async fn fail(&self, machine: &Machine, why: &str) -> Result<(), StoreError> {
        let mut failed = machine.clone();
        if failed.become_(MachineState::Failed, Timestamp::now()).is_err() {
            return Ok(());
        }
        failed.error = Some(why.to_string());
        if self.parts.store.put_machine(failed, Some(machine.state)).await? {
            tracing::warn!(machine = %machine.id, pool = %machine.pool, why, "machine failed");
        }
        Ok(())
    }

    async fn audit(&self, action: &str, target: &str, detail: String) {
        let entry = AuditEntry {
            seq: 0,
            at: Timestamp::now(),
            actor: "autoscaler".into(),
            project: None,
            action: action.into(),
            target: target.into(),
            detail: Some(detail),
        };
        if let Err(e) = self.parts.store.append_audit(vec![entry]).await {
            tracing::error!(error = %e, action, target, "could not write the audit log");
        }
    }

    /// One look at every pool.
    pub async fn round(self: Arc<Self>) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let machines = self.parts.store.machines().await?;
        let records = Arc::new(self.parts.store.list_nodes().await?);
        let nodes: HashMap<&str, &shepherd_store::NodeRecord> = records.iter().map(|n| (n.id.as_str(), n)).collect();
        self.note_joins(&machines);

        // 1. Failed machines go; creates that never joined fail.
        for machine in &machines {
            match machine.state {
                MachineState::Failed | MachineState::Destroying if !self.is_in_flight(&machine.id) => {
                    let due = self
                        .destroy_retry
                        .lock()
                        .ok()
                        .and_then(|r| r.get(&machine.id).map(|(_, at)| *at))
                        .is_none_or(|at| Instant::now() >= at);
                    if due {
                        self.clone().destroy(machine.clone(), machine.error.clone().unwrap_or_else(|| "failed".into()));
                    }
                }
                MachineState::Creating if !self.is_in_flight(&machine.id) => {
                    let timeout = self.config.pools.get(&machine.pool).map_or(Duration::from_secs(300), |p| p.join_timeout);
                    if now.millis() - machine.created_at.millis() > timeout.as_millis() as i64 {
                        self.fail(machine, &format!("its agent did not join within {}", humantime::format_duration(timeout))).await?;
                        self.count_failure(&machine.pool, "its agent did not join in time".into());
                    }
                }
                // A machine whose node went down and stayed silent past the
                // join timeout is dead: it fails and is destroyed.
                MachineState::Joined | MachineState::Draining if !self.is_in_flight(&machine.id) => {
                    let timeout = self.config.pools.get(&machine.pool).map_or(Duration::from_secs(300), |p| p.join_timeout);
                    let node = machine.node_id.as_deref().and_then(|id| nodes.get(id));
                    let dead = node.is_some_and(|n| {
                        n.state == NodeState::Down && now.millis() - n.last_heartbeat_at.millis() > timeout.as_millis() as i64
                    });
                    if dead {
                        let why = format!("its node has been down for more than {}", humantime::format_duration(timeout));
                        self.fail(machine, &why).await?;
                    }
                }
                _ => {}
            }
        }

        // What each node holds: the scheduler's view, kept by the leader; until
        // the scheduler built it (it does not while there are no nodes at
        // all), one read from the store.
        let own;
        let view: &ClusterView = if self.parts.view.is_built() {
            &self.parts.view
        } else {
            own = ClusterView::default();
            own.rebuild(&self.parts.store.active_tasks().await?);
            &own
        };
        let (snapshots, usage, held) = view.snapshot(&records);
        let code_usage = view.code_usage();
        let tasks_on: HashMap<&str, u32> = snapshots.iter().map(|n| (n.id.as_str(), n.task_count)).collect();

        // 2. Idle machines drain; drained ones go once empty.
        let mut active: HashMap<&str, u32> = HashMap::new();
        for m in machines.iter().filter(|m| m.state.counts()) {
            *active.entry(m.pool.as_str()).or_default() += 1;
        }
        let mut idle_now: Vec<(&Machine, Duration)> = Vec::new();
        if let Ok(mut idle) = self.idle_since.lock() {
            let mut seen = HashSet::new();
            for m in machines.iter().filter(|m| m.state == MachineState::Joined) {
                let Some(node) = m.node_id.as_deref() else { continue };
                seen.insert(node.to_string());
                let ready = nodes.get(node).is_some_and(|n| n.state == NodeState::Ready);
                if ready && tasks_on.get(node).copied().unwrap_or(0) == 0 {
                    let since = *idle.entry(node.to_string()).or_insert_with(Instant::now);
                    idle_now.push((m, since.elapsed()));
                } else {
                    idle.remove(node);
                }
            }
            idle.retain(|node, _| seen.contains(node));
        }
        idle_now.sort_by_key(|(_, idle_for)| std::cmp::Reverse(*idle_for));
        for (machine, idle_for) in idle_now {
            // A pool no longer configured keeps none of its machines.
            let (idle_time, min) = self.config.pools.get(&machine.pool).map_or((Duration::ZERO, 0), |p| (p.idle_time, p.min));
            let count = active.get(machine.pool.as_str()).copied().unwrap_or(0);
            if idle_for < idle_time || count <= min {
                continue;
            }
            if self.drain(machine).await? {
                active.insert(machine.pool.as_str(), count - 1);
            }
        }
        for machine in machines.iter().filter(|m| m.state == MachineState::Draining && !self.is_in_flight(&m.id)) {
            let empty = match machine.node_id.as_deref() {
                Some(node) => tasks_on.get(node).copied().unwrap_or(0) == 0 && self.parts.store.active_tasks_on(node).await?.is_empty(),
                None => true,
            };
            if empty {
                self.clone().destroy(machine.clone(), "idle, drained and empty".into());
            }
        }

        // 3 and 4. Grow: to each pool's min, then as the waiting tasks need.
        let mut options = Vec::new();
        for (name, pool) in &self.config.pools {
            let of_pool: Vec<&Machine> = machines.iter().filter(|m| &m.pool == name).collect();
            let total = of_pool.len() as u32;
            let creating = of_pool.iter().filter(|m| m.state == MachineState::Creating).count() as u32;
            let counted = of_pool.iter().filter(|m| m.state.counts()).count() as u32;
            let (mut room, mut limited_by) = (pool.max.saturating_sub(total).min(pool.max_creating.saturating_sub(creating)), None);
            if total >= pool.max {
                limited_by = Some(format!("it is at its max of {} machines", pool.max));
            } else if creating >= pool.max_creating {
                limited_by = Some(format!("{creating} machines are being made (max_creating {})", pool.max_creating));
            }
            if let Some((until, failures, error)) = self.backoff(name) {
                room = 0;
                limited_by = Some(format!(
                    "backing off for {} after {failures} failed creates (last: {error})",
                    humantime::format_duration(Duration::from_secs(until.saturating_duration_since(Instant::now()).as_secs()))
                ));
            }
            if counted < pool.min && room > 0 {
                let n = (pool.min - counted).min(room);
                for _ in 0..n {
                    self.clone().create(name, pool).await?;
                }
                // This round's machines are not in its view of the pool yet.
                room = 0;
                limited_by = Some(format!("machines up to its min of {} are being made", pool.min));
            }
            let cooling = self
                .pools
                .lock()
                .ok()
                .and_then(|p| p.get(name).and_then(|s| s.last_scale_up))
                .is_some_and(|at| at.elapsed() < pool.scale_up_cooldown);
            if cooling && room > 0 {
                room = 0;
                limited_by = Some(format!("cooling down (scale_up_cooldown {})", humantime::format_duration(pool.scale_up_cooldown)));
            }
            options.push(PoolOption { name: name.clone(), template: template(name, pool, &format!("{name}-new")), room, limited_by });
        }
        if options.is_empty() {
            return Ok(());
        }
        let page = self.parts.store.queued_tasks(now, QueueQuery { limit: PLAN_TASKS, projects: None, skip_shapes: Vec::new() }).await?;
        if page.tasks.is_empty() {
            self.parts.notes.set_autoscale(HashMap::new());
            return Ok(());
        }
        let tasks: Vec<_> = page.tasks.iter().map(|t| crate::loops::scheduler::pending(t, &Default::default())).collect();
        // Machines being made count as the empty nodes they will be.
        let mut coming = Vec::new();
        for m in machines.iter().filter(|m| m.state == MachineState::Creating) {
            if let Some(pool) = self.config.pools.get(&m.pool) {
                coming.push(template(&m.pool, pool, &m.id));
            }
        }
        let limits: HashMap<String, ProjectLimits> = self
            .parts
            .store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| p.limits != ProjectLimits::default())
            .map(|p| (p.name, p.limits))
            .collect();
        let code_limits = self.parts.store.code_limits().await?.into_iter().map(|l| ((l.project, l.name), l.max)).collect();
        let quota = QuotaLedger::new(held, limits).with_codes(code_usage, code_limits);
        let engine = self.parts.engine.clone();
        let plan = tokio::task::spawn_blocking(move || {
            shepherd_sched::autoscale::plan(&engine, snapshots, coming, &usage, quota, tasks, &options, 0)
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        let notes = plan
            .notes
            .into_iter()
            .filter(|(_, note)| !matches!(note, ScaleNote::Fits | ScaleNote::Quota))
            .map(|(id, note)| (id, note.to_string()))
            .collect();
        self.parts.notes.set_autoscale(notes);
        for (name, count) in plan.create {
            let Some(pool) = self.config.pools.get(&name) else { continue };
            tracing::info!(pool = %name, machines = count, "scaling up");
            if let Ok(mut pools) = self.pools.lock() {
                pools.entry(name.clone()).or_default().last_scale_up = Some(Instant::now());
            }
            for _ in 0..count {
                self.clone().create(&name, pool).await?;
            }
        }
        Ok(())
    }

    /// A pool's backoff, if it is in one: until, failures, last error.
    fn backoff(&self, pool: &str) -> Option<(Instant, u32, String)> {
        let pools = self.pools.lock().ok()?;
        let state = pools.get(pool)?;
        let until = state.backoff_until.filter(|at| *at > Instant::now())?;
        Some((until, state.failures, state.last_error.clone().unwrap_or_default()))
    }

    /// A machine of a pool joined since its last failure: the pool recovers.
    fn note_joins(&self, machines: &[Machine]) {
        let Ok(mut pools) = self.pools.lock() else { return };
        for m in machines {
            let Some(state) = pools.get_mut(&m.pool) else { continue };
            let joined_after = match (m.joined_at, state.last_failure_at) {
                (Some(joined), Some(failed)) => joined > failed,
                _ => false,
            };
            if joined_after && state.failures > 0 {
                tracing::info!(pool = %m.pool, "a machine joined: the pool recovers");
                state.failures = 0;
                state.backoff_until = None;
                self.parts.metrics.pool_failing(&m.pool, false);
            }
        }
    }

    /// A create of the pool failed.
    fn count_failure(&self, pool: &str, error: String) {
        self.parts.metrics.machine_create(pool, "failed");
        let Ok(mut pools) = self.pools.lock() else { return };
        let state = pools.entry(pool.to_string()).or_default();
        state.failures += 1;
        let backoff = Duration::from_secs(1u64 << state.failures.saturating_sub(1).min(9)).min(MAX_BACKOFF);
        state.backoff_until = Some(Instant::now() + backoff);
        state.last_failure_at = Some(Timestamp::now());
        state.last_error = Some(error.clone());
        if state.failures >= FAILING_AFTER {
            tracing::error!(
                pool,
                failures = state.failures,
                error,
                ?backoff,
                "autoscaled pool is failing: its machine creates keep failing"
            );
            self.parts.metrics.pool_failing(pool, true);
        } else {
            tracing::warn!(pool, failures = state.failures, error, ?backoff, "machine create failed; backing off");
        }
    }

    /// Records a new machine of the pool and has it made in the background.
    async fn create(self: Arc<Self>, pool_name: &str, pool: &PoolConfig) -> Result<(), StoreError> {
        let Some(provisioner) = self.provisioners.get(&pool.provisioner).cloned() else { return Ok(()) };
        let id = format!("m-{}", ulid::Ulid::new().to_string().to_lowercase());
        let now = Timestamp::now();
        let machine = Machine {
            id: id.clone(),
            pool: pool_name.to_string(),
            provisioner: pool.provisioner.clone(),
            provider_id: None,
            state: MachineState::Creating,
            shape: pool.shape(),
            cost: pool.cost.clone(),
            node_id: None,
            created_at: now,
            updated_at: now,
            provisioned_at: None,
            joined_at: None,
            error: None,
            join_token_sha256: crate::service::auth::hash_token(&self.join_token(&id)),
        };
        self.take(&id);
        if !self.parts.store.put_machine(machine.clone(), None).await? {
            self.release(&id);
            return Ok(());
        }
        self.audit(
            "machine.create",
            &id,
            format!("pool {pool_name}: {} millicores, {} MiB, via {}", pool.cpu_millicores, pool.memory_mib, pool.provisioner),
        )
        .await;
        tracing::info!(machine = %id, pool = %pool_name, "creating a machine");
        self.launch(provisioner, machine, pool);
        Ok(())
    }

    /// Asks the provisioner for a recorded machine (taken in flight by the
    /// caller; released when the create answers) and records the answer.
    fn launch(self: Arc<Self>, provisioner: Arc<dyn Provisioner>, machine: Machine, pool: &PoolConfig) {
        let mut labels = pool.labels.clone();
        labels.insert("pool".into(), machine.pool.clone());
        labels.insert("machine".into(), machine.id.clone());
        let request = MachineRequest {
            cluster: self.cluster.clone(),
            machine_id: machine.id.clone(),
            pool: machine.pool.clone(),
            shape: machine.shape.clone(),
            labels,
            join_urls: self.join_urls.clone(),
            join_token: self.join_token(&machine.id),
        };
        let timeout = pool.join_timeout;
        tokio::spawn(async move {
            let made = match tokio::time::timeout(timeout, provisioner.create(&request)).await {
                Ok(made) => made.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the create took longer than {}", humantime::format_duration(timeout))),
            };
            match made {
                Ok(provider_id) => {
                    self.parts.metrics.machine_create(&machine.pool, "made");
                    // Its agent may have joined already: set the provider id on what is stored.
                    for _ in 0..5 {
                        let current = match self.parts.store.machines().await {
                            Ok(all) => all.into_iter().find(|m| m.id == machine.id),
                            Err(_) => None,
                        };
                        let Some(current) = current else { break };
                        let expected = current.state;
                        let updated = Machine { provider_id: Some(provider_id.clone()), provisioned_at: Some(Timestamp::now()), ..current };
                        if matches!(self.parts.store.put_machine(updated, Some(expected)).await, Ok(true)) {
                            break;
                        }
                    }
                    tracing::info!(machine = %machine.id, provider_id, "machine made; waiting for its agent to join");
                }
                Err(error) => {
                    self.count_failure(&machine.pool, error.clone());
                    if let Err(e) = self.fail(&machine, &format!("create failed: {error}")).await {
                        tracing::warn!(machine = %machine.id, error = %e, "could not record a failed create");
                    }
                }
            }
            self.release(&machine.id);
        });
    }

    /// Drains a machine's node; true if it is now draining.
    async fn drain(&self, machine: &Machine) -> Result<bool, StoreError> {
        let Some(node) = machine.node_id.as_deref() else { return Ok(false) };
        if !self.parts.store.active_tasks_on(node).await?.is_empty() {
            return Ok(false);
        }
        let mut draining = machine.clone();
        if draining.become_(MachineState::Draining, Timestamp::now()).is_err() {
            return Ok(false);
        }
        if !self.parts.store.put_machine(draining, Some(machine.state)).await? {
            return Ok(false);
        }
        self.parts.store.set_node_state(node, NodeState::Draining).await?;
        self.parts.view.nodes_changed();
        self.parts.links.drain(node);
        if let Ok(mut idle) = self.idle_since.lock() {
            idle.remove(node);
        }
        tracing::info!(machine = %machine.id, node, pool = %machine.pool, "idle machine draining");
        self.audit("machine.drain", &machine.id, format!("pool {}: idle", machine.pool)).await;
        Ok(true)
    }

    /// Destroys a machine in the background: provider, node record, machine record.
    fn destroy(self: Arc<Self>, machine: Machine, why: String) {
        if !self.take(&machine.id) {
            return;
        }
        tokio::spawn(async move {
            let result = self.destroy_now(&machine, &why).await;
            if let Err(error) = result {
                let mut retries = self.destroy_retry.lock().ok();
                let tries = retries.as_mut().map_or(1, |r| {
                    let entry = r.entry(machine.id.clone()).or_insert((0, Instant::now()));
                    entry.0 += 1;
                    entry.1 = Instant::now() + Duration::from_secs(1u64 << entry.0.min(8)).min(MAX_BACKOFF);
                    entry.0
                });
                drop(retries);
                tracing::warn!(machine = %machine.id, tries, error, "machine destroy failed; will retry");
            } else if let Ok(mut r) = self.destroy_retry.lock() {
                r.remove(&machine.id);
            }
            self.release(&machine.id);
        });
    }

    async fn destroy_now(&self, machine: &Machine, why: &str) -> Result<(), String> {
        let store = &self.parts.store;
        let mut current = store.machines().await.map_err(|e| e.to_string())?.into_iter().find(|m| m.id == machine.id).ok_or("gone")?;
        if current.state != MachineState::Destroying {
            let expected = current.state;
            current.become_(MachineState::Destroying, Timestamp::now()).map_err(|e| e.to_string())?;
            if !store.put_machine(current.clone(), Some(expected)).await.map_err(|e| e.to_string())? {
                return Err("changed meanwhile".into());
            }
        }
        let provisioner = self.provisioners.get(&current.provisioner).ok_or_else(|| format!("no provisioner {}", current.provisioner))?;
        let target = ProviderMachine {
            machine_id: current.id.clone(),
            provider_id: current.provider_id.clone().unwrap_or_default(),
            pool: Some(current.pool.clone()),
        };
        match tokio::time::timeout(DESTROY_TIMEOUT, provisioner.destroy(&self.cluster, &target)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the destroy timed out".into()),
        }
        if let Some(node) = &current.node_id {
            if !store.delete_node(node).await.map_err(|e| e.to_string())? {
                tracing::warn!(machine = %current.id, node, "a destroyed machine's node still holds tasks; they will be lost with it");
            }
            self.parts.view.nodes_changed();
        }
        store.delete_machine(&current.id).await.map_err(|e| e.to_string())?;
        tracing::info!(machine = %current.id, pool = %current.pool, why, "machine destroyed");
        self.audit("machine.destroy", &current.id, format!("pool {}: {why}", current.pool)).await;
        self.parts.wakeup.notify_one();
        Ok(())
    }

    /// Every pool: configuration, machines by state, failures.
    pub async fn status(&self) -> Result<Vec<PoolStatus>, StoreError> {
        let machines = self.parts.store.machines().await?;
        let pools = self.pools.lock().map_err(|_| StoreError::Closed)?;
        Ok(self
            .config
            .pools
            .iter()
            .map(|(name, config)| {
                let mut by_state = BTreeMap::new();
                for m in machines.iter().filter(|m| &m.pool == name) {
                    *by_state.entry(m.state.as_str().to_string()).or_insert(0) += 1;
                }
                let state = pools.get(name);
                let backoff_until = state
                    .and_then(|s| s.backoff_until)
                    .filter(|at| *at > Instant::now())
                    .map(|at| Timestamp::now().plus(at.saturating_duration_since(Instant::now())));
                PoolStatus {
                    name: name.clone(),
                    config: config.clone(),
                    machines: by_state,
                    failing: state.is_some_and(|s| s.failures >= FAILING_AFTER),
                    failures: state.map_or(0, |s| s.failures),
                    last_error: state.and_then(|s| s.last_error.clone()),
                    backoff_until,
                }
            })
            .collect())
    }
}

/// A machine of the pool as the empty node it will be.
fn template(pool_name: &str, pool: &PoolConfig, id: &str) -> NodeSnapshot {
    let mut node = NodeSnapshot::new(id, pool.shape().capacity());
    node.max_tasks = pool.max_tasks;
    node.pool = Some(pool_name.to_string());
    node.labels = pool.labels.clone();
    node.labels.insert("pool".into(), pool_name.to_string());
    node.labels.insert("machine".into(), id.to_string());
    node
}

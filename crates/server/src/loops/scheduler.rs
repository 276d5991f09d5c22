//! The scheduler loop: takes queued tasks (a share per project), orders and
//! places them with `shepherd-sched` against the nodes and their current
//! allocations, persists each placement (queued → scheduled) and only then
//! tells the node's agent.
//!
//! Nodes and allocations come from the in-memory [`ClusterView`], not from
//! the store: a pass reads only the queue, so its cost follows the work in
//! hand rather than the number of nodes or running tasks. The view is
//! rebuilt from the store when this server starts to lead (a new epoch) and
//! checked against it now and then.
//!
//! A pass reads the queue a page at a time. Tasks that do not fit leave
//! their placement shape behind, and the next page skips every task of a
//! shape known not to fit (allocations only grow within a pass), so no
//! number of waiting tasks can hide a placeable one behind them. Shapes that
//! no node could take even idle are remembered across passes until the set
//! of nodes or the projects' settings change, and for 10 s at most; a pass that runs out of pages leaves a cursor where the
//! next one goes on.

use crate::nodes::links::NodeLinks;
use crate::nodes::view::{label_pairs, ClusterView, Holding};
use crate::placement_notes::PlacementNotes;
use shepherd_core::{Constraint, Event, LaunchSpec, ProjectLimits, Resources, TaskId, Timestamp};
use shepherd_sched::{AntiAffinity, Engine, NodeSnapshot, NodeVolume, PendingTask, QuotaLedger, SharedEngine, Wait};
use shepherd_store::{NodeRecord, QueueCursor, QueueQuery, QueuedTask, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// Queued tasks read per page (shared among the projects with work).
const PAGE: usize = 1000;
/// Pages one pass reads at most; the next pass goes on where it stopped.
const MAX_PAGES: usize = 10;
/// Longest sleep between passes: retry backoffs expire without a wakeup.
const IDLE_PASS: Duration = Duration::from_millis(250);

/// A follower wakes the leader at most this often.
const WAKE_EVERY: Duration = Duration::from_millis(5);

/// The idle pass: [`IDLE_PASS`], or `SHEPHERD_IDLE_PASS_MS` (tests that
/// show a wake does not wait for it).
fn idle_pass() -> Duration {
    std::env::var("SHEPHERD_IDLE_PASS_MS").ok().and_then(|v| v.parse().ok()).map_or(IDLE_PASS, Duration::from_millis)
}

/// The loop's inputs.
pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub links: Arc<dyn NodeLinks>,
    pub wakeup: Arc<Notify>,
    pub notes: Arc<PlacementNotes>,
    /// The engine of the moment: each pass takes it once (reloads swap it).
    pub engine: SharedEngine,
    /// Seeds each pass differently, reproducibly.
    pub passes: AtomicU64,
    /// What one pass leaves to the next.
    pub memory: Mutex<PassMemory>,
    /// Only the leader places; its lease fences every placement.
    pub leadership: crate::loops::leader::Leadership,
    /// Nodes and what active attempts hold, in memory.
    pub view: Arc<ClusterView>,
    /// The epoch the view was built under.
    epoch: Mutex<Option<i64>>,
    /// How often the view is compared with the store (`None`: never).
    pub check_every: Option<Duration>,
    /// Pass durations and placements.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// [`settings_key`] of the projects the latest pass read.
    settings_key: AtomicU64,
}

/// How long a "no node can ever run this" verdict is trusted before the
/// shape is tried again, whatever else changed: a safety net under the
/// node set and project settings, which end verdicts at once.
const NEVER_FITS_FOR: Duration = Duration::from_secs(10);

/// What a pass leaves to the next.
#[derive(Default)]
pub struct PassMemory {
    /// The node set and project settings these shapes were found against.
    nodes: u64,
    /// When the verdicts were first made (they all end together).
    since: Option<Instant>,
    /// Shapes no node could take even idle (by the reason shown). Shapes
    /// are keyed by the cluster's secret and include the project, so a
    /// verdict never reaches another project's tasks.
    never_fits: HashMap<i64, String>,
    /// Where each project's read stopped when a pass ran out of pages.
    resume: BTreeMap<String, QueueCursor>,
}

impl PassMemory {
    /// Forgets the "never fits" verdicts made against another node set or
    /// other project settings (`key`), or longer than [`NEVER_FITS_FOR`]
    /// ago; keeps where each project's read stopped.
    fn refresh(&mut self, key: u64, now: Instant) {
        let expired = self.since.is_some_and(|since| now.saturating_duration_since(since) >= NEVER_FITS_FOR);
        if self.nodes != key || expired {
            self.nodes = key;
            self.since = None;
            self.never_fits.clear();
        }
    }
}

/// How often the view is checked against the store: `SHEPHERD_VIEW_CHECK`
/// seconds (0: never), else every minute.
fn check_interval() -> Option<Duration> {
    match std::env::var("SHEPHERD_VIEW_CHECK").ok().and_then(|v| v.parse::<f64>().ok()) {
        Some(secs) if secs <= 0.0 => None,
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => Some(Duration::from_secs(60)),
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassOutcome {
    pub placed: usize,
    /// It stopped at its page budget with more tasks to look at.
    pub more: bool,
}

/// Identifies the node set as far as where a task could ever fit goes
/// (not how full the nodes are).
fn node_set_key(nodes: &[NodeRecord]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for node in nodes {
        (&node.id, node.capacity.cpu_millicores, node.capacity.memory_mib, node.max_tasks, &node.labels).hash(&mut hasher);
    }
    hasher.finish()
}

/// Identifies the projects' settings (limits and policies): a verdict
/// made under one set is not trusted under another.
fn settings_key(projects: &[shepherd_store::Project]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for project in projects {
        project.name.hash(&mut hasher);
        format!("{:?}{:?}", project.limits, project.policy).hash(&mut hasher);
    }
    hasher.finish()
}

/// True if `a` comes later in queue order (priority descending, then id).
fn is_after(a: &QueueCursor, b: &QueueCursor) -> bool {
    (std::cmp::Reverse(a.priority), a.id) > (std::cmp::Reverse(b.priority), b.id)
}

/// Where each node-scoped volume lives, by (project, name): `None` until
/// a task used it. Cluster-scoped volumes are not in it (they pin nothing).
pub type VolumeHomes = HashMap<(String, String), Option<String>>;

/// The task as placement sees it.
pub fn pending(task: &QueuedTask, homes: &VolumeHomes) -> PendingTask {
    let spec = &task.spec;
    PendingTask {
        id: task.id,
        project: spec.project.clone(),
        priority: spec.priority,
        resources: spec.resources,
        image: spec.image.clone(),
        // Validated at submission; one that no longer parses is dropped rather than matching nothing silently.
        constraints: spec.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect(),
        pool: spec.pool.clone(),
        anti_affinity: spec.anti_affinity.as_ref().and_then(|rule| {
            spec.labels
                .get(&rule.label)
                .map(|value| AntiAffinity { label: format!("{}={value}", rule.label), max_per_node: rule.max_per_node })
        }),
        profile: spec.profile.clone(),
        warm_key: shepherd_core::shape::warm_key(spec),
        code: spec.code.clone(),
        volumes: spec
            .volumes
            .iter()
            .filter_map(|m| {
                homes.get(&(spec.project.clone(), m.name.clone())).map(|node| NodeVolume { name: m.name.clone(), node: node.clone() })
            })
            .collect(),
        gpus: spec.gpus,
        devices: spec.devices.clone(),
    }
}

/// The node-scoped volumes and where they live.
async fn volume_homes(store: &dyn Store) -> Result<VolumeHomes, StoreError> {
    Ok(store
        .volumes(None)
        .await?
        .into_iter()
        .filter(|v| v.scope == shepherd_core::VolumeScope::Node)
        .map(|v| ((v.project, v.name), v.node_id))
        .collect())
}

impl Scheduler {
    /// A scheduler over these parts.
    pub fn new(
        store: Arc<dyn Store>,
        links: Arc<dyn NodeLinks>,
        wakeup: Arc<Notify>,
        notes: Arc<PlacementNotes>,
        engine: SharedEngine,
        leadership: crate::loops::leader::Leadership,
        view: Arc<ClusterView>,
    ) -> Scheduler {
        Scheduler {
            store,
            links,
            wakeup,
            notes,
            engine,
            passes: AtomicU64::new(0),
            memory: Mutex::new(PassMemory::default()),
            leadership,
            view,
            epoch: Mutex::new(None),
            check_every: check_interval(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            settings_key: AtomicU64::new(0),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_check = Instant::now();
        // Woken here (a task stored, a report) while another server leads:
        // that server is told, so that it places now (`Dispatch::Wake`
        // over the store's messages), not at its next idle pass.
        let mut woken = false;
        let idle = idle_pass();
        loop {
            if woken && !self.leadership.is_leader() {
                let text = serde_json::to_string(&crate::nodes::dispatch::Dispatch::Wake).unwrap_or_default();
                if let Err(e) = self.store.publish(text).await {
                    tracing::debug!(error = %e, "could not wake the leader");
                }
                // At most one wake per WAKE_EVERY: a burst of creates costs one message.
                tokio::time::sleep(WAKE_EVERY).await;
            }
            woken = false;
            if self.check_every.is_some_and(|every| last_check.elapsed() >= every) {
                last_check = Instant::now();
                self.check_view().await;
            }
            let again = match self.pass().await {
                Ok(outcome) => outcome.more && outcome.placed > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduling pass failed");
                    false
                }
            };
            if *shutdown.borrow() {
                break;
            }
            if again {
                continue;
            }
            tokio::select! {
                _ = self.wakeup.notified() => woken = true,
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!("scheduler stopped");
    }

    /// Compares the view with the store's active tasks. A difference seen
    /// twice, a moment apart, is real: it is logged and the view rebuilt.
    pub async fn check_view(&self) {
        if !self.leadership.is_leader() || !self.view.is_built() {
            return;
        }
        let first = match self.store.active_tasks().await {
            Ok(active) => self.view.differences(&active),
            Err(_) => return,
        };
        if first.is_empty() {
            tracing::info!(active = self.view.len(), "scheduler view matches the store");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = match self.store.active_tasks().await {
            Ok(active) => self.view.differences(&active),
            Err(_) => return,
        };
        let lasting: Vec<&String> = second.iter().filter(|d| first.contains(d)).collect();
        if lasting.is_empty() {
            tracing::info!(active = self.view.len(), "scheduler view matches the store");
            return;
        }
        // Holding too much only holds capacity back; too little could overcommit a node.
        let too_little = lasting.iter().any(|d| !d.contains("not active in the store"));
        let kind = if too_little { "held too little" } else { "held too much" };
        tracing::error!(count = lasting.len(), kind, first = ?lasting.iter().take(5).collect::<Vec<_>>(), "scheduler view differs from the store; rebuilding it");
        self.view.invalidate();
    }

    fn restore(&self, memory: PassMemory) {
        if let Ok(mut slot) = self.memory.lock() {
            *slot = memory;
        }
    }

    /// One pass: places what fits, explains what does not. Only while
    /// this server leads; a pass whose placements are fenced steps down.
    pub async fn pass(&self) -> Result<PassOutcome, StoreError> {
        let Some(lease) = self.leadership.lease() else {
            self.view.invalidate();
            return Ok(PassOutcome::default());
        };
        if let Ok(mut epoch) = self.epoch.lock() {
            if *epoch != Some(lease.epoch) {
                // Leading anew: what another leader placed meanwhile is only in the store.
                self.view.invalidate();
                *epoch = Some(lease.epoch);
            }
        }
        if self.view.take_stale() {
            self.view.invalidate();
        }
        self.view.next_pass();
        let began = Instant::now();
        let now = Timestamp::now();
        let (records, key) = match self.view.records() {
            Some(cached) => cached,
            None => {
                let records = Arc::new(self.store.list_nodes().await?);
                let key = node_set_key(&records);
                self.view.set_records(records.clone(), key);
                (records, key)
            }
        };
        if records.is_empty() {
            // Nothing can be placed, and every task waits for the same reason.
            self.notes.set_cluster_reason(Some("no nodes in the cluster".into()));
            return Ok(PassOutcome::default());
        }
        self.notes.set_cluster_reason(None);
        let mut memory = self.memory.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default();
        memory.refresh(key ^ self.settings_key.load(Ordering::Relaxed), Instant::now());
        // The first page, before anything else is read: an idle pass ends here.
        let query = QueueQuery { limit: PAGE, projects: None, skip_shapes: memory.never_fits.keys().copied().collect() };
        let first = match self.store.queued_tasks(now, query).await {
            Ok(first) => first,
            Err(e) => {
                self.restore(memory);
                return Err(e);
            }
        };
        if first.tasks.is_empty() {
            memory.resume.clear();
            let shapes = memory.never_fits.clone();
            self.restore(memory);
            self.metrics.stage("sched_read", began.elapsed());
            // What no node could ever take is still explained.
            self.notes.record(Vec::new(), Vec::new(), shapes);
            return Ok(PassOutcome::default());
        }
        if !self.view.is_built() {
            match self.store.active_tasks().await {
                Ok(active) => {
                    self.view.rebuild(&active);
                    tracing::info!(active = active.len(), nodes = records.len(), "scheduler view built from the store");
                }
                Err(e) => {
                    self.restore(memory);
                    return Err(e);
                }
            }
        }
        let (nodes, usage, held) = self.view.snapshot(&records);
        let projects = match self.store.list_projects().await {
            Ok(projects) => projects,
            Err(e) => {
                self.restore(memory);
                return Err(e);
            }
        };
        // Verdicts made under other project settings end with them (next pass).
        self.settings_key.store(settings_key(&projects), Ordering::Relaxed);
        let limits: HashMap<String, ProjectLimits> =
            projects.into_iter().filter(|p| p.limits != ProjectLimits::default()).map(|p| (p.name, p.limits)).collect();
        let code_limits: HashMap<(String, String), u32> = match self.store.code_limits().await {
            Ok(limits) => limits.into_iter().map(|l| ((l.project, l.name), l.max)).collect(),
            Err(e) => {
                self.restore(memory);
                return Err(e);
            }
        };
        let quota = QuotaLedger::new(held, limits).with_codes(self.view.code_usage(), code_limits);
        let first_read = began.elapsed();
        let seed = self.passes.fetch_add(1, Ordering::Relaxed);
        let (engine, store, runtime) = (self.engine.get(), self.store.clone(), tokio::runtime::Handle::current());
        // Placement is CPU work: the whole pass runs on a blocking thread,
        // reading further pages of the queue from there.
        let work = tokio::task::spawn_blocking(move || {
            let result = place_pages(&engine, &store, &runtime, now, first, nodes, usage, quota, seed, &mut memory);
            (result, memory)
        });
        let (result, memory) = work.await.map_err(|_| StoreError::Closed)?;
        let placed_at = began.elapsed();
        let shape_reasons = memory.never_fits.clone();
        self.restore(memory);
        let mut pages = result?;
        let read = first_read + pages.read;
        self.metrics.stage("sched_read", read);
        self.metrics.stage("sched_place", placed_at.saturating_sub(read));
        // Bind the volumes first placements chose; a placement whose volume
        // turns out to live elsewhere (bound meanwhile) stays queued.
        let mut unbound: std::collections::HashSet<TaskId> = std::collections::HashSet::new();
        for (task, project, volume, node) in std::mem::take(&mut pages.binds) {
            match self.store.bind_volume(&project, &volume, &node).await? {
                Some(at) if at == node => {}
                other => {
                    tracing::info!(%task, volume, ?other, node, "volume bound elsewhere; the task waits");
                    unbound.insert(task);
                }
            }
        }
        // (The view holds only what is committed: nothing to undo there.)
        pages.placements.retain(|p| !unbound.contains(&p.task_id));
        let events = pages.placements.iter().map(|p| (p.task_id, Event::Schedule { node_id: p.node_id.clone() })).collect();
        let results = match self.store.apply_as_leader(events, now, &lease).await {
            Ok(results) => results,
            Err(e) if crate::loops::leader::fenced(&e) => {
                self.leadership.step_down();
                return Ok(PassOutcome::default());
            }
            Err(e) => {
                // The placements may have been committed all the same (a
                // connection lost after COMMIT): read them back next pass.
                self.view.invalidate();
                return Err(e);
            }
        };
        let committed_at = began.elapsed();
        self.metrics.stage("sched_commit", committed_at.saturating_sub(placed_at));
        let mut applied = Vec::new();
        for result in results {
            match result {
                Ok(a) => applied.push(a),
                // Cancelled between the read and the write: nothing to do.
                Err(e) => tracing::debug!(error = %e, "placement not applied"),
            }
        }
        for a in &applied {
            if let (Some(node), Some(holding)) = (&a.node_id, pages.holdings.get(&a.task_id)) {
                let holding = Holding { node: node.clone(), attempt: a.attempt, ..holding.clone() };
                self.view.placed(a.task_id, holding);
            }
        }
        // The agents get what they need to start with the assignment. A
        // task with neither payload nor secrets needs nothing more than the
        // spec the pass read; the others are read in one go.
        let mut plain = pages.plain;
        let to_read: Vec<TaskId> = applied.iter().filter(|a| !plain.contains_key(&a.task_id)).map(|a| a.task_id).collect();
        let mut read: HashMap<TaskId, LaunchSpec> =
            self.store.launch_specs(to_read).await?.into_iter().flatten().map(|l| (l.id, l)).collect();
        let mut placed = Vec::new();
        for applied in applied {
            let node = applied.node_id.clone().unwrap_or_default();
            let launch = match plain.remove(&applied.task_id) {
                Some(spec) => Some(LaunchSpec {
                    id: applied.task_id,
                    state: applied.decision.to,
                    attempt: applied.attempt,
                    node_id: applied.node_id.clone(),
                    cancel_requested: false,
                    spec,
                    payload: None,
                    attempt_started_at: None,
                    secrets: Default::default(),
                    volumes: Vec::new(),
                    networks: Vec::new(),
                    registry_auth: None,
                    inputs: Default::default(),
                }),
                None => read.remove(&applied.task_id),
            };
            match launch {
                Some(launch) if launch.attempt == applied.attempt => {
                    tracing::debug!(?launch, node, "assigning");
                    if !self.links.assign(&node, launch) {
                        tracing::warn!(task = %applied.task_id, node, "node unreachable after placement");
                    }
                }
                // Changed meanwhile (cancelled): whoever changed it tells the agent.
                _ => tracing::debug!(task = %applied.task_id, "task changed after placement"),
            }
            placed.push(applied.task_id);
        }
        let count = placed.len();
        self.metrics.stage("sched_assign", began.elapsed().saturating_sub(committed_at));
        self.metrics.pass(began.elapsed(), count);
        tracing::debug!(
            placed = count,
            read_and_placed_ms = placed_at.as_secs_f64() * 1000.0,
            committed_ms = (committed_at - placed_at).as_secs_f64() * 1000.0,
            assigned_ms = (began.elapsed() - committed_at).as_secs_f64() * 1000.0,
            "pass"
        );
        let mut shapes = pages.shape_reasons;
        shapes.extend(shape_reasons);
        self.notes.record(placed, pages.unplaced, shapes);
        self.notes.record_scores(pages.scores);
        Ok(PassOutcome { placed: count, more: pages.more })
    }
}

/// What the pages of one pass came to.
#[derive(Default)]
struct Pages {
    placements: Vec<shepherd_sched::Placement>,
    unplaced: Vec<(TaskId, String)>,
    /// Shapes that did not fit in this pass, by reason.
    shape_reasons: HashMap<i64, String>,
    /// How the best candidates of each placed task scored.
    scores: Vec<(TaskId, Vec<shepherd_sched::NodeScore>)>,
    /// What each placed task will hold (project, resources, labels).
    /// (Its node and attempt are set once the placement is committed.)
    holdings: HashMap<TaskId, Holding>,
    /// Placed tasks with neither payload nor secrets: their launch spec is
    /// their spec, with nothing more to read.
    plain: HashMap<TaskId, shepherd_core::TaskSpec>,
    /// Node-scoped volumes this pass's placements bind: (task, project,
    /// volume, node).
    binds: Vec<(TaskId, String, String, String)>,
    more: bool,
    /// Time spent reading the store (queue pages, volumes, logins).
    read: Duration,
}

/// Reads the queue page by page and places each page, skipping shapes
/// already found not to fit.
#[allow(clippy::too_many_arguments)]
fn place_pages(
    engine: &Engine,
    store: &Arc<dyn Store>,
    runtime: &tokio::runtime::Handle,
    now: Timestamp,
    first: shepherd_store::QueuePage,
    nodes: Vec<NodeSnapshot>,
    usage: HashMap<String, Resources>,
    quota: QuotaLedger,
    seed: u64,
    memory: &mut PassMemory,
) -> Result<Pages, StoreError> {
    let mut pass = engine.pass(nodes, usage, quota, seed);
    // Kept for `inspect --explain`: a few candidates per placement, cheap.
    pass.record_scores();
    let mut pages = Pages::default();
    // Shapes known not to fit: from earlier passes (never fits), then this pass's.
    let mut skip: HashMap<i64, String> = memory.never_fits.clone();
    let mut projects: Option<BTreeMap<String, Option<QueueCursor>>> = None;
    let mut first = Some(first);
    // Read once, when a task of the pass mounts a volume.
    let mut homes: Option<VolumeHomes> = None;
    // The projects with registry logins, read once when a task is placed.
    let mut logins: Option<std::collections::HashSet<String>> = None;
    for page_number in 0..MAX_PAGES {
        let page = match first.take() {
            Some(first) => first,
            None => {
                let query = QueueQuery { limit: PAGE, projects: projects.clone(), skip_shapes: skip.keys().copied().collect() };
                let reading = Instant::now();
                let page = runtime.block_on(store.queued_tasks(now, query))?;
                pages.read += reading.elapsed();
                page
            }
        };
        if page.tasks.is_empty() {
            memory.resume.clear();
            break;
        }
        let shapes: HashMap<TaskId, i64> = page.tasks.iter().map(|t| (t.id, t.shape)).collect();
        if homes.is_none() && page.tasks.iter().any(|t| !t.spec.volumes.is_empty()) {
            let reading = Instant::now();
            homes = Some(runtime.block_on(volume_homes(store.as_ref()))?);
            pages.read += reading.elapsed();
        }
        let empty = VolumeHomes::new();
        let known = homes.as_ref().unwrap_or(&empty);
        let plan = pass.place(page.tasks.iter().map(|t| pending(t, known)).collect());
        if !plan.placements.is_empty() {
            let by_id: HashMap<TaskId, &QueuedTask> = page.tasks.iter().map(|t| (t.id, t)).collect();
            for placement in &plan.placements {
                if let Some(task) = by_id.get(&placement.task_id) {
                    let holding = Holding {
                        node: String::new(),
                        project: task.spec.project.clone(),
                        attempt: 0,
                        resources: task.spec.resources,
                        labels: label_pairs(&task.spec.labels),
                        code: task.spec.code.clone(),
                        gpus: task.spec.gpus,
                    };
                    pages.holdings.insert(placement.task_id, holding);
                    // Its node-scoped volumes not bound yet are bound to its node before the commit.
                    for mount in &task.spec.volumes {
                        let key = (task.spec.project.clone(), mount.name.clone());
                        if matches!(homes.as_ref().and_then(|h| h.get(&key)), Some(None)) {
                            pages.binds.push((placement.task_id, key.0, key.1, placement.node_id.clone()));
                        }
                    }
                    let spec = &task.spec;
                    // Volumes, networks and registry logins are resolved by the store's read.
                    let resolved = spec.volumes.is_empty() && spec.networks.is_empty() && spec.network != "bridge";
                    if logins.is_none() {
                        let reading = Instant::now();
                        logins = Some(runtime.block_on(store.registry_login_projects())?.into_iter().collect());
                        pages.read += reading.elapsed();
                    }
                    let login = logins.as_ref().is_some_and(|l| l.contains(&spec.project));
                    // (A task with dependencies reads their results: the store's read too.)
                    if !task.has_payload && spec.secrets.is_empty() && spec.depends_on.is_empty() && resolved && !login {
                        pages.plain.insert(placement.task_id, task.spec.clone());
                    }
                }
            }
        }
        pages.placements.extend(plan.placements);
        pages.scores.extend(plan.scores);
        for unplaced in plan.unplaced {
            // Rendered here, at the edge: the notes keep what the API shows.
            let reason = unplaced.hold.to_string();
            if let Some(&shape) = shapes.get(&unplaced.task_id) {
                if unplaced.wait() == Wait::NeverFits {
                    memory.never_fits.insert(shape, reason.clone());
                    memory.since.get_or_insert_with(Instant::now);
                }
                skip.entry(shape).or_insert_with(|| reason.clone());
                pages.shape_reasons.entry(shape).or_insert_with(|| reason.clone());
            }
            pages.unplaced.push((unplaced.task_id, reason));
        }
        if page.more.is_empty() {
            memory.resume.clear();
            break;
        }
        let mut next: BTreeMap<String, Option<QueueCursor>> = BTreeMap::new();
        for (project, cursor) in page.more {
            // After the head, jump to where the last pass stopped, if that is further on.
            let cursor = match memory.resume.remove(&project) {
                Some(resume) if page_number == 0 && is_after(&resume, &cursor) => resume,
                _ => cursor,
            };
            next.insert(project, Some(cursor));
        }
        if page_number + 1 == MAX_PAGES {
            pages.more = true;
            memory.resume = next.into_iter().filter_map(|(p, c)| c.map(|c| (p, c))).collect();
            break;
        }
        projects = Some(next);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_fits_verdicts_end_with_their_nodes_settings_or_time() {
        let start = Instant::now();
        let mut memory = PassMemory { nodes: 1, ..Default::default() };
        let verdict = |memory: &mut PassMemory| {
            memory.never_fits.insert(42, "no node can ever run this task".into());
            memory.since = Some(start);
        };
        verdict(&mut memory);
        memory.refresh(1, start + Duration::from_secs(1));
        assert!(memory.never_fits.contains_key(&42), "kept within its time on the same nodes");
        memory.refresh(1, start + NEVER_FITS_FOR);
        assert!(memory.never_fits.is_empty(), "tried again after its time, whatever else changed");
        verdict(&mut memory);
        memory.refresh(2, start);
        assert!(memory.never_fits.is_empty(), "other nodes or project settings end it at once");
        memory.resume.insert("p".into(), QueueCursor { priority: 0, id: TaskId(ulid::Ulid::nil()) });
        verdict(&mut memory);
        memory.refresh(3, start);
        assert_eq!(memory.resume.len(), 1, "where reads stopped is kept");
    }
}

//! The scheduler's view of the cluster, kept in memory so that a pass costs
//! what the work in hand costs, not what the cluster's size does: what
//! every active attempt holds (node, project, resources, labels), summed
//! per node and per project, and the node records.
//!
//! It changes with the same events that change the store: the scheduler
//! adds what it placed once the placement is committed; every applied event
//! that takes a task off its node (exit, failure, loss, cancel, retry)
//! releases it ([`ClusterView::observe`], called wherever events are
//! applied; on a follower, the release travels to the leader through the
//! store's messages). It is rebuilt from the store when this server starts
//! to lead, and [`ClusterView::differences`] compares it with the store.
//!
//! Releases and placements may cross (an exit applied before the scheduler
//! recorded the placement it ends): both carry the attempt, a release
//! leaves a tombstone, and a placement older than its task's tombstone is
//! not recorded. A view that is behind only ever holds too much (it waits
//! for a release), never too little.

use shepherd_core::{Resources, TaskId, TaskState};
use shepherd_sched::{NodeSnapshot, ProjectUsage};
use shepherd_store::{ActiveTask, ApplyResult, NodeRecord, NodeState};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// What one attempt holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub node: String,
    pub project: String,
    pub attempt: u32,
    pub resources: Resources,
    /// Its labels as `key=value`, for anti-affinity counts.
    pub labels: Vec<String>,
    /// The code it was made from, for codes' concurrency limits.
    pub code: Option<String>,
    /// GPUs it holds.
    pub gpus: u32,
}

impl Holding {
    /// What an active task from the store holds.
    pub fn of(task: &ActiveTask) -> Holding {
        Holding {
            node: task.node_id.clone(),
            project: task.project.clone(),
            attempt: task.attempt,
            resources: task.resources,
            labels: label_pairs(&task.labels),
            code: task.code.clone(),
            gpus: task.gpus,
        }
    }
}

pub use shepherd_sched::{DEVICES_LABEL, GPUS_LABEL};

/// The devices a node's labels offer, sorted.
pub fn devices_of(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut devices: Vec<String> = labels
        .get(DEVICES_LABEL)
        .map(|list| list.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    devices.sort();
    devices.dedup();
    devices
}

/// `key=value` for each label.
pub fn label_pairs(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[derive(Debug, Clone, PartialEq)]
struct NodeUse {
    allocated: Resources,
    tasks: u32,
    label_counts: HashMap<String, u32>,
    gpus: u32,
}

impl Default for NodeUse {
    /// Nothing held. (`Resources::default()` is a task's default request, not zero.)
    fn default() -> NodeUse {
        NodeUse { allocated: Resources { cpu_millicores: 0, memory_mib: 0 }, tasks: 0, label_counts: HashMap::new(), gpus: 0 }
    }
}

/// See the module.
#[derive(Default)]
pub struct ClusterView {
    inner: Mutex<Inner>,
    /// Set from outside the scheduler (releases may have been missed): the
    /// scheduler rebuilds at the start of its next pass, never mid-pass.
    stale: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Built from the store since this server began to lead.
    built: bool,
    active: HashMap<TaskId, Holding>,
    nodes: HashMap<String, NodeUse>,
    projects: HashMap<String, ProjectUsage>,
    /// Tasks holding a node per (project, code).
    codes: HashMap<(String, String), u32>,
    /// The latest attempt released per task: this pass's and the last one's.
    released: HashMap<TaskId, u32>,
    released_before: HashMap<TaskId, u32>,
    /// Node records, and whether they must be read again.
    records: Option<(Arc<Vec<NodeRecord>>, u64)>,
    records_read_at: Option<std::time::Instant>,
}

fn add(a: Resources, b: Resources) -> Resources {
    Resources { cpu_millicores: a.cpu_millicores.saturating_add(b.cpu_millicores), memory_mib: a.memory_mib.saturating_add(b.memory_mib) }
}

fn sub(a: Resources, b: Resources) -> Resources {
    Resources { cpu_millicores: a.cpu_millicores.saturating_sub(b.cpu_millicores), memory_mib: a.memory_mib.saturating_sub(b.memory_mib) }
}

/// How long node records are trusted without a change seen here (changes
/// made through other servers show up within this).
const RECORDS_FOR: std::time::Duration = std::time::Duration::from_secs(5);

impl Inner {
    fn hold(&mut self, task: TaskId, holding: Holding) {
        if let Some(old) = self.active.remove(&task) {
            self.drop_holding(&old);
        }
        let node = self.nodes.entry(holding.node.clone()).or_default();
        node.allocated = add(node.allocated, holding.resources);
        node.tasks += 1;
        node.gpus += holding.gpus;
        for label in &holding.labels {
            *node.label_counts.entry(label.clone()).or_default() += 1;
        }
        let project = self.projects.entry(holding.project.clone()).or_insert(ProjectUsage::NONE);
        project.tasks += 1;
        project.resources = add(project.resources, holding.resources);
        project.gpus += holding.gpus;
        if let Some(code) = &holding.code {
            *self.codes.entry((holding.project.clone(), code.clone())).or_default() += 1;
        }
        self.active.insert(task, holding);
    }

    fn drop_holding(&mut self, holding: &Holding) {
        if let Some(node) = self.nodes.get_mut(&holding.node) {
            node.allocated = sub(node.allocated, holding.resources);
            node.tasks = node.tasks.saturating_sub(1);
            node.gpus = node.gpus.saturating_sub(holding.gpus);
            for label in &holding.labels {
                if let Some(count) = node.label_counts.get_mut(label) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        node.label_counts.remove(label);
                    }
                }
            }
            if node.tasks == 0 {
                self.nodes.remove(&holding.node);
            }
        }
        if let Some(project) = self.projects.get_mut(&holding.project) {
            project.tasks = project.tasks.saturating_sub(1);
            project.resources = sub(project.resources, holding.resources);
            project.gpus = project.gpus.saturating_sub(holding.gpus);
            if project.tasks == 0 {
                self.projects.remove(&holding.project);
            }
        }
        if let Some(code) = &holding.code {
            let key = (holding.project.clone(), code.clone());
            if let Some(count) = self.codes.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.codes.remove(&key);
                }
            }
        }
    }

    fn released_attempt(&self, task: &TaskId) -> Option<u32> {
        match (self.released.get(task), self.released_before.get(task)) {
            (Some(a), Some(b)) => Some(*a.max(b)),
            (a, b) => a.or(b).copied(),
        }
    }
}

impl ClusterView {
    /// Whether the view was built from the store (since this server leads).
    pub fn is_built(&self) -> bool {
        self.inner.lock().map(|i| i.built).unwrap_or(false)
    }

    /// Asks the scheduler to rebuild the view before its next pass (safe
    /// from any task: a pass in flight keeps the view it started with).
    pub fn mark_stale(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a rebuild was asked for since the last call.
    pub fn take_stale(&self) -> bool {
        self.stale.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets everything: the next pass rebuilds it (leadership changed).
    /// Only the scheduler calls it, between its own reads of the view.
    pub fn invalidate(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner = Inner::default();
        }
    }

    /// Replaces the view with the store's active tasks, read after the
    /// tombstones were reset: releases seen since still apply.
    pub fn rebuild(&self, active: &[ActiveTask]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.active.clear();
            inner.nodes.clear();
            inner.projects.clear();
            inner.codes.clear();
            for task in active {
                if inner.released_attempt(&task.id).is_some_and(|released| released >= task.attempt) {
                    continue;
                }
                inner.hold(task.id, Holding::of(task));
            }
            inner.built = true;
        }
    }

    /// Ages the tombstones: called at the start of each pass, so a release
    /// is remembered for at least one whole pass.
    pub fn next_pass(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.released_before = std::mem::take(&mut inner.released);
        }
    }

    /// Records a committed placement (unless its attempt was already released).
    pub fn placed(&self, task: TaskId, holding: Holding) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.released_attempt(&task).is_some_and(|released| released >= holding.attempt) {
                return;
            }
            inner.hold(task, holding);
        }
    }

    /// Releases what a task's attempt held (its attempt `attempt` or older).
    pub fn released(&self, task: TaskId, attempt: u32) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.active.get(&task).is_some_and(|h| h.attempt <= attempt) {
                if let Some(old) = inner.active.remove(&task) {
                    inner.drop_holding(&old);
                }
            }
            let entry = inner.released.entry(task).or_insert(attempt);
            *entry = (*entry).max(attempt);
        }
    }

    /// Releases every task that applied events took off its node; returns
    /// them (task, attempt), for a follower to pass on to the leader.
    pub fn observe(&self, results: &[ApplyResult]) -> Vec<(TaskId, u32)> {
        let mut released = Vec::new();
        for applied in results.iter().flatten() {
            if !matches!(applied.decision.to, TaskState::Scheduled | TaskState::Running)
                && matches!(applied.from, TaskState::Scheduled | TaskState::Running)
            {
                self.released(applied.task_id, applied.attempt);
                released.push((applied.task_id, applied.attempt));
            }
        }
        released
    }

    /// The node records and the key of their node set if they are fresh,
    /// else `None` (read them again). Shared, not copied: an idle pass at
    /// 10,000 nodes copied every record four times a second.
    pub fn records(&self) -> Option<(Arc<Vec<NodeRecord>>, u64)> {
        let inner = self.inner.lock().ok()?;
        let fresh = inner.records_read_at.is_some_and(|at| at.elapsed() < RECORDS_FOR);
        if fresh {
            inner.records.clone()
        } else {
            None
        }
    }

    /// Keeps node records just read from the store, with their set's key.
    pub fn set_records(&self, records: Arc<Vec<NodeRecord>>, key: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.records = Some((records, key));
            inner.records_read_at = Some(std::time::Instant::now());
        }
    }

    /// A node was registered, drained, found down or changed its images:
    /// the next pass reads the records again.
    pub fn nodes_changed(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.records_read_at = None;
        }
    }

    /// Tasks holding a node per (project, code).
    pub fn code_usage(&self) -> HashMap<(String, String), u32> {
        self.inner.lock().map(|inner| inner.codes.clone()).unwrap_or_default()
    }

    /// Nodes as placement sees them, with what the view holds on each, and
    /// the usage per project (resources, and tasks plus resources for quotas).
    pub fn snapshot(&self, records: &[NodeRecord]) -> (Vec<NodeSnapshot>, HashMap<String, Resources>, HashMap<String, ProjectUsage>) {
        let Ok(inner) = self.inner.lock() else { return (Vec::new(), HashMap::new(), HashMap::new()) };
        let nodes = records
            .iter()
            .map(|node| {
                let used = inner.nodes.get(&node.id).cloned().unwrap_or_default();
                let mut images = node.images.clone();
                images.sort();
                NodeSnapshot {
                    pool: node.labels.get("pool").cloned(),
                    dedicated_to: node
                        .labels
                        .get(shepherd_sched::DEDICATED_LABEL)
                        .map(|list| list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect())
                        .unwrap_or_default(),
                    hostname: node.hostname.clone(),
                    labels: node.labels.clone(),
                    ready: node.state == NodeState::Ready,
                    capacity: node.capacity,
                    allocated: used.allocated,
                    max_tasks: node.max_tasks,
                    task_count: used.tasks,
                    images,
                    label_counts: used.label_counts,
                    gpus: node.labels.get(GPUS_LABEL).and_then(|g| g.parse().ok()).unwrap_or(0),
                    gpus_allocated: used.gpus,
                    devices: devices_of(&node.labels),
                    id: node.id.clone(),
                }
            })
            .collect();
        let usage = inner.projects.iter().map(|(p, u)| (p.clone(), u.resources)).collect();
        let held = inner.projects.clone();
        (nodes, usage, held)
    }

    /// How many attempts the view holds.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.active.len()).unwrap_or(0)
    }

    /// Whether the view holds no attempt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the view and the store's active tasks differ (empty: they
    /// agree), for tests and the periodic check. Tasks released or placed
    /// while the store was read may differ for a moment: callers compare
    /// twice before they call a difference real.
    pub fn differences(&self, active: &[ActiveTask]) -> Vec<String> {
        let Ok(inner) = self.inner.lock() else { return vec!["view poisoned".into()] };
        let mut out = Vec::new();
        let store: HashMap<TaskId, Holding> = active.iter().map(|t| (t.id, Holding::of(t))).collect();
        for (id, holding) in &store {
            match inner.active.get(id) {
                None => out.push(format!("{id}: in the store ({} attempt {}), not in the view", holding.node, holding.attempt)),
                Some(mine) if mine != holding => out.push(format!("{id}: store {holding:?}, view {mine:?}")),
                Some(_) => {}
            }
        }
        for (id, mine) in &inner.active {
            if !store.contains_key(id) {
                out.push(format!("{id}: in the view ({} attempt {}), not active in the store", mine.node, mine.attempt));
            }
        }
        // The sums must match what they sum.
        let mut rebuilt = Inner::default();
        for (id, holding) in &inner.active {
            rebuilt.hold(*id, holding.clone());
        }
        if rebuilt.nodes != inner.nodes {
            out.push("per-node sums differ from the attempts held".into());
        }
        if rebuilt.projects != inner.projects {
            out.push("per-project sums differ from the attempts held".into());
        }
        out
    }
}

/// Where applied events reach the view, whichever part applied them. On a
/// follower (servers sharing a store) the releases are passed on to the
/// leader through the store's messages; one lost on the way is found by
/// the leader's periodic check.
#[derive(Clone)]
pub struct Observer {
    pub view: std::sync::Arc<ClusterView>,
    pub store: std::sync::Arc<dyn shepherd_store::Store>,
    pub leadership: crate::loops::leader::Leadership,
    /// The store is shared with other servers.
    pub shared: bool,
}

/// Releases per message (PostgreSQL's NOTIFY takes up to 8000 bytes).
const RELEASES_PER_MESSAGE: usize = 100;

impl Observer {
    /// Takes note of applied events.
    pub fn observe(&self, results: &[ApplyResult]) {
        let released = self.view.observe(results);
        if released.is_empty() || !self.shared || self.leadership.is_leader() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            for chunk in released.chunks(RELEASES_PER_MESSAGE) {
                let text = serde_json::to_string(&crate::nodes::dispatch::Dispatch::Released { tasks: chunk.to_vec() }).unwrap_or_default();
                if let Err(e) = store.publish(text).await {
                    tracing::debug!(error = %e, "could not tell the leader about released attempts");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(node: &str, attempt: u32) -> Holding {
        Holding {
            node: node.into(),
            project: "p".into(),
            attempt,
            resources: Resources { cpu_millicores: 500, memory_mib: 256 },
            labels: vec!["app=web".into()],
            code: None,
            gpus: 0,
        }
    }

    fn id(n: u8) -> TaskId {
        TaskId(ulid::Ulid::from_bytes([n; 16]))
    }

    #[test]
    fn placements_and_releases_keep_the_sums() {
        let view = ClusterView::default();
        view.rebuild(&[]);
        view.placed(id(1), holding("a", 1));
        view.placed(id(2), holding("a", 1));
        view.placed(id(3), holding("b", 1));
        let records = |ids: &[&str]| -> Vec<NodeRecord> {
            ids.iter()
                .map(|n| NodeRecord {
                    id: n.to_string(),
                    hostname: n.to_string(),
                    state: NodeState::Ready,
                    driver: "fake".into(),
                    capacity: Resources { cpu_millicores: 4000, memory_mib: 4096 },
                    max_tasks: 10,
                    labels: BTreeMap::new(),
                    images: Vec::new(),
                    registered_at: shepherd_core::Timestamp(0),
                    last_heartbeat_at: shepherd_core::Timestamp(0),
                })
                .collect()
        };
        let (nodes, usage, held) = view.snapshot(&records(&["a", "b"]));
        assert_eq!((nodes[0].allocated.cpu_millicores, nodes[0].task_count, nodes[0].label_counts["app=web"]), (1000, 2, 2));
        assert_eq!((usage["p"].cpu_millicores, held["p"].tasks), (1500, 3));
        view.released(id(1), 1);
        view.released(id(3), 1);
        let (nodes, _, held) = view.snapshot(&records(&["a", "b"]));
        assert_eq!((nodes[0].task_count, nodes[1].task_count, held["p"].tasks), (1, 0, 1));
        assert!(nodes[1].label_counts.is_empty());
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn a_release_that_overtakes_its_placement_wins_and_a_newer_attempt_survives_an_older_release() {
        let view = ClusterView::default();
        view.rebuild(&[]);
        // The exit of attempt 1 was applied before the scheduler recorded it.
        view.released(id(1), 1);
        view.placed(id(1), holding("a", 1));
        assert!(view.is_empty(), "released before recorded: not held");
        // Attempt 2 placed; a late release of attempt 1 does not free it.
        view.placed(id(1), holding("a", 2));
        view.released(id(1), 1);
        assert_eq!(view.len(), 1);
        view.released(id(1), 2);
        assert!(view.is_empty());
        // Tombstones last at least one pass, then go.
        view.next_pass();
        view.next_pass();
        view.placed(id(1), holding("a", 2));
        assert_eq!(view.len(), 1, "an old tombstone is gone after two passes");
    }

    #[test]
    fn applied_events_that_take_a_task_off_its_node_release_it_and_no_others() {
        use shepherd_core::Decision;
        use shepherd_store::Applied;
        let applied = |n: u8, from: TaskState, to: TaskState| {
            let decision = Decision {
                to,
                open_attempt: None,
                close_attempt: None,
                charge_attempt: false,
                retry_after: None,
                exit_code: None,
                reason: None,
                request_cancel: false,
            };
            Ok(Applied {
                task_id: id(n),
                from,
                decision,
                attempt: 1,
                node_id: Some("a".into()),
                project: "p".into(),
                created_at: shepherd_core::Timestamp(0),
                started_at: None,
                at: shepherd_core::Timestamp(0),
            })
        };
        let view = ClusterView::default();
        view.rebuild(&[]);
        for n in 1..=4 {
            view.placed(id(n), holding("a", 1));
        }
        let results = vec![
            applied(1, TaskState::Scheduled, TaskState::Running),
            applied(2, TaskState::Running, TaskState::Succeeded),
            applied(3, TaskState::Running, TaskState::Queued),
            applied(4, TaskState::Running, TaskState::Running),
            applied(5, TaskState::Queued, TaskState::Cancelled),
            Err(shepherd_store::ApplyError::NotFound(id(6))),
        ];
        assert_eq!(view.observe(&results), vec![(id(2), 1), (id(3), 1)]);
        assert_eq!(view.len(), 2, "started and cancel-requested tasks still hold their place");
    }

    #[test]
    fn a_rebuild_skips_what_was_released_while_the_store_was_read_and_differences_are_found() {
        let view = ClusterView::default();
        let task = |n: u8, attempt: u32| ActiveTask {
            id: id(n),
            project: "p".into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            code: None,
            state: TaskState::Running,
            node_id: "a".into(),
            attempt,
            resources: Resources { cpu_millicores: 500, memory_mib: 256 },
            cancel_requested: false,
            gpus: 0,
        };
        view.released(id(2), 1);
        view.rebuild(&[task(1, 1), task(2, 1)]);
        assert!(view.is_built());
        assert_eq!(view.len(), 1);
        assert!(view.differences(&[task(1, 1)]).is_empty());
        let diff = view.differences(&[task(1, 2), task(3, 1)]);
        assert_eq!(diff.len(), 2, "{diff:?}");
        view.invalidate();
        assert!(!view.is_built() && view.is_empty());
    }
}

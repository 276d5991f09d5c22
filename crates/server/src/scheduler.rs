//! The scheduler loop: takes queued tasks (a share per project), orders and
//! places them with `shepherd-sched` against the nodes and their current
//! allocations, persists each placement (queued → scheduled) and only then
//! tells the node's agent.

use crate::links::NodeLinks;
use crate::placement_notes::PlacementNotes;
use shepherd_core::{Constraint, Event, ProjectLimits, Resources, Timestamp};
use shepherd_sched::{AntiAffinity, Engine, NodeSnapshot, PendingTask, ProjectUsage};
use shepherd_store::{ActiveTask, NodeRecord, NodeState, QueuedTask, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Tasks considered per pass.
const BATCH: usize = 1000;
/// Longest sleep between passes: retry backoffs expire without a wakeup.
const IDLE_PASS: Duration = Duration::from_millis(250);

/// The loop's inputs.
pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub links: Arc<dyn NodeLinks>,
    pub wakeup: Arc<Notify>,
    pub notes: Arc<PlacementNotes>,
    pub engine: Arc<Engine>,
    /// Seeds each pass differently, reproducibly.
    pub passes: AtomicU64,
}

const ZERO: Resources = Resources { cpu_millicores: 0, memory_mib: 0 };

fn add(a: Resources, b: Resources) -> Resources {
    Resources { cpu_millicores: a.cpu_millicores.saturating_add(b.cpu_millicores), memory_mib: a.memory_mib.saturating_add(b.memory_mib) }
}

/// The task as placement sees it.
pub fn pending(task: &QueuedTask) -> PendingTask {
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
            spec.labels.get(&rule.label).map(|value| AntiAffinity { label: format!("{}={value}", rule.label), max_per_node: rule.max_per_node })
        }),
        profile: spec.profile.clone(),
    }
}

/// Nodes as placement sees them, with what active tasks hold on each.
pub fn snapshot(nodes: Vec<NodeRecord>, active: &[ActiveTask]) -> Vec<NodeSnapshot> {
    let mut by_node: HashMap<&str, Vec<&ActiveTask>> = HashMap::new();
    for task in active {
        by_node.entry(task.node_id.as_str()).or_default().push(task);
    }
    nodes
        .into_iter()
        .map(|node| {
            let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
            let mut label_counts: HashMap<String, u32> = HashMap::new();
            for task in &tasks {
                for (key, value) in &task.labels {
                    *label_counts.entry(format!("{key}={value}")).or_default() += 1;
                }
            }
            let mut images = node.images;
            images.sort();
            NodeSnapshot {
                pool: node.labels.get("pool").cloned(),
                dedicated_to: node
                    .labels
                    .get(shepherd_sched::DEDICATED_LABEL)
                    .map(|list| list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
                hostname: node.hostname,
                labels: node.labels,
                ready: node.state == NodeState::Ready,
                capacity: node.capacity,
                allocated: tasks.iter().fold(ZERO, |acc, t| add(acc, t.resources)),
                max_tasks: node.max_tasks,
                task_count: tasks.len() as u32,
                images,
                label_counts,
                id: node.id,
            }
        })
        .collect()
}

impl Scheduler {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let full = match self.pass().await {
                Ok(placed) => placed >= BATCH,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduling pass failed");
                    false
                }
            };
            if *shutdown.borrow() {
                break;
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(IDLE_PASS) => {}
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!("scheduler stopped");
    }

    /// One pass; returns how many tasks it placed.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let now = Timestamp::now();
        let queued = self.store.queued_tasks(now, BATCH).await?;
        if queued.is_empty() {
            return Ok(0);
        }
        let active = self.store.active_tasks().await?;
        let mut usage: HashMap<String, Resources> = HashMap::new();
        let mut held: HashMap<String, ProjectUsage> = HashMap::new();
        for task in &active {
            let project_usage = usage.entry(task.project.clone()).or_insert(ZERO);
            *project_usage = add(*project_usage, task.resources);
            let quota_usage = held.entry(task.project.clone()).or_insert(ProjectUsage::NONE);
            quota_usage.tasks += 1;
            quota_usage.resources = add(quota_usage.resources, task.resources);
        }
        let nodes = snapshot(self.store.list_nodes().await?, &active);
        let limits: HashMap<String, ProjectLimits> = self
            .store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| p.limits != ProjectLimits::default())
            .map(|p| (p.name, p.limits))
            .collect();
        let (pending, over_quota) = shepherd_sched::admit(queued.iter().map(pending).collect(), &held, &limits);
        let seed = self.passes.fetch_add(1, Ordering::Relaxed);
        let engine = self.engine.clone();
        let plan = tokio::task::spawn_blocking(move || engine.place_batch(nodes, pending, &usage, seed))
            .await
            .map_err(|_| StoreError::Closed)?;
        let events = plan.placements.iter().map(|p| (p.task_id, Event::Schedule { node_id: p.node_id.clone() })).collect();
        let results = self.store.apply(events, now).await?;
        let mut applied = Vec::new();
        for result in results {
            match result {
                Ok(a) => applied.push(a),
                // Cancelled between the read and the write: nothing to do.
                Err(e) => tracing::debug!(error = %e, "placement not applied"),
            }
        }
        // The agents get what they need to start with the assignment.
        let launches = futures_util::future::join_all(applied.iter().map(|a| self.store.launch_spec(a.task_id))).await;
        let mut placed = Vec::new();
        for (applied, launch) in applied.into_iter().zip(launches) {
            let node = applied.node_id.unwrap_or_default();
            match launch? {
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
        let mut unplaced = plan.unplaced;
        unplaced.extend(over_quota);
        self.notes.record(placed, unplaced);
        Ok(count)
    }
}

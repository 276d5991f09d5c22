//! The scheduler loop: takes queued tasks in priority order, places them
//! with `shepherd-sched` against the nodes and their current allocations,
//! persists each placement (queued → scheduled) and only then tells the
//! node's agent.

use crate::links::NodeLinks;
use crate::placement_notes::PlacementNotes;
use shepherd_core::{Constraint, Event, Resources, Timestamp};
use shepherd_sched::{place_batch, NodeSnapshot, PendingTask};
use shepherd_store::{NodeState, Store, StoreError};
use std::collections::HashMap;
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
        let mut nodes = self.snapshot().await?;
        let pending: Vec<PendingTask> = queued
            .iter()
            .map(|t| PendingTask {
                id: t.id,
                resources: t.resources,
                // Validated at submission; a constraint that no longer parses matches nothing.
                constraints: t.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect(),
            })
            .collect();
        let plan = place_batch(&mut nodes, &pending);
        let events = plan.placements.iter().map(|p| (p.task_id, Event::Schedule { node_id: p.node_id.clone() })).collect();
        let results = self.store.apply(events, now).await?;
        let mut placed = Vec::new();
        for result in results {
            match result {
                Ok(applied) => {
                    let node = applied.node_id.unwrap_or_default();
                    if !self.links.assign(&node, applied.task_id, applied.attempt) {
                        tracing::warn!(task = %applied.task_id, node, "node unreachable after placement");
                    }
                    placed.push(applied.task_id);
                }
                // Cancelled between the read and the write: nothing to do.
                Err(e) => tracing::debug!(error = %e, "placement not applied"),
            }
        }
        let count = placed.len();
        self.notes.record(placed, plan.unplaced);
        Ok(count)
    }

    async fn snapshot(&self) -> Result<Vec<NodeSnapshot>, StoreError> {
        let mut usage: HashMap<String, (Resources, u32)> = HashMap::new();
        for task in self.store.active_tasks().await? {
            let entry = usage.entry(task.node_id).or_insert((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
            entry.0.cpu_millicores += task.resources.cpu_millicores;
            entry.0.memory_mib += task.resources.memory_mib;
            entry.1 += 1;
        }
        Ok(self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|node| {
                let (allocated, task_count) = usage.remove(&node.id).unwrap_or((Resources { cpu_millicores: 0, memory_mib: 0 }, 0));
                NodeSnapshot {
                    pool: node.labels.get("pool").cloned(),
                    id: node.id,
                    hostname: node.hostname,
                    labels: node.labels,
                    ready: node.state == NodeState::Ready,
                    capacity: node.capacity,
                    allocated,
                    max_tasks: node.max_tasks,
                    task_count,
                }
            })
            .collect())
    }
}

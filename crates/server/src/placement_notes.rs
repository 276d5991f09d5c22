//! Why queued tasks wait: the scheduler's reasons, kept in memory and shown
//! by the API in a queued task's `reason`. A task the last pass looked at
//! has its own reason; every other task of a placement shape that did not
//! fit (which the scheduler skips without reading) has its shape's.

use shepherd_core::{Task, TaskId, TaskState};
use std::collections::HashMap;
use std::sync::Mutex;

/// The latest unplaced reason of each waiting task and of each shape.
#[derive(Default)]
pub struct PlacementNotes {
    notes: Mutex<Notes>,
}

#[derive(Default)]
struct Notes {
    by_task: HashMap<TaskId, String>,
    by_shape: HashMap<i64, String>,
    /// How the best candidates scored, per placed task (the latest placements).
    scores: HashMap<TaskId, Vec<shepherd_sched::NodeScore>>,
    /// Why every task waits, when one reason holds for all (no nodes).
    cluster: Option<String>,
    /// What the autoscaler's latest plan says of waiting tasks.
    autoscale: HashMap<TaskId, String>,
}

/// Keep at most this many task reasons; the oldest are simply forgotten
/// (their shapes' reasons remain).
const MAX_NOTES: usize = 100_000;

impl PlacementNotes {
    /// Records one scheduling pass: forgets placed tasks, notes the reasons
    /// of those it could not place, and replaces the shapes' reasons.
    pub fn record(&self, placed: impl IntoIterator<Item = TaskId>, unplaced: Vec<(TaskId, String)>, shapes: HashMap<i64, String>) {
        if let Ok(mut notes) = self.notes.lock() {
            for id in placed {
                notes.by_task.remove(&id);
            }
            if notes.by_task.len() + unplaced.len() > MAX_NOTES {
                notes.by_task.clear();
            }
            notes.by_task.extend(unplaced.into_iter().take(MAX_NOTES));
            notes.by_shape = shapes;
        }
    }

    /// One reason for every waiting task (no nodes at all), or none.
    pub fn set_cluster_reason(&self, reason: Option<String>) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.cluster = reason;
        }
    }

    /// Replaces what the autoscaler says of waiting tasks (its latest plan).
    pub fn set_autoscale(&self, notes: HashMap<TaskId, String>) {
        if let Ok(mut n) = self.notes.lock() {
            n.autoscale = notes;
        }
    }

    /// Keeps how the candidates of these placements scored (a bounded
    /// number of the latest: an explanation, not a record).
    pub fn record_scores(&self, scores: Vec<(TaskId, Vec<shepherd_sched::NodeScore>)>) {
        if scores.is_empty() {
            return;
        }
        if let Ok(mut notes) = self.notes.lock() {
            if notes.scores.len() + scores.len() > MAX_NOTES {
                notes.scores.clear();
            }
            notes.scores.extend(scores.into_iter().take(MAX_NOTES));
        }
    }

    /// How the candidates of the task's latest placement scored, best first,
    /// if this server placed it and still remembers.
    pub fn scores(&self, id: TaskId) -> Vec<shepherd_sched::NodeScore> {
        self.notes.lock().ok().and_then(|n| n.scores.get(&id).cloned()).unwrap_or_default()
    }

    /// Fills in a queued task's reason: its shape's from the latest pass
    /// (the freshest), else its own from the last pass that read it.
    /// Shapes are keyed by the cluster's `shape_key` (the store's).
    pub fn annotate(&self, task: &mut Task, shape_key: &shepherd_core::shape::ShapeKey) {
        if task.state != TaskState::Queued {
            return;
        }
        if let Some(at) = task.start_at.filter(|at| *at > shepherd_core::Timestamp::now() && task.attempts.is_empty()) {
            // Submitted with a delay, and not yet due.
            task.reason = Some(format!("delayed until {}", at.to_rfc3339()));
            return;
        }
        if let Some(at) = task.retry_at.filter(|at| *at > shepherd_core::Timestamp::now()) {
            // Waiting out its backoff: say which attempt comes next, and when.
            let tried = task.attempts.iter().filter(|a| a.outcome != Some(shepherd_core::AttemptOutcome::Interrupted)).count();
            let last = task.reason.take().map(|r| format!("{r}; ")).unwrap_or_default();
            task.reason = Some(format!("{last}attempt {} of {} at {}", tried + 1, task.retry.max_attempts, at.to_rfc3339()));
            return;
        }
        let Ok(notes) = self.notes.lock() else { return };
        let reason =
            notes.cluster.as_ref().or_else(|| notes.by_shape.get(&task.placement_shape(shape_key))).or_else(|| notes.by_task.get(&task.id));
        if let Some(reason) = reason {
            task.reason = Some(reason.clone());
        }
        if let Some(autoscale) = notes.autoscale.get(&task.id) {
            let before = task.reason.take().map(|r| format!("{r}; ")).unwrap_or_default();
            task.reason = Some(format!("{before}autoscaler: {autoscale}"));
        }
    }
}

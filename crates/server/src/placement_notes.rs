//! Why queued tasks wait: the scheduler's last "0/N nodes fit: ..." per
//! task, kept in memory and shown by the API in a queued task's `reason`.

use shepherd_core::{Task, TaskId, TaskState};
use std::collections::HashMap;
use std::sync::Mutex;

/// The latest unplaced reason of each waiting task.
#[derive(Default)]
pub struct PlacementNotes {
    reasons: Mutex<HashMap<TaskId, String>>,
}

/// Keep at most this many reasons; the oldest are simply forgotten.
const MAX_NOTES: usize = 100_000;

impl PlacementNotes {
    /// Records the reasons of one scheduling pass and forgets placed tasks.
    pub fn record(&self, placed: impl IntoIterator<Item = TaskId>, unplaced: Vec<(TaskId, String)>) {
        if let Ok(mut reasons) = self.reasons.lock() {
            for id in placed {
                reasons.remove(&id);
            }
            if reasons.len() + unplaced.len() > MAX_NOTES {
                reasons.clear();
            }
            reasons.extend(unplaced);
        }
    }

    /// Fills in a queued task's reason.
    pub fn annotate(&self, task: &mut Task) {
        if task.state != TaskState::Queued {
            return;
        }
        if let Some(reason) = self.reasons.lock().ok().and_then(|r| r.get(&task.id).cloned()) {
            task.reason = Some(reason);
        }
    }
}

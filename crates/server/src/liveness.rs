//! Which nodes are alive, kept in memory and off the store's write path:
//! a heartbeat is recorded here the moment it arrives, before anything is
//! written, so a busy store can never make a live node look silent. The
//! store still gets each node's heartbeat time and images (for `nodes` and
//! image-aware placement), in the background and at most one write per node
//! at a time.
//!
//! Nodes whose agent runs inside this process are alive as long as the
//! process is: they are never declared down.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Last sign of life of each node, and the nodes declared down.
pub struct Liveness {
    started: Instant,
    local: HashSet<String>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last: HashMap<String, Instant>,
    down: HashSet<String>,
    /// Nodes with a heartbeat write to the store in flight.
    writing: HashSet<String>,
}

impl Liveness {
    /// Liveness for a server starting now, with these in-process nodes.
    pub fn new(local: impl IntoIterator<Item = String>) -> Liveness {
        Liveness { started: Instant::now(), local: local.into_iter().collect(), inner: Mutex::new(Inner::default()) }
    }

    /// Whether the node's agent runs in this process.
    pub fn is_local(&self, node: &str) -> bool {
        self.local.contains(node)
    }

    /// Records a heartbeat (or a registration).
    pub fn beat(&self, node: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.last.insert(node.to_string(), Instant::now());
        }
    }

    /// How long the node has been silent. Agents cannot heartbeat a server
    /// that is not running: silence counts from this server's start at most.
    pub fn silent_for(&self, node: &str) -> Duration {
        if self.is_local(node) {
            return Duration::ZERO;
        }
        let last = self.inner.lock().ok().and_then(|inner| inner.last.get(node).copied()).unwrap_or(self.started);
        last.max(self.started).elapsed()
    }

    /// Marks a node down: its heartbeats are answered "reconnect" until it
    /// registers again (and so reconciles, fencing what was given away).
    pub fn mark_down(&self, node: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.down.insert(node.to_string());
        }
    }

    /// Whether the node was declared down and has not registered since.
    pub fn is_down(&self, node: &str) -> bool {
        self.inner.lock().map(|inner| inner.down.contains(node)).unwrap_or(false)
    }

    /// A node registered (again): alive, and no longer down.
    pub fn registered(&self, node: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.down.remove(node);
            inner.last.insert(node.to_string(), Instant::now());
        }
    }

    /// Claims the node's one heartbeat write slot; false if a write is in flight.
    pub fn start_write(&self, node: &str) -> bool {
        self.inner.lock().map(|mut inner| inner.writing.insert(node.to_string())).unwrap_or(false)
    }

    /// Releases the slot [`Liveness::start_write`] claimed.
    pub fn end_write(&self, node: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.writing.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_counts_from_the_last_beat_and_local_nodes_are_never_silent() {
        let liveness = Liveness::new(["here".to_string()]);
        std::thread::sleep(Duration::from_millis(30));
        assert!(liveness.silent_for("remote") >= Duration::from_millis(30), "silent since the start");
        liveness.beat("remote");
        assert!(liveness.silent_for("remote") < Duration::from_millis(30));
        assert_eq!(liveness.silent_for("here"), Duration::ZERO);
        liveness.mark_down("remote");
        assert!(liveness.is_down("remote"));
        liveness.registered("remote");
        assert!(!liveness.is_down("remote"));
        assert!(liveness.start_write("remote"));
        assert!(!liveness.start_write("remote"), "one write at a time");
        liveness.end_write("remote");
        assert!(liveness.start_write("remote"));
    }
}

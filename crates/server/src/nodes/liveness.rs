//! Which nodes are alive, kept in memory and off the store's write path:
//! a heartbeat is recorded here the moment it arrives, before anything is
//! written, so a busy store can never make a live node look silent. The
//! store still gets each node's heartbeat time and images (for `nodes`,
//! image-aware placement and a leader on another server), in one batched
//! write every few seconds for all the nodes heard since ([`flush`]), with
//! images only when they changed: 10,000 nodes beating every 2 s cost one
//! write of 10,000 rows, not 5,000 writes a second.
//!
//! Nodes whose agent runs inside this process are alive as long as the
//! process is: they are never declared down.

use shepherd_core::Timestamp;
use shepherd_store::NodeBeat;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Heartbeats per second a server aims to receive at most (the interval
/// grows with the fleet until the node timeout caps it).
pub const BEATS_PER_SECOND: u64 = 500;
/// The shortest heartbeat interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Heard since the last flush: when, and the images if they changed.
    unflushed: HashMap<String, (Timestamp, Option<Vec<String>>)>,
    /// The images last written per node.
    images: HashMap<String, Vec<String>>,
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

    /// How many nodes this server has heard from.
    pub fn known(&self) -> usize {
        self.inner.lock().map(|inner| inner.last.len()).unwrap_or(0)
    }

    /// The heartbeat interval agents are told: the number of nodes heard
    /// here divided by [`BEATS_PER_SECOND`], at least 2 s, and at most a
    /// fifth of the node timeout, so that a lost beat, a slow answer and
    /// the batched write together still fit well inside the timeout.
    pub fn interval(&self, node_timeout: Duration) -> Duration {
        let spread = Duration::from_millis((self.known() as u64).saturating_mul(1000) / BEATS_PER_SECOND);
        spread.max(MIN_INTERVAL).min((node_timeout / 5).max(Duration::from_millis(100)))
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

    /// Records a heartbeat with the node's images, for the next flush.
    pub fn beat_with(&self, node: &str, images: Vec<String>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.last.insert(node.to_string(), Instant::now());
            let changed = inner.images.get(node) != Some(&images);
            let entry = inner.unflushed.entry(node.to_string()).or_insert((Timestamp::now(), None));
            entry.0 = Timestamp::now();
            if changed {
                entry.1 = Some(images.clone());
                inner.images.insert(node.to_string(), images);
            }
        }
    }

    /// The heartbeats heard since the last call, for one write.
    pub fn take_unflushed(&self) -> Vec<NodeBeat> {
        let Ok(mut inner) = self.inner.lock() else { return Vec::new() };
        std::mem::take(&mut inner.unflushed).into_iter().map(|(id, (at, images))| NodeBeat { id, at, images }).collect()
    }

    /// A write failed: the beats go back for the next one (a newer beat
    /// heard meanwhile wins), and their images must be written again.
    pub fn restore(&self, beats: Vec<NodeBeat>) {
        if let Ok(mut inner) = self.inner.lock() {
            for beat in beats {
                if beat.images.is_some() {
                    inner.images.remove(&beat.id);
                }
                let entry = inner.unflushed.entry(beat.id).or_insert((beat.at, None));
                entry.0 = entry.0.max(beat.at);
            }
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
    }

    #[test]
    fn the_interval_grows_with_the_fleet_but_stays_inside_the_timeout() {
        let liveness = Liveness::new([]);
        assert_eq!(liveness.interval(Duration::from_secs(15)), MIN_INTERVAL);
        for i in 0..2000 {
            liveness.beat(&format!("n{i}"));
        }
        assert_eq!(liveness.interval(Duration::from_secs(60)), Duration::from_secs(4));
        assert_eq!(liveness.interval(Duration::from_secs(15)), Duration::from_secs(3), "a fifth of the timeout at most");
        assert_eq!(liveness.interval(Duration::from_secs(5)), Duration::from_secs(1), "short timeouts win over the minimum");
    }

    #[test]
    fn beats_are_flushed_once_each_with_images_only_when_they_changed() {
        let liveness = Liveness::new([]);
        liveness.beat_with("a", vec!["x".into()]);
        liveness.beat_with("a", vec!["x".into()]);
        liveness.beat_with("b", vec![]);
        let mut beats = liveness.take_unflushed();
        beats.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            beats.iter().map(|b| (b.id.as_str(), b.images.clone())).collect::<Vec<_>>(),
            vec![("a", Some(vec!["x".to_string()])), ("b", Some(vec![]))]
        );
        assert!(liveness.take_unflushed().is_empty(), "nothing heard since");
        liveness.beat_with("a", vec!["x".into()]);
        assert_eq!(liveness.take_unflushed()[0].images, None, "same images: not written again");
        liveness.beat_with("a", vec!["x".into(), "y".into()]);
        let beats = liveness.take_unflushed();
        assert_eq!(beats[0].images.as_ref().map(Vec::len), Some(2));
        let at = beats[0].at;
        liveness.restore(beats);
        let again = liveness.take_unflushed();
        assert_eq!((again.len(), again[0].at), (1, at), "a failed write's beats go back");
        liveness.restore(again);
        liveness.beat_with("a", vec!["x".into(), "y".into()]);
        let again = liveness.take_unflushed();
        assert!(again[0].images.is_some() && again[0].at >= at, "images written again, the newer time kept");
    }
}

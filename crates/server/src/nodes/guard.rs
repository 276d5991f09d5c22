//! What the agent API takes from a node, and how loudly it refuses the rest.
//!
//! A node's token proves which node speaks, not that what it says is its
//! own business: a node may write output only for attempts placed on it
//! and not yet ended, in chunks of at most [`MAX_CHUNK_BYTES`], and at
//! most the server's bound per attempt ([`LogGuard`]). Refused reports and
//! output are counted (a metric) and logged at most once per node every
//! few seconds ([`Refusals`]), so a rogue node cannot fill the server's log.

use shepherd_core::{LogChunk, TaskId};
use shepherd_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most output bytes one attempt may store through the agent API, by
/// default (`--max-attempt-log-bytes`).
pub const DEFAULT_MAX_ATTEMPT_LOG_BYTES: u64 = 4 * 1024 * 1024;

/// The largest output chunk a node may send (agents send at most 64 KiB).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Attempts remembered at most (the oldest unused are forgotten first).
const REMEMBERED: usize = 100_000;

/// Whose each attempt is, and how much output it stored through this server.
pub struct LogGuard {
    /// Most output bytes one attempt may store.
    pub max_per_attempt: u64,
    owners: Mutex<HashMap<(TaskId, u32), Owned>>,
}

struct Owned {
    node: String,
    bytes: u64,
    seen: Instant,
}

/// What became of a node's output.
#[derive(Debug, Default)]
pub struct Sorted {
    pub accepted: Vec<LogChunk>,
    /// Chunks of attempts that are not this node's (or ended, or unknown).
    pub not_its_own: usize,
    /// Chunks past the bounds (too large, or past the attempt's total).
    pub over_bound: usize,
}

impl LogGuard {
    /// A guard allowing `max_per_attempt` output bytes per attempt.
    pub fn new(max_per_attempt: u64) -> LogGuard {
        LogGuard { max_per_attempt, owners: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskId, u32), Owned>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the chunks `node` may write: of attempts placed on it that
    /// have not ended (an attempt never moves, so its node is read from
    /// the store once), within the bounds.
    pub async fn sort(&self, store: &dyn Store, node: &str, chunks: Vec<LogChunk>) -> Result<Sorted, StoreError> {
        let mut sorted = Sorted::default();
        let mut checked: HashMap<(TaskId, u32), bool> = HashMap::new();
        for chunk in chunks {
            let key = (chunk.task_id, chunk.attempt);
            let known = self.lock().get(&key).map(|o| o.node == node);
            let own = match (known, checked.get(&key)) {
                (Some(own), _) => own,
                (None, Some(own)) => *own,
                (None, None) => {
                    let own = store.get_task(chunk.task_id).await?.is_some_and(|task| {
                        task.attempts.iter().any(|a| a.number == chunk.attempt && a.node_id == node && a.outcome.is_none())
                    });
                    checked.insert(key, own);
                    if own {
                        self.remember(key, node);
                    }
                    own
                }
            };
            if !own {
                sorted.not_its_own += 1;
                continue;
            }
            if chunk.data.len() > MAX_CHUNK_BYTES || !self.charge(key, chunk.data.len() as u64) {
                sorted.over_bound += 1;
                continue;
            }
            sorted.accepted.push(chunk);
        }
        Ok(sorted)
    }

    fn remember(&self, key: (TaskId, u32), node: &str) {
        let mut owners = self.lock();
        if owners.len() >= REMEMBERED {
            // Forget the half least recently written to.
            let mut seen: Vec<Instant> = owners.values().map(|o| o.seen).collect();
            seen.sort_unstable();
            let cut = seen[seen.len() / 2];
            owners.retain(|_, o| o.seen > cut);
        }
        owners.entry(key).or_insert(Owned { node: node.to_string(), bytes: 0, seen: Instant::now() });
    }

    /// Counts `bytes` against the attempt's bound; false past it.
    fn charge(&self, key: (TaskId, u32), bytes: u64) -> bool {
        let mut owners = self.lock();
        let Some(owned) = owners.get_mut(&key) else { return false };
        owned.seen = Instant::now();
        if owned.bytes + bytes > self.max_per_attempt {
            return false;
        }
        owned.bytes += bytes;
        true
    }
}

/// How often one node's refusals are logged at most.
const NOTICE_EVERY: Duration = Duration::from_secs(10);

/// Refusals per node since they were last logged.
#[derive(Default)]
pub struct Refusals {
    nodes: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Refusals {
    /// Counts `count` refusals of `node`'s; says how many to log now (all
    /// since the last line), at most once per [`NOTICE_EVERY`] per node.
    pub fn note(&self, node: &str, count: u64) -> Option<u64> {
        if count == 0 {
            return None;
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if nodes.len() > 10_000 {
            nodes.retain(|_, (at, _)| at.elapsed() < NOTICE_EVERY);
        }
        match nodes.get_mut(node) {
            Some((at, pending)) if at.elapsed() < NOTICE_EVERY => {
                *pending += count;
                None
            }
            Some((at, pending)) => {
                let total = *pending + count;
                *at = Instant::now();
                *pending = 0;
                Some(total)
            }
            None => {
                nodes.insert(node.to_string(), (Instant::now(), 0));
                Some(count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_node_per_interval_with_their_count() {
        let refusals = Refusals::default();
        assert_eq!(refusals.note("n1", 0), None);
        assert_eq!(refusals.note("n1", 3), Some(3), "the first is logged at once");
        for _ in 0..1000 {
            assert_eq!(refusals.note("n1", 1), None, "then counted quietly");
        }
        assert_eq!(refusals.note("n2", 1), Some(1), "another node has its own interval");
    }

    #[test]
    fn an_attempt_is_charged_up_to_its_bound() {
        let guard = LogGuard::new(100);
        let key = (TaskId(ulid::Ulid::nil()), 1);
        assert!(!guard.charge(key, 1), "unknown attempts are charged nothing");
        guard.remember(key, "n1");
        assert!(guard.charge(key, 60));
        assert!(guard.charge(key, 40));
        assert!(!guard.charge(key, 1), "past the bound");
    }
}

//! Failed creates: each one counts against its pool, which backs off (1 s,
//! doubling, at most 5 min) and after three in a row is `failing` until a
//! machine of it joins.

use super::autoscaler::Autoscaler;
use shepherd_core::{Machine, Timestamp};
use std::time::{Duration, Instant};

/// Creates that fail in a row before a pool is `failing`.
pub(super) const FAILING_AFTER: u32 = 3;
/// The longest backoff between creates of a failing pool.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Autoscaler {
    /// A pool's backoff, if it is in one: until, failures, last error.
    pub(super) fn backoff(&self, pool: &str) -> Option<(Instant, u32, String)> {
        let pools = self.pools.lock().ok()?;
        let state = pools.get(pool)?;
        let until = state.backoff_until.filter(|at| *at > Instant::now())?;
        Some((until, state.failures, state.last_error.clone().unwrap_or_default()))
    }

    /// A machine of a pool joined since its last failure: the pool recovers.
    pub(super) fn note_joins(&self, machines: &[Machine]) {
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
    pub(super) fn count_failure(&self, pool: &str, error: String) {
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
}

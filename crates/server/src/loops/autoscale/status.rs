//! What the API shows of each pool: its configuration, its machines by
//! state and how its creates are doing.

use super::autoscaler::Autoscaler;
use super::backoff::FAILING_AFTER;
use super::config::PoolConfig;
use serde::Serialize;
use shepherd_core::Timestamp;
use shepherd_store::StoreError;
use std::collections::BTreeMap;
use std::time::Instant;

/// A pool as the API shows it: its configuration and how it is doing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Its configuration.
    pub config: PoolConfig,
    /// Its machines by state.
    pub machines: BTreeMap<String, u32>,
    /// Creates keep failing: it backs off.
    pub failing: bool,
    /// Creates that failed in a row.
    pub failures: u32,
    /// Why its last create failed, if one did.
    pub last_error: Option<String>,
    /// No create before this time (backoff), if any.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub backoff_until: Option<Timestamp>,
}

impl Autoscaler {
    /// Every pool: configuration, machines by state, failures.
    pub async fn status(&self) -> Result<Vec<PoolStatus>, StoreError> {
        let machines = self.parts.store.machines().await?;
        let pools = self.pools.lock().map_err(|_| StoreError::Closed)?;
        Ok(self
            .config
            .pools
            .iter()
            .map(|(name, config)| {
                let mut by_state = BTreeMap::new();
                for m in machines.iter().filter(|m| &m.pool == name) {
                    *by_state.entry(m.state.as_str().to_string()).or_insert(0) += 1;
                }
                let state = pools.get(name);
                let backoff_until = state
                    .and_then(|s| s.backoff_until)
                    .filter(|at| *at > Instant::now())
                    .map(|at| Timestamp::now().plus(at.saturating_duration_since(Instant::now())));
                PoolStatus {
                    name: name.clone(),
                    config: config.clone(),
                    machines: by_state,
                    failing: state.is_some_and(|s| s.failures >= FAILING_AFTER),
                    failures: state.map_or(0, |s| s.failures),
                    last_error: state.and_then(|s| s.last_error.clone()),
                    backoff_until,
                }
            })
            .collect())
    }
}

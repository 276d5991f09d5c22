//! What a replay comes to: both sides' figures.

use crate::report::ProfileReport;

/// What a replay found beside what really happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// The history as it happened (waits, utilization, queue over time).
    pub real: ProfileReport,
    /// The same arrivals under the replay's settings.
    pub replay: ProfileReport,
    /// Tasks of the history that never ran (no attempt ended): left out.
    pub never_ran: usize,
    /// Nodes in the real inventory, and in the replay's.
    pub nodes: usize,
    pub replay_nodes: usize,
    /// Autoscaled pools: machine-hours on both sides.
    pub pools: Vec<PoolHours>,
    /// The quotas the replay held tasks to (recorded, as the overlay changed them).
    pub quotas: Vec<shepherd_core::history::QuotaRecord>,
    /// Wall-clock seconds the replay took.
    pub seconds: f64,
}

/// An autoscaled pool's machines, really and in the replay, over the
/// replay's span (a machine counts from its ask to its destruction).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolHours {
    pub pool: String,
    /// Whether the replay scaled it itself (else its recorded machines
    /// came and went as they did).
    pub scaled_by_replay: bool,
    pub real_machine_hours: f64,
    pub replay_machine_hours: f64,
    pub real_machines: usize,
    pub replay_machines: usize,
    pub real_peak: u32,
    pub replay_peak: u32,
}

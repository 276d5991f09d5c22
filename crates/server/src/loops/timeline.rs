//! The dashboard's last hour: queued and running tasks, and tasks that
//! succeeded and failed, per project, sampled every [`SAMPLE_EVERY`].

use crate::metrics::Metrics;
use crate::service::auth::Caller;
use serde::{Deserialize, Serialize};
use shepherd_core::{TaskState, Timestamp};
use shepherd_store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the timeline takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples an hour holds.
const SAMPLES: usize = 720;

/// One project at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    queued: u64,
    running: u64,
    /// Ended since the sample before.
    succeeded: u64,
    failed: u64,
}

/// The last hour, a sample every [`SAMPLE_EVERY`].
#[derive(Default)]
pub struct Timeline {
    samples: Mutex<VecDeque<(Timestamp, HashMap<String, Counts>)>>,
}

impl Timeline {
    /// Takes samples until `shutdown`.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, metrics: Arc<Metrics>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.sample(store.as_ref(), &metrics).await;
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn sample(&self, store: &dyn Store, metrics: &Metrics) {
        let mut counts: HashMap<String, Counts> = HashMap::new();
        match store.active_counts().await {
            Ok(active) => {
                for (project, task_state, n) in active {
                    let c = counts.entry(project).or_default();
                    match task_state {
                        TaskState::Queued => c.queued += n,
                        _ => c.running += n,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "dashboard timeline: could not count tasks"),
        }
        for (project, (succeeded, failed)) in metrics.take_ended() {
            let c = counts.entry(project).or_default();
            c.succeeded += succeeded;
            c.failed += failed;
        }
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back((Timestamp::now(), counts));
            while samples.len() > SAMPLES {
                samples.pop_front();
            }
        }
    }

    /// The series one caller may see: every project's summed (admin) or its own.
    pub fn series(&self, caller: &Caller) -> Series {
        let mut series = Series::default();
        let Ok(samples) = self.samples.lock() else { return series };
        for (at, projects) in samples.iter() {
            let c = projects.iter().filter(|(p, _)| caller.can_access(p)).fold(Counts::default(), |mut sum, (_, c)| {
                sum.queued += c.queued;
                sum.running += c.running;
                sum.succeeded += c.succeeded;
                sum.failed += c.failed;
                sum
            });
            series.at.push(*at);
            series.queued.push(c.queued);
            series.running.push(c.running);
            series.succeeded.push(c.succeeded);
            series.failed.push(c.failed);
        }
        series
    }
}

/// The timeline's series, oldest first.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Series {
    #[schema(value_type = Vec<String>)]
    pub at: Vec<Timestamp>,
    pub queued: Vec<u64>,
    /// Scheduled or running.
    pub running: Vec<u64>,
    /// Tasks that succeeded in each interval.
    pub succeeded: Vec<u64>,
    /// Tasks that failed or timed out in each interval.
    pub failed: Vec<u64>,
}

//! What a simulation found, per profile, and the table a person reads.

use serde::Serialize;

/// One instant of the virtual clock.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_seconds: f64,
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
    /// Share of free CPU stranded on nodes without room for a median task.
    pub fragmentation: f64,
    pub queued: usize,
    pub running: usize,
}

/// Queue wait of one project.
#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    pub project: String,
    pub tasks: usize,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    /// The longest wait.
    pub max_seconds: f64,
}

/// The results of one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub profile: String,
    pub tasks: usize,
    pub placed: usize,
    /// Placement attempts (a task waiting several passes counts each time).
    pub decisions: usize,
    pub decisions_per_second: f64,
    pub decision_p50_us: f64,
    pub decision_p99_us: f64,
    /// Virtual time until the last task ended.
    pub makespan_seconds: f64,
    pub mean_cpu_utilization: f64,
    pub peak_cpu_utilization: f64,
    pub mean_fragmentation: f64,
    pub waits: Vec<Wait>,
    /// Tasks that fit nowhere, by reason.
    pub unplaced: Vec<(String, usize)>,
    pub samples: Vec<Sample>,
}

impl Wait {
    /// A project's waits (seconds, in any order) summed up.
    pub fn of(project: String, mut waits: Vec<f64>) -> Wait {
        waits.sort_by(|a, b| a.total_cmp(b));
        Wait {
            p50_seconds: percentile(&waits, 50.0),
            p99_seconds: percentile(&waits, 99.0),
            max_seconds: waits.last().copied().unwrap_or(0.0),
            tasks: waits.len(),
            project,
        }
    }
}

/// The value at percentile `p` of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The comparison table, profiles side by side.
pub fn table(reports: &[ProfileReport]) -> String {
    let mut out = String::new();
    out.push_str("| profile | placed | decisions/s | decision p50 µs | p99 µs | makespan s | mean CPU util | peak | fragmentation |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        out.push_str(&format!(
            "| {} | {}/{} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1}% | {:.1}% | {:.1}% |\n",
            r.profile,
            r.placed,
            r.tasks,
            r.decisions_per_second,
            r.decision_p50_us,
            r.decision_p99_us,
            r.makespan_seconds,
            r.mean_cpu_utilization * 100.0,
            r.peak_cpu_utilization * 100.0,
            r.mean_fragmentation * 100.0
        ));
    }
    out.push_str("\n| profile | project | tasks | queue wait p50 s | p99 s |\n|---|---|---|---|---|\n");
    for r in reports {
        for w in &r.waits {
            out.push_str(&format!("| {} | {} | {} | {:.1} | {:.1} |\n", r.profile, w.project, w.tasks, w.p50_seconds, w.p99_seconds));
        }
    }
    let unplaced: Vec<&ProfileReport> = reports.iter().filter(|r| !r.unplaced.is_empty()).collect();
    if !unplaced.is_empty() {
        out.push_str("\n| profile | never placed | reason |\n|---|---|---|\n");
        for r in unplaced {
            for (reason, count) in &r.unplaced {
                out.push_str(&format!("| {} | {count} | {reason} |\n", r.profile));
            }
        }
    }
    out
}

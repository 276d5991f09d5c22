//! Where a measured run's time went, stage by stage, from two scrapes of
//! the server's `/metrics` (before and after): the busy time of each stage
//! of the task pipeline (`shepherd_stage_busy_seconds`), the store's commits
//! and group sizes, and which serial stage (the scheduler's loop, the
//! store's single writer) was saturated. A server without the stage
//! counters (an older version) reports nothing.

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// The counters and histogram sums one scrape found, by series name and
/// label text (`shepherd_stage_busy_seconds_total{stage="sched_read"}`).
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Reads the Prometheus text exposition of `url`'s `/metrics`.
    pub async fn take(client: &reqwest::Client, url: &str) -> Result<Scrape> {
        let text = client.get(format!("{url}/metrics")).send().await?.error_for_status()?.text().await?;
        Ok(Scrape::parse(&text))
    }

    /// The samples of a text exposition (comments skipped).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_string(), value.parse::<f64>().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// One stage's share of a measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: String,
    /// Seconds spent in the stage over the run (summed over whatever ran
    /// it at once: for concurrent stages more than the run's length).
    pub busy_seconds: f64,
    /// Busy seconds over the run's seconds: for a serial stage, near 1.0
    /// means saturated; for a concurrent one, how many were in it on average.
    pub share: f64,
    /// Whether one at a time does this work.
    pub serial: bool,
}

/// The stages of a run, and the serial stage that bounds it if one does.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Breakdown {
    pub stages: Vec<Stage>,
    /// Commits of the store's writer in the run, and requests per commit.
    pub commits: f64,
    pub requests_per_commit: f64,
    /// Scheduling passes with work, and tasks placed per pass.
    pub passes: f64,
    pub placed_per_pass: f64,
    /// The most loaded serial stage, and whether it was saturated (busy
    /// at least [`SATURATED`] of the run).
    pub busiest_serial: Option<String>,
    pub saturated: bool,
}

/// A serial stage busy this share of the run or more is saturated.
pub const SATURATED: f64 = 0.85;

/// The stages counted by the server, in the pipeline's order, and whether each is serial.
const STAGES: [(&str, bool, &str); 8] = [
    ("api_submit", false, "submission: decode checks and admission"),
    ("api_submit_store", false, "submission: waiting for the store"),
    ("sched_read", true, "scheduler: queue read"),
    ("sched_place", true, "scheduler: placement"),
    ("sched_commit", true, "scheduler: commit of placements"),
    ("sched_assign", true, "scheduler: dispatch to nodes"),
    ("agent_report", false, "agent reports (waiting for the store included)"),
    ("store_write", true, "store: transactions (serial on SQLite)"),
];

impl Breakdown {
    /// What changed between `before` and `after`, over a run of `seconds`.
    /// `None` when the server counts no stages.
    pub fn between(before: &Scrape, after: &Scrape, seconds: f64) -> Option<Breakdown> {
        let seconds = seconds.max(1e-9);
        let delta = |series: &str| after.get(series) - before.get(series);
        let busy = |stage: &str| delta(&format!("shepherd_stage_busy_seconds_total{{stage=\"{stage}\"}}"));
        if !after.0.keys().any(|k| k.starts_with("shepherd_stage_busy_seconds")) {
            return None;
        }
        let stages: Vec<Stage> = STAGES
            .iter()
            .map(|(stage, serial, _)| Stage {
                stage: stage.to_string(),
                busy_seconds: busy(stage),
                share: busy(stage) / seconds,
                serial: *serial,
            })
            .collect();
        // The scheduler's loop is one serial stage made of four.
        let loop_share: f64 = stages.iter().filter(|s| s.stage.starts_with("sched_")).map(|s| s.share).sum();
        // SQLite's one writer is serial; PostgreSQL keeps several
        // transactions in flight (more busy seconds than the run's): not a
        // single stage then, and not judged as one.
        let writer_share = stages.iter().find(|s| s.stage == "store_write").map_or(0.0, |s| s.share);
        let writer_share = if writer_share > 1.05 { 0.0 } else { writer_share };
        let (busiest, share) = if loop_share >= writer_share { ("scheduler loop", loop_share) } else { ("store writer", writer_share) };
        let commits = delta("shepherd_store_commit_seconds_count");
        let passes = delta("shepherd_placement_pass_seconds_count");
        Some(Breakdown {
            stages,
            commits,
            requests_per_commit: delta("shepherd_store_commit_requests_sum") / commits.max(1.0),
            passes,
            placed_per_pass: delta("shepherd_placement_pass_placed_sum") / passes.max(1.0),
            busiest_serial: Some(format!("{busiest} ({:.0}% busy)", share * 100.0)),
            saturated: share >= SATURATED,
        })
    }

    /// The breakdown as lines for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::from("  where the time went (busy seconds over the run's):\n");
        for (stage, (_, serial, what)) in self.stages.iter().zip(STAGES.iter()) {
            let kind = if *serial { "serial" } else { "concurrent" };
            out.push_str(&format!("    {:<48} {:>7.2}s  {:>5.0}%  ({kind})\n", what, stage.busy_seconds, stage.share * 100.0));
        }
        out.push_str(&format!(
            "    store: {:.0} commits, {:.1} requests each; scheduler: {:.0} passes, {:.0} placed each\n",
            self.commits, self.requests_per_commit, self.passes, self.placed_per_pass
        ));
        let verdict = if self.saturated { "saturated" } else { "not saturated: the pipeline waits between stages" };
        out.push_str(&format!("    busiest serial stage: {} — {verdict}\n", self.busiest_serial.as_deref().unwrap_or("none")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP x\nshepherd_stage_busy_seconds_total{stage=\"sched_place\"} 1.0\n\
        shepherd_stage_busy_seconds_total{stage=\"store_write\"} 2.0\nshepherd_store_commit_seconds_count 10\n";
    const AFTER: &str = "shepherd_stage_busy_seconds_total{stage=\"sched_place\"} 2.0\n\
        shepherd_stage_busy_seconds_total{stage=\"sched_commit\"} 0.5\n\
        shepherd_stage_busy_seconds_total{stage=\"store_write\"} 11.5\nshepherd_store_commit_seconds_count 110\n\
        shepherd_store_commit_requests_sum 400\n";

    #[test]
    fn the_busiest_serial_stage_is_named_and_judged() {
        let b = Breakdown::between(&Scrape::parse(BEFORE), &Scrape::parse(AFTER), 10.0).expect("stages");
        let share = |name: &str| b.stages.iter().find(|s| s.stage == name).map(|s| s.share);
        assert_eq!(share("sched_place"), Some(0.1));
        assert_eq!(share("sched_commit"), Some(0.05));
        assert_eq!(share("store_write"), Some(0.95));
        assert_eq!(b.commits, 100.0);
        assert_eq!(b.requests_per_commit, 4.0);
        assert!(b.saturated);
        assert_eq!(b.busiest_serial.as_deref(), Some("store writer (95% busy)"));
        assert!(b.render().contains("saturated"));
    }

    #[test]
    fn a_server_without_stage_counters_reports_nothing() {
        assert!(Breakdown::between(&Scrape::default(), &Scrape::parse("shepherd_placements_total 5\n"), 1.0).is_none());
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn transactions_in_flight_at_once_are_not_a_saturated_serial_stage() {
        let after = "shepherd_stage_busy_seconds_total{stage=\"store_write\"} 22.0\n\
            shepherd_stage_busy_seconds_total{stage=\"sched_read\"} 4.0\n\
            shepherd_stage_busy_seconds_total{stage=\"sched_commit\"} 4.5\n";
        let b = Breakdown::between(&Scrape::default(), &Scrape::parse(after), 10.0).expect("stages");
        assert_eq!(b.busiest_serial.as_deref(), Some("scheduler loop (85% busy)"));
        assert!(b.saturated);
    }
}

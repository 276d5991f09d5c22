//! The replay beside the real run as text.

use super::outcome::ReplayReport;

/// The replay beside the real run, per project and for the cluster, as a
/// Markdown table a person reads (project names and reasons with control
/// characters shown escaped).
pub fn table(r: &ReplayReport, same_settings: bool) -> String {
    let mut out = format!(
        "replayed {} of {} tasks ({} never ran: left out) on {} nodes ({} real) in {:.1} s\n\n",
        r.replay.placed, r.real.tasks, r.never_ran, r.replay_nodes, r.nodes, r.seconds
    );
    out.push_str(
        "| project | tasks | wait p50 real | replay | p99 real | replay | max real | replay |\n|---|---|---|---|---|---|---|---|\n",
    );
    for real in &r.real.waits {
        let replay = r.replay.waits.iter().find(|w| w.project == real.project);
        let (p50, p99, max) = replay.map_or((f64::NAN, f64::NAN, f64::NAN), |w| (w.p50_seconds, w.p99_seconds, w.max_seconds));
        out.push_str(&format!(
            "| {} | {} | {:.2}s | {:.2}s | {:.2}s | {:.2}s | {:.2}s | {:.2}s |\n",
            safe(&real.project),
            real.tasks,
            real.p50_seconds,
            p50,
            real.p99_seconds,
            p99,
            real.max_seconds,
            max
        ));
    }
    out.push_str(&format!(
        "\nmean CPU allocated: real {:.1}%, replay {:.1}% ({:+.1} points); peak: real {:.1}%, replay {:.1}%\n",
        r.real.mean_cpu_utilization * 100.0,
        r.replay.mean_cpu_utilization * 100.0,
        (r.replay.mean_cpu_utilization - r.real.mean_cpu_utilization) * 100.0,
        r.real.peak_cpu_utilization * 100.0,
        r.replay.peak_cpu_utilization * 100.0
    ));
    out.push_str(&format!(
        "mean fragmentation (free CPU stranded on nodes without room for a typical task): real {:.1}%, replay {:.1}%\n",
        r.real.mean_fragmentation * 100.0,
        r.replay.mean_fragmentation * 100.0
    ));
    if !r.pools.is_empty() {
        out.push_str(
            "\n| autoscaled pool | machine-hours real | replay | machines real | replay | peak real | replay |\n|---|---|---|---|---|---|---|\n",
        );
        for p in &r.pools {
            out.push_str(&format!(
                "| {}{} | {:.3} | {:.3} | {} | {} | {} | {} |\n",
                safe(&p.pool),
                if p.scaled_by_replay { " (scaled by the replay)" } else { " (as recorded)" },
                p.real_machine_hours,
                p.replay_machine_hours,
                p.real_machines,
                p.replay_machines,
                p.real_peak,
                p.replay_peak
            ));
        }
    }
    if !r.quotas.is_empty() {
        let quotas: Vec<String> = r
            .quotas
            .iter()
            .map(|q| {
                let limits = [
                    q.max_running.map(|v| format!("{v} running")),
                    q.max_cpu_millicores.map(|v| format!("{v}m CPU")),
                    q.max_memory_mib.map(|v| format!("{v} MiB")),
                    q.max_gpus.map(|v| format!("{v} GPUs")),
                ];
                format!("{} ({})", safe(&q.project), limits.into_iter().flatten().collect::<Vec<_>>().join(", "))
            })
            .collect();
        out.push_str(&format!("quotas replayed: {}\n", quotas.join("; ")));
    }
    let unplaced: usize = r.replay.unplaced.iter().map(|(_, n)| n).sum();
    out.push_str(&format!("tasks that fit no node in the replay: {unplaced}\n"));
    for (reason, n) in &r.replay.unplaced {
        out.push_str(&format!("  {n}: {}\n", safe(reason)));
    }
    if same_settings {
        out.push_str(
            "\nThese are the settings the history ran under (nothing changed for the replay): the differences above are \
             the replay's own error. Read a replay under other settings against them.\n",
        );
    }
    out
}

/// Text with control characters escaped (names come from tenants).
fn safe(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() || c == '|' { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

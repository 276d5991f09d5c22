//! A plot a person can look at: CPU utilization and queue length over
//! virtual time, one line per profile, as a self-contained SVG.

use crate::report::ProfileReport;
use std::fmt::Write;

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const WIDTH: f64 = 960.0;
const PANEL: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

fn panel(
    out: &mut String,
    reports: &[ProfileReport],
    top: f64,
    title: &str,
    max_y: f64,
    y_label: &dyn Fn(f64) -> String,
    value: &dyn Fn(&crate::report::Sample) -> f64,
) {
    let max_t = reports.iter().flat_map(|r| r.samples.last()).map(|s| s.at_seconds).fold(1.0, f64::max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / max_t * plot_w;
    let y = |v: f64| top + PANEL - (v / max_y.max(1e-9)).min(1.0) * PANEL;
    let _ = write!(out, r##"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="bold">{title}</text>"##, top - 10.0);
    let _ = write!(out, r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##);
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            y_label(v)
        );
        let t = max_t * f64::from(i) / 4.0;
        let _ =
            write!(out, r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0}s</text>"##, x(t), top + PANEL + 16.0, t);
    }
    for (i, report) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // At most ~1,000 points a line.
        let step = (report.samples.len() / 1000).max(1);
        let points: Vec<String> =
            report.samples.iter().step_by(step).map(|s| format!("{:.1},{:.1}", x(s.at_seconds), y(value(s)))).collect();
        let _ = write!(out, r##"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"##, points.join(" "));
        let ly = top + 20.0 + 20.0 * i as f64;
        let _ = write!(
            out,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="13">{}</text>"##,
            LEFT + plot_w + 15.0,
            LEFT + plot_w + 40.0,
            LEFT + plot_w + 46.0,
            ly + 4.0,
            report.profile
        );
    }
}

/// The SVG document.
pub fn plot(reports: &[ProfileReport], title: &str) -> String {
    let height = TOP + 2.0 * PANEL + GAP + 40.0;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="20" font-size="16">{title}</text>"##
    );
    panel(&mut out, reports, TOP + 20.0, "CPU allocated", 1.0, &|v| format!("{:.0}%", v * 100.0), &|s| s.cpu_utilization);
    let max_queue = reports.iter().flat_map(|r| r.samples.iter()).map(|s| s.queued).max().unwrap_or(0).max(1) as f64;
    panel(&mut out, reports, TOP + 20.0 + PANEL + GAP, "Tasks waiting in the queue", max_queue, &|v| format!("{v:.0}"), &|s| {
        s.queued as f64
    });
    out.push_str("</svg>\n");
    out
}

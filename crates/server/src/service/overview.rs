//! The dashboard's overview: tasks and nodes by state now, and the last
//! hour as numbers and as plots (SVG, drawn here so the page needs no
//! chart library).

use crate::loops::timeline::{Series, Timeline, SAMPLE_EVERY};
use crate::service::auth::Caller;
use serde::{Deserialize, Serialize};
use shepherd_core::Timestamp;
use shepherd_store::{Store, StoreError};

/// What the dashboard's overview shows.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Overview {
    /// Tasks by state now (the caller's project, or all).
    pub tasks: std::collections::BTreeMap<String, u64>,
    /// Nodes by state (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<std::collections::BTreeMap<String, u64>>,
    /// The last hour.
    pub series: Series,
    /// The series drawn: `queue`, `running`, `throughput`, `failures`, each an SVG document.
    pub plots: std::collections::BTreeMap<String, String>,
}

/// What `caller` may see of the overview.
pub async fn overview(store: &dyn Store, timeline: &Timeline, caller: &Caller) -> Result<Overview, StoreError> {
    let tasks = store.count_by_state(caller.project().map(str::to_string)).await?;
    let tasks = tasks.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
    let nodes = match caller {
        Caller::Admin => {
            let mut by_state = std::collections::BTreeMap::new();
            for node in store.list_nodes().await? {
                *by_state.entry(node.state.as_str().to_string()).or_insert(0) += 1;
            }
            Some(by_state)
        }
        _ => None,
    };
    let series = timeline.series(caller);
    let per_minute = |values: &[u64]| -> Vec<f64> {
        let factor = 60.0 / SAMPLE_EVERY.as_secs_f64();
        values.iter().map(|v| *v as f64 * factor).collect()
    };
    let level = |values: &[u64]| -> Vec<f64> { values.iter().map(|v| *v as f64).collect() };
    let mut plots = std::collections::BTreeMap::new();
    plots.insert("queue".into(), plot("Queued", "tasks", &series.at, &level(&series.queued), "#d97706"));
    plots.insert("running".into(), plot("Running", "tasks", &series.at, &level(&series.running), "#2563eb"));
    plots.insert("throughput".into(), plot("Succeeded", "tasks/min", &series.at, &per_minute(&series.succeeded), "#16a34a"));
    plots.insert("failures".into(), plot("Failed", "tasks/min", &series.at, &per_minute(&series.failed), "#dc2626"));
    Ok(Overview { tasks, nodes, series, plots })
}

/// A line plot of `values` over the last hour as an SVG document, drawn
/// here so the page needs no chart library.
pub fn plot(title: &str, unit: &str, at: &[Timestamp], values: &[f64], color: &str) -> String {
    const W: f64 = 480.0;
    const H: f64 = 160.0;
    const LEFT: f64 = 44.0;
    const TOP: f64 = 24.0;
    const BOTTOM: f64 = 20.0;
    let now = at.last().map_or(Timestamp::now().millis(), |t| t.millis());
    let span = 3_600_000.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { nice(max) };
    let x = |t: i64| LEFT + (W - LEFT - 8.0) * (1.0 - ((now - t) as f64 / span).clamp(0.0, 1.0));
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v / top).clamp(0.0, 1.0));
    let points: Vec<String> = at.iter().zip(values).map(|(t, v)| format!("{:.1},{:.1}", x(t.millis()), y(*v))).collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\" class=\"plot\">\
         <text x=\"{LEFT}\" y=\"14\" class=\"plot-title\">{title} ({unit})</text>\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"{lx}\" y=\"{ty}\" class=\"tick\" text-anchor=\"end\">{top_label}</text>\
         <text x=\"{lx}\" y=\"{b}\" class=\"tick\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{tl}\" class=\"tick\">-60 min</text>\
         <text x=\"{mid}\" y=\"{tl}\" class=\"tick\" text-anchor=\"middle\">-30 min</text>\
         <text x=\"{r}\" y=\"{tl}\" class=\"tick\" text-anchor=\"end\">now</text>",
        b = H - BOTTOM,
        r = W - 8.0,
        lx = LEFT - 4.0,
        ty = TOP + 4.0,
        top_label = label(top),
        tl = H - 4.0,
        mid = LEFT + (W - LEFT - 8.0) / 2.0,
    );
    if points.len() >= 2 {
        svg.push_str(&format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" ")));
    } else if let Some(p) = points.first() {
        let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
        svg.push_str(&format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"));
    }
    svg.push_str("</svg>");
    svg
}

/// The next round number at or above `v` (1, 2, 5 × 10ⁿ).
fn nice(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|c| *c >= v).unwrap_or(10.0 * magnitude)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_scale_to_a_round_maximum_and_place_points_in_time() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(1.0), 1.0);
        let now = Timestamp(10_000_000);
        let at = [Timestamp(now.millis() - 1_800_000), now];
        let svg = plot("Queued", "tasks", &at, &[0.0, 7.0], "#000");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(">10<"), "the axis tops at 10: {svg}");
        // Half an hour ago sits in the middle at 0; now at the right edge,
        // 7/10 of the way up the plot's 116 pixels from its base at 140.
        assert!(svg.contains("258.0,140.0 472.0,58.8"), "{svg}");
        assert!(plot("Empty", "tasks", &[], &[], "#000").contains("</svg>"));
    }
}

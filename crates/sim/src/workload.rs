//! Workloads: JSON Lines or CSV files, or a seeded generator.
//!
//! JSON Lines, one task per line (times in seconds):
//! `{"at": 0.5, "duration": 30, "cpu": 500, "memory": 512, "project": "a", "priority": 0, "constraints": ["node.labels.region==eu"]}`
//!
//! CSV with a header: `at,duration,cpu,memory,project,priority,constraints`,
//! constraints separated by `;` (and an optional `gpus` column; `"gpus": N` in JSON). `project`, `priority` and `constraints` may
//! be left empty.

use serde::Deserialize;

/// One task of a workload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadTask {
    /// Arrival, seconds from the start.
    pub at: f64,
    /// Run time once started, seconds.
    pub duration: f64,
    /// Millicores.
    pub cpu: u32,
    /// MiB.
    pub memory: u32,
    #[serde(default = "default_project")]
    pub project: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub constraints: Vec<String>,
    /// GPUs it needs.
    #[serde(default)]
    pub gpus: u32,
}

fn default_project() -> String {
    "default".into()
}

/// A line of a workload that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct WorkloadError {
    pub line: usize,
    pub message: String,
}

fn check(task: WorkloadTask, line: usize) -> Result<WorkloadTask, WorkloadError> {
    let bad = |message: String| Err(WorkloadError { line, message });
    if !(task.at.is_finite() && task.at >= 0.0) {
        return bad(format!("at must be a time ≥ 0, not {}", task.at));
    }
    if !(task.duration.is_finite() && task.duration > 0.0) {
        return bad(format!("duration must be > 0, not {}", task.duration));
    }
    if task.cpu == 0 || task.memory == 0 {
        return bad("cpu and memory must be > 0".into());
    }
    for c in &task.constraints {
        if let Err(e) = shepherd_core::Constraint::parse(c) {
            return bad(format!("constraint `{c}`: {e}"));
        }
    }
    Ok(task)
}

/// Parses a workload; CSV when the first line is the CSV header, else JSON Lines.
pub fn parse_workload(text: &str) -> Result<Vec<WorkloadTask>, WorkloadError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#')).peekable();
    let csv = lines.peek().is_some_and(|(_, l)| l.trim_start().starts_with("at,"));
    let mut tasks = Vec::new();
    if csv {
        let (_, header) = lines.next().unwrap_or((0, ""));
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        for required in ["at", "duration", "cpu", "memory"] {
            if !columns.contains(&required) {
                return Err(WorkloadError { line: 1, message: format!("CSV header lacks `{required}`") });
            }
        }
        for (index, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |name: &str| columns.iter().position(|c| *c == name).and_then(|i| fields.get(i)).copied().unwrap_or("");
            let number = |name: &str| -> Result<f64, WorkloadError> {
                get(name)
                    .parse::<f64>()
                    .map_err(|_| WorkloadError { line: index + 1, message: format!("{name}: `{}` is not a number", get(name)) })
            };
            let task = WorkloadTask {
                at: number("at")?,
                duration: number("duration")?,
                cpu: number("cpu")? as u32,
                memory: number("memory")? as u32,
                project: if get("project").is_empty() { default_project() } else { get("project").to_string() },
                priority: if get("priority").is_empty() { 0 } else { number("priority")? as i32 },
                constraints: get("constraints").split(';').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect(),
                gpus: if get("gpus").is_empty() { 0 } else { number("gpus")? as u32 },
            };
            tasks.push(check(task, index + 1)?);
        }
    } else {
        for (index, line) in lines {
            let task: WorkloadTask = serde_json::from_str(line).map_err(|e| WorkloadError { line: index + 1, message: e.to_string() })?;
            tasks.push(check(task, index + 1)?);
        }
    }
    tasks.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(tasks)
}

/// Settings of the built-in generator.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub tasks: usize,
    /// Arrivals spread over this many seconds.
    pub arrival_seconds: f64,
    /// Mean run time, seconds (exponential).
    pub mean_duration: f64,
    /// Share of tasks with a region constraint.
    pub constrained: f64,
    pub seed: u64,
}

/// A seeded workload: three projects, one of them sending most of the tasks
/// in a burst (to show fair share at work), mixed sizes, some constrained.
pub fn generate(config: &GeneratorConfig) -> Vec<WorkloadTask> {
    let mut state = config.seed;
    let mut unit = move || {
        state = shepherd_sched::rng::mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut tasks: Vec<WorkloadTask> = (0..config.tasks)
        .map(|_| {
            let pick = unit();
            let (project, at) = if pick < 0.7 {
                // The flood: arrives in the first fifth of the window.
                ("batch", unit() * config.arrival_seconds * 0.2)
            } else if pick < 0.9 {
                ("web", unit() * config.arrival_seconds)
            } else {
                ("ml", unit() * config.arrival_seconds)
            };
            let constraints = if unit() < config.constrained {
                vec![format!("node.labels.region=={}", ["eu", "us", "ap"][(unit() * 3.0) as usize % 3])]
            } else {
                Vec::new()
            };
            WorkloadTask {
                at,
                duration: (-config.mean_duration * (1.0 - unit()).max(1e-9).ln()).max(1.0),
                cpu: 100 * (1 + (unit() * 20.0) as u32),
                memory: 128 * (1 + (unit() * 16.0) as u32),
                project: project.into(),
                priority: if project == "web" { 1 } else { 0 },
                constraints,
                gpus: 0,
            }
        })
        .collect();
    tasks.sort_by(|a, b| a.at.total_cmp(&b.at));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_csv_parse_alike() {
        let jsonl = r#"{"at": 1, "duration": 5, "cpu": 100, "memory": 64, "project": "a", "constraints": ["node.labels.region==eu"]}
{"at": 0, "duration": 2, "cpu": 200, "memory": 128}"#;
        let csv = "at,duration,cpu,memory,project,priority,constraints\n1,5,100,64,a,0,node.labels.region==eu\n0,2,200,128,,,\n";
        let a = parse_workload(jsonl).unwrap();
        let b = parse_workload(csv).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].at, 0.0, "sorted by arrival");
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = parse_workload("{\"at\": 0, \"duration\": 0, \"cpu\": 1, \"memory\": 1}").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse_workload("at,duration,cpu,memory\n0,1,1,1\n0,1,x,1\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(parse_workload("{\"at\": 0, \"duration\": 1, \"cpu\": 1, \"memory\": 1, \"constraints\": [\"bad\"]}").is_err());
    }

    #[test]
    fn the_generator_is_reproducible() {
        let config = GeneratorConfig { tasks: 100, arrival_seconds: 60.0, mean_duration: 10.0, constrained: 0.2, seed: 3 };
        assert_eq!(generate(&config), generate(&config));
        assert_eq!(generate(&config).len(), 100);
    }
}

//! A cluster's scheduling history as a file (JSON Lines): what
//! `shepherd history export` writes and `shepherd simulate --history`
//! replays. Only shapes and times: a task's project, resources, priority,
//! constraints, pool and profile, when it arrived, and where and when each
//! of its attempts held a node; a node's capacity, labels and when it was
//! ready. Never a command, an image, an environment, a payload, a secret
//! or a task's labels: a history can be handed to someone else.
//!
//! The first line is a [`HistoryHeader`]; quota, pool, machine and node
//! lines (the settings and the inventory) come before the task lines;
//! tasks are in order of arrival. Every record is checked when read
//! ([`HistoryRecord::parse`]): a file is input like any other.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// This format's version.
pub const VERSION: u32 = 1;

/// The longest line a reader accepts (a task with 64 constraints fits).
pub const MAX_LINE: usize = 64 * 1024;

/// The most nodes a history may hold.
pub const MAX_NODES: usize = 100_000;

/// Times in a history: epoch milliseconds within ±10^14 (some 3,000 years),
/// so that sums of them never overflow.
pub const MAX_TIME: i64 = 100_000_000_000_000;

/// The longest duration a pool's settings may give: a year.
pub const MAX_SECONDS: f64 = 366.0 * 86_400.0;

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryRecord {
    Header(HistoryHeader),
    /// A project's quota (as it was when the history was taken).
    Quota(QuotaRecord),
    /// An autoscaled pool's settings (as they were when the history was taken).
    Pool(PoolRecord),
    /// An autoscaled machine's life: asked for, joined, gone.
    Machine(MachineRecord),
    Node(NodeRecord),
    Task(TaskRecord),
}

/// A project's limits on what it holds at once (`None`: no limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRecord {
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_millicores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u64>,
}

impl QuotaRecord {
    /// A project's quota as a history carries it; `None` if it limits
    /// nothing the scheduler holds tasks to.
    pub fn of(project: String, limits: &crate::ProjectLimits) -> Option<QuotaRecord> {
        let record = QuotaRecord {
            project,
            max_running: limits.max_running,
            max_cpu_millicores: limits.max_cpu_millicores,
            max_memory_mib: limits.max_memory_mib,
            max_gpus: limits.max_gpus,
        };
        let any = record.max_running.is_some()
            || record.max_cpu_millicores.is_some()
            || record.max_memory_mib.is_some()
            || record.max_gpus.is_some();
        any.then_some(record)
    }

    /// The limits as the scheduler's quota ledger takes them.
    pub fn limits(&self) -> crate::ProjectLimits {
        crate::ProjectLimits {
            max_running: self.max_running,
            max_cpu_millicores: self.max_cpu_millicores,
            max_memory_mib: self.max_memory_mib,
            max_gpus: self.max_gpus,
            ..Default::default()
        }
    }
}

/// An autoscaled pool: its machines' shape and how it grows and shrinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRecord {
    pub pool: String,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Most machines being made at once.
    pub max_creating: u32,
    /// Each machine's node: CPU (millicores), memory (MiB), task limit, labels.
    pub cpu: u32,
    pub memory: u32,
    pub max_tasks: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Least time between two scale-ups.
    pub cooldown_seconds: f64,
    /// How long a machine runs no task before it goes.
    pub idle_seconds: f64,
    /// How often the autoscaler looks.
    pub interval_seconds: f64,
}

/// One autoscaled machine: asked for (it is paid for from then), its node
/// joined, gone (destroyed). Epoch milliseconds; `None`: not (yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRecord {
    pub machine: String,
    pub pool: String,
    pub asked: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<i64>,
}

/// What a history covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryHeader {
    pub version: u32,
    /// Tasks that arrived in `[from, to)`, epoch milliseconds.
    pub from: i64,
    pub to: i64,
    /// Only these projects' tasks (empty: every project's).
    #[serde(default)]
    pub projects: Vec<String>,
}

/// A node's state from a moment on: `ready` (it takes tasks, with this
/// capacity), `draining` (it takes none; what runs there finishes), or
/// `gone` (down or removed: what ran there is lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: String,
    /// Epoch milliseconds.
    pub at: i64,
    pub state: NodeHistoryState,
    pub cpu: u32,
    pub memory: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub max_tasks: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A node's state in a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHistoryState {
    Ready,
    Draining,
    Gone,
}

impl NodeHistoryState {
    /// A node's state as the store keeps it (`ready`, `draining`, `down`).
    pub fn of(state: &str) -> NodeHistoryState {
        match state {
            "ready" => NodeHistoryState::Ready,
            "draining" => NodeHistoryState::Draining,
            _ => NodeHistoryState::Gone,
        }
    }
}

/// A task as its scheduling saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    pub project: String,
    /// When it arrived (could first be placed), epoch milliseconds.
    pub at: i64,
    pub cpu: u32,
    pub memory: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Each time it held a node, in order.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
}

/// One attempt: the node it held from `placed` until `ended` (`None`:
/// still held when the history was taken).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRecord {
    pub node: String,
    pub placed: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<i64>,
    /// `succeeded`, `failed`, `lost`, … (`None` while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl TaskRecord {
    /// How long it really waited from arrival to its first placement
    /// (`None`: never placed).
    pub fn wait_ms(&self) -> Option<i64> {
        self.attempts.first().map(|a| (a.placed - self.at).max(0))
    }

    /// How long it holds a node when it runs: its last attempt's time on
    /// its node (the one that ran to the end; earlier ones were lost or
    /// retried). `None` if no attempt ended.
    pub fn service_ms(&self) -> Option<i64> {
        self.attempts.iter().rev().find_map(|a| a.ended.map(|e| (e - a.placed).max(1)))
    }
}

/// A line that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HistoryError(pub String);

impl HistoryRecord {
    /// One line, checked: size, shape and bounds.
    pub fn parse(line: &str) -> Result<HistoryRecord, HistoryError> {
        if line.len() > MAX_LINE {
            return Err(HistoryError(format!("a line of {} bytes (at most {MAX_LINE})", line.len())));
        }
        let record: HistoryRecord = serde_json::from_str(line).map_err(|e| HistoryError(e.to_string()))?;
        record.check()?;
        Ok(record)
    }

    fn check(&self) -> Result<(), HistoryError> {
        let bad = |m: String| Err(HistoryError(m));
        let name = |n: &str, what: &str| -> Result<(), HistoryError> {
            if n.is_empty() || n.len() > 255 {
                return Err(HistoryError(format!("{what}: 1 to 255 characters")));
            }
            Ok(())
        };
        let time = |t: i64| -> Result<(), HistoryError> {
            if t.abs() > MAX_TIME {
                return Err(HistoryError(format!("time {t} is out of range")));
            }
            Ok(())
        };
        match self {
            HistoryRecord::Header(h) => {
                time(h.from)?;
                time(h.to)?;
                if h.version != VERSION {
                    return bad(format!("version {} (this build reads {VERSION})", h.version));
                }
                if h.to < h.from {
                    return bad("`to` is before `from`".into());
                }
            }
            HistoryRecord::Quota(q) => name(&q.project, "project")?,
            HistoryRecord::Pool(p) => {
                name(&p.pool, "pool")?;
                if p.max > MAX_NODES as u32 || p.min > p.max || p.cpu == 0 || p.memory == 0 || p.labels.len() > 64 {
                    return bad(format!("pool {}: min <= max <= {MAX_NODES}, cpu and memory > 0, at most 64 labels", p.pool));
                }
                for s in [p.cooldown_seconds, p.idle_seconds, p.interval_seconds] {
                    if !(0.0..=MAX_SECONDS).contains(&s) {
                        return bad(format!("pool {}: durations 0 to {MAX_SECONDS} seconds", p.pool));
                    }
                }
            }
            HistoryRecord::Machine(m) => {
                name(&m.machine, "machine")?;
                name(&m.pool, "pool")?;
                time(m.asked)?;
                m.joined.map(time).transpose()?;
                m.gone.map(time).transpose()?;
                if m.joined.is_some_and(|j| j < m.asked) || m.gone.is_some_and(|g| g < m.asked) {
                    return bad(format!("machine {}: joined or gone before it was asked for", m.machine));
                }
            }
            HistoryRecord::Node(n) => {
                name(&n.node, "node")?;
                time(n.at)?;
                if n.state == NodeHistoryState::Ready && (n.cpu == 0 || n.memory == 0) {
                    return bad(format!("node {}: a ready node needs cpu and memory", n.node));
                }
                if n.labels.len() > 64 {
                    return bad(format!("node {}: at most 64 labels", n.node));
                }
            }
            HistoryRecord::Task(t) => {
                name(&t.project, "project")?;
                time(t.at)?;
                if t.cpu == 0 || t.memory == 0 {
                    return bad("a task needs cpu and memory".into());
                }
                if t.constraints.len() > 64 || t.attempts.len() > 1000 {
                    return bad("at most 64 constraints and 1,000 attempts".into());
                }
                for c in &t.constraints {
                    crate::Constraint::parse(c).map_err(|e| HistoryError(format!("constraint `{c}`: {e}")))?;
                }
                for a in &t.attempts {
                    name(&a.node, "attempt node")?;
                    time(a.placed)?;
                    a.ended.map(time).transpose()?;
                    if a.placed < t.at - 1000 || a.ended.is_some_and(|e| e < a.placed) {
                        return bad("an attempt placed before its task arrived, or ended before it was placed".into());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let task = HistoryRecord::Task(TaskRecord {
            project: "a".into(),
            at: 1000,
            cpu: 100,
            memory: 64,
            gpus: 0,
            priority: 0,
            constraints: vec!["node.labels.zone==a".into()],
            pool: None,
            profile: None,
            attempts: vec![AttemptRecord { node: "n1".into(), placed: 1500, ended: Some(4500), outcome: Some("succeeded".into()) }],
        });
        let line = serde_json::to_string(&task).unwrap();
        assert_eq!(HistoryRecord::parse(&line).unwrap(), task);
        let HistoryRecord::Task(t) = &task else { unreachable!() };
        assert_eq!((t.wait_ms(), t.service_ms()), (Some(500), Some(3000)));
        for bad in [
            r#"{"kind":"task","project":"","at":0,"cpu":1,"memory":1}"#,
            r#"{"kind":"task","project":"a","at":0,"cpu":0,"memory":1}"#,
            r#"{"kind":"task","project":"a","at":0,"cpu":1,"memory":1,"command":["rm"]}"#,
            r#"{"kind":"task","project":"a","at":0,"cpu":1,"memory":1,"constraints":["nope"]}"#,
            r#"{"kind":"task","project":"a","at":5000,"cpu":1,"memory":1,"attempts":[{"node":"n","placed":100}]}"#,
            r#"{"kind":"header","version":9,"from":0,"to":1}"#,
            r#"{"kind":"node","node":"n","at":0,"state":"ready","cpu":0,"memory":0}"#,
            r#"{"kind":"other"}"#,
            r#"{"kind":"quota","project":"a","max_running":-1}"#,
            r#"{"kind":"pool","pool":"p","min":3,"max":2,"max_creating":1,"cpu":1,"memory":1,"max_tasks":1,"cooldown_seconds":0,"idle_seconds":0,"interval_seconds":1}"#,
            r#"{"kind":"pool","pool":"p","max":2,"max_creating":1,"cpu":1,"memory":1,"max_tasks":1,"cooldown_seconds":0,"idle_seconds":1e300,"interval_seconds":1}"#,
            r#"{"kind":"pool","pool":"p","max":2,"max_creating":1,"cpu":1,"memory":1,"max_tasks":1,"cooldown_seconds":0,"idle_seconds":"NaN","interval_seconds":1}"#,
            r#"{"kind":"machine","machine":"m","pool":"p","asked":100,"gone":50}"#,
            r#"{"kind":"task","project":"a","at":9223372036854775807,"cpu":1,"memory":1}"#,
        ] {
            assert!(HistoryRecord::parse(bad).is_err(), "{bad}");
        }
        assert!(HistoryRecord::parse(&"x".repeat(MAX_LINE + 1)).is_err());
        for good in [
            r#"{"kind":"quota","project":"a","max_running":4}"#,
            r#"{"kind":"pool","pool":"p","max":2,"max_creating":1,"cpu":1,"memory":1,"max_tasks":1,"cooldown_seconds":5,"idle_seconds":60,"interval_seconds":1}"#,
            r#"{"kind":"machine","machine":"m","pool":"p","asked":100,"joined":200,"gone":900}"#,
        ] {
            let record = HistoryRecord::parse(good).unwrap();
            assert_eq!(HistoryRecord::parse(&serde_json::to_string(&record).unwrap()).unwrap(), record);
        }
    }
}

//! The cluster's event stream: what changed, as the store recorded it.
//!
//! Every write that changes a task's state, a node's state or a tenant's
//! things (projects, tokens, secrets, codes, schedules) records events in
//! the same transaction, so a reader that resumes after an event's
//! [`EventCursor`] misses nothing that committed and sees nothing twice.
//! Events carry names, never values (a secret's name, not its value).

use crate::{TaskId, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One change in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A task was created or changed state.
    Task(TaskChange),
    /// A node joined or changed state.
    Node(NodeChange),
    /// A provisioned machine was recorded, changed state or was destroyed.
    Machine(MachineChange),
    /// A project was created or its limits changed.
    Project(TenantChange),
    /// A token was created or revoked.
    Token(TenantChange),
    /// A secret was set or deleted (its name only).
    Secret(TenantChange),
    /// A code was pushed, rolled back or deleted.
    Code(TenantChange),
    /// A schedule was created, paused, resumed or cancelled.
    Schedule(TenantChange),
}

/// The kinds of [`ClusterEvent`], as `?types=` names them.
pub const EVENT_TYPES: [&str; 8] = ["task", "node", "machine", "project", "token", "secret", "code", "schedule"];

impl ClusterEvent {
    /// Its kind: `task`, `node`, `machine`, `project`, `token`, `secret`, `code` or `schedule`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterEvent::Task(_) => "task",
            ClusterEvent::Node(_) => "node",
            ClusterEvent::Machine(_) => "machine",
            ClusterEvent::Project(_) => "project",
            ClusterEvent::Token(_) => "token",
            ClusterEvent::Secret(_) => "secret",
            ClusterEvent::Code(_) => "code",
            ClusterEvent::Schedule(_) => "schedule",
        }
    }

    /// The project it belongs to; `None` for nodes and machines (cluster-wide).
    pub fn project(&self) -> Option<&str> {
        match self {
            ClusterEvent::Task(t) => Some(&t.project),
            ClusterEvent::Node(_) | ClusterEvent::Machine(_) => None,
            ClusterEvent::Project(c)
            | ClusterEvent::Token(c)
            | ClusterEvent::Secret(c)
            | ClusterEvent::Code(c)
            | ClusterEvent::Schedule(c) => Some(&c.project),
        }
    }

    /// The task it is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            ClusterEvent::Task(t) => Some(t.task),
            _ => None,
        }
    }

    /// The event an audit line stands for: tenant actions (`project.*`,
    /// `token.*`, `secret.*`, `code.*`, `schedule.*`) on a project.
    /// Task and node actions have events of their own.
    pub fn from_audit(project: Option<&str>, action: &str, target: &str, at: Timestamp) -> Option<ClusterEvent> {
        let project = project?.to_string();
        let (kind, verb) = action.split_once('.')?;
        let change = TenantChange { project, action: verb.to_string(), name: target.to_string(), at };
        Some(match kind {
            "project" => ClusterEvent::Project(change),
            "token" => ClusterEvent::Token(change),
            "secret" => ClusterEvent::Secret(change),
            "code" => ClusterEvent::Code(change),
            "schedule" => ClusterEvent::Schedule(change),
            _ => return None,
        })
    }
}

/// A task's state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChange {
    pub task: TaskId,
    pub project: String,
    pub state: TaskState,
    /// The state before; absent when the task was just created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TaskState>,
    /// The current attempt number (0 before the first placement).
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// A node's state change (`ready` when it registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    pub node: String,
    pub state: String,
    pub at: Timestamp,
}

/// A provisioned machine's change: its new state (`creating`, `joined`,
/// `draining`, `destroying`, `failed`, or `destroyed` once it is forgotten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineChange {
    pub machine: String,
    pub pool: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub at: Timestamp,
}

impl MachineChange {
    /// The event of a machine as it now is.
    pub fn of(machine: &crate::Machine, at: Timestamp) -> ClusterEvent {
        ClusterEvent::Machine(MachineChange {
            machine: machine.id.clone(),
            pool: machine.pool.clone(),
            state: machine.state.as_str().to_string(),
            node: machine.node_id.clone(),
            at,
        })
    }

    /// The event of a machine forgotten after its destroy.
    pub fn destroyed(machine: &crate::Machine, at: Timestamp) -> ClusterEvent {
        ClusterEvent::Machine(MachineChange {
            machine: machine.id.clone(),
            pool: machine.pool.clone(),
            state: "destroyed".into(),
            node: machine.node_id.clone(),
            at,
        })
    }
}

/// A change to one of a project's things, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantChange {
    pub project: String,
    /// What happened: `create`, `update`, `revoke`, `set`, `delete`, `push`, …
    pub action: String,
    /// What it happened to: the project, a token's id, a secret's name, …
    pub name: String,
    pub at: Timestamp,
}

/// Where an event sits in the stream: totally ordered, and the event id
/// of the Server-Sent Events stream (`Last-Event-ID`). `major` and `minor`
/// name the stored row (SQLite: its row id and 0; PostgreSQL: the writing
/// transaction's id and the row's sequence number), `index` the event in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventCursor {
    pub major: i64,
    pub minor: i64,
    pub index: u32,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.major, self.minor, self.index)
    }
}

/// A malformed event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id (MAJOR-MINOR-INDEX): {0:?}")]
pub struct BadCursor(pub String);

impl FromStr for EventCursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCursor(text.chars().take(64).collect());
        let mut parts = text.trim().splitn(3, '-');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let index = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if major < 0 || minor < 0 {
            return Err(bad());
        }
        Ok(EventCursor { major, minor, index })
    }
}

/// An event with its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub cursor: EventCursor,
    pub event: ClusterEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_parse_and_order() {
        let a = EventCursor { major: 7, minor: 0, index: 2 };
        assert_eq!(a.to_string().parse::<EventCursor>(), Ok(a));
        assert!(EventCursor { major: 7, minor: 0, index: 3 } > a);
        assert!(EventCursor { major: 8, minor: 0, index: 0 } > a);
        assert!(EventCursor { major: 7, minor: 1, index: 0 } > a);
        for bad in ["", "7", "7-0", "a-b-c", "-1-0-0", "7-0-x", "1-2-3-4"] {
            assert!(bad.parse::<EventCursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_lines_of_tenant_actions_become_events() {
        let at = Timestamp(1);
        let e = ClusterEvent::from_audit(Some("acme"), "secret.set", "db", at).expect("an event");
        assert_eq!(e.kind(), "secret");
        assert_eq!(e.project(), Some("acme"));
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["type"], "secret");
        assert_eq!(json["name"], "db");
        assert_eq!(json["action"], "set");
        assert!(ClusterEvent::from_audit(Some("acme"), "task.create", "x", at).is_none());
        assert!(ClusterEvent::from_audit(None, "node.drain", "n", at).is_none());
    }
}

//! Workflows: arrays of tasks that share one spec, and dependencies
//! between tasks and arrays.
//!
//! A task (or an array) that `depends_on` others is `waiting` until each
//! dependency has ended the way its `on` asks; one that ends in a way that
//! can never satisfy it cancels its dependents (`dependency_failed: ID`),
//! transitively. The store does the bookkeeping in the transaction that
//! ends a task; the rules are here.

use crate::TaskState;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most children one array may have.
pub const MAX_ARRAY_SIZE: u32 = 100_000;

/// The most dependencies one task or array may name.
pub const MAX_DEPENDENCIES: usize = 100;

/// Run N copies of the task: `"array": {"size": N}`. Each child gets
/// `SHEPHERD_ARRAY_INDEX` (0 to N-1) and `SHEPHERD_ARRAY_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArraySpec {
    /// How many children (1 to 100,000).
    pub size: u32,
    /// At most this many children queued or running at once (the rest
    /// wait, lowest index first). Absent: no cap beyond the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// What a failed child does to the rest (default `finish_all`).
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

/// What a failed child does to its array.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Every child runs; the array fails at the end if any child failed,
    /// and lists the failed indices.
    #[default]
    FinishAll,
    /// The first failed child ends the array: children not yet on a node
    /// are cancelled (`array_failed: INDEX`), running ones are stopped.
    FailFast,
}

/// What a dependency must do before its dependent may start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependOn {
    /// End `succeeded` (an array: every child succeeded).
    #[default]
    Succeeded,
    /// End in any way (an array: every child ended).
    Finished,
    /// Between two arrays of the same size: child i waits for child i to
    /// succeed (AWS Batch's N_TO_N).
    Each,
}

impl DependOn {
    /// The stable name in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DependOn::Succeeded => "succeeded",
            DependOn::Finished => "finished",
            DependOn::Each => "each",
        }
    }

    /// Parses [`DependOn::as_str`]'s names.
    pub fn parse(name: &str) -> Option<DependOn> {
        [DependOn::Succeeded, DependOn::Finished, DependOn::Each].into_iter().find(|d| d.as_str() == name)
    }

    /// Whether a dependency that ended in `end` lets its dependent go
    /// (`true`) or never can (`false`). `end` is terminal.
    pub fn satisfied_by(self, end: TaskState) -> bool {
        match self {
            DependOn::Succeeded | DependOn::Each => end == TaskState::Succeeded,
            DependOn::Finished => end.is_terminal(),
        }
    }
}

/// What a dependency names: a task or an array by id, or (in a batch) an
/// earlier entry of the same batch by its position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DependencyTarget {
    /// A task's or an array's id.
    Id(String),
    /// The batch entry at this position (0 for the first).
    Position(u32),
}

impl fmt::Display for DependencyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DependencyTarget::Id(id) => f.write_str(id),
            DependencyTarget::Position(p) => write!(f, "#{p}"),
        }
    }
}

impl Serialize for DependencyTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DependencyTarget::Id(id) => serializer.serialize_str(id),
            DependencyTarget::Position(p) => serializer.serialize_u32(*p),
        }
    }
}

impl<'de> Deserialize<'de> for DependencyTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Target;
        impl serde::de::Visitor<'_> for Target {
            type Value = DependencyTarget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task or array id, or the position of an earlier task in the batch")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DependencyTarget, E> {
                Ok(DependencyTarget::Id(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DependencyTarget, E> {
                u32::try_from(v).map(DependencyTarget::Position).map_err(|_| E::custom("position out of range"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DependencyTarget, E> {
                u32::try_from(v).map(DependencyTarget::Position).map_err(|_| E::custom("a position is 0 or more"))
            }
        }
        deserializer.deserialize_any(Target)
    }
}

/// One dependency: `{"task": ID or position, "on": "succeeded"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// A task's or an array's id, or, in a batch, the position of an
    /// earlier entry (0 for the first).
    #[schema(value_type = String)]
    pub task: DependencyTarget,
    /// What it must do first (default `succeeded`).
    #[serde(default)]
    pub on: DependOn,
}

/// Where a child of an array stands in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayMember {
    /// The array's id.
    pub id: String,
    /// The child's index (`SHEPHERD_ARRAY_INDEX`).
    pub index: u32,
    /// The array's size (`SHEPHERD_ARRAY_SIZE`).
    pub size: u32,
}

/// An array as the API shows it: `GET /v1/arrays/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArrayStatus {
    pub id: String,
    pub project: String,
    /// `waiting` (for its dependencies), `running` (children may run),
    /// or how it ended: `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// `SHEPHERD_ARRAY_SIZE`.
    pub size: u32,
    /// How many children it has (the size, or the indices a retry took).
    pub children: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    pub failure_policy: FailurePolicy,
    /// Children per state (every state, zeros included).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Indices of the children that failed or timed out (at most 1000).
    pub failed_indices: Vec<u32>,
    /// Why it waits or how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// The array whose failed children this one runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// The children's spec (`array` included).
    pub image: String,
    pub command: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: crate::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<crate::Timestamp>,
}

/// How an array ended, from its children's ends: `Succeeded` when all
/// succeeded, `Cancelled` when it was cancelled (by a user or a failed
/// dependency) and no child failed, else `Failed`.
pub fn array_end(children: u64, succeeded: u64, failed: u64, cancelled_by_request: bool) -> TaskState {
    if succeeded == children {
        TaskState::Succeeded
    } else if failed == 0 && cancelled_by_request {
        TaskState::Cancelled
    } else {
        TaskState::Failed
    }
}

/// The environment a child of an array gets besides its spec's.
pub fn child_env(index: u32, size: u32) -> [(String, String); 2] {
    [("SHEPHERD_ARRAY_INDEX".to_string(), index.to_string()), ("SHEPHERD_ARRAY_SIZE".to_string(), size.to_string())]
}

/// The reason a dependent ends with when `dependency` can never satisfy it.
pub fn dependency_failed(dependency: &str) -> String {
    format!("dependency_failed: {dependency}")
}

/// Checks that positional dependencies of a batch point only at earlier
/// entries (so a batch holds no cycle and no self-dependency): the error
/// names the field (`tasks[3].depends_on[0].task`).
pub fn check_positions(deps: &[&[Dependency]]) -> Result<(), crate::FieldError> {
    for (index, list) in deps.iter().enumerate() {
        for (i, dep) in list.iter().enumerate() {
            if let DependencyTarget::Position(p) = dep.task {
                let field = format!("tasks[{index}].depends_on[{i}].task");
                if p as usize == index {
                    return Err(crate::FieldError::new(field, "a task cannot depend on itself"));
                }
                if p as usize > index {
                    return Err(crate::FieldError::new(
                        field,
                        format!("position {p} is not an earlier task of the batch (a dependency comes first, so no cycle can form)"),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_by_every_end() {
        for end in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(DependOn::Succeeded.satisfied_by(end), end == TaskState::Succeeded);
            assert!(DependOn::Finished.satisfied_by(end));
        }
    }

    #[test]
    fn targets_decode_from_ids_and_positions() {
        let d: Dependency = crate::decode_json(br#"{"task": 2, "on": "finished"}"#).unwrap();
        assert_eq!((d.task, d.on), (DependencyTarget::Position(2), DependOn::Finished));
        let d: Dependency = crate::decode_json(br#"{"task": "01JDQ4V6Z5M7T8X9Y0A1B2C3D4"}"#).unwrap();
        assert_eq!(d.on, DependOn::Succeeded);
        assert!(crate::decode_json::<Dependency>(br#"{"task": -1}"#).is_err());
        assert!(crate::decode_json::<Dependency>(br#"{"task": 1.5}"#).is_err());
        assert!(crate::decode_json::<Dependency>(br#"{"task": "x", "on": "sometimes"}"#).is_err());
    }

    #[test]
    fn positions_point_backwards_only() {
        let dep = |p| vec![Dependency { task: DependencyTarget::Position(p), on: DependOn::Succeeded }];
        let (a, b, c) = (vec![], dep(0), dep(1));
        assert!(check_positions(&[&a, &b, &c]).is_ok());
        let own = dep(1);
        assert_eq!(check_positions(&[&a, &own]).unwrap_err().field, "tasks[1].depends_on[0].task");
        let ahead = dep(2);
        assert!(check_positions(&[&ahead, &a, &a]).is_err());
    }

    #[test]
    fn array_ends() {
        assert_eq!(array_end(3, 3, 0, false), TaskState::Succeeded);
        assert_eq!(array_end(3, 2, 1, false), TaskState::Failed);
        assert_eq!(array_end(3, 1, 0, true), TaskState::Cancelled);
        assert_eq!(array_end(3, 1, 1, true), TaskState::Failed);
    }
}

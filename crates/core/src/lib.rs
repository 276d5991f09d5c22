//! # shepherd-core
//!
//! The vocabulary every other Shepherd crate speaks: what a task is
//! ([`TaskSpec`], [`Task`], [`Attempt`]), the one lifecycle state machine
//! that decides every transition ([`lifecycle`]), the validation that turns a
//! user's request into a spec or a field-level error ([`validate`]), and
//! placement constraints ([`constraint`]).
//!
//! Invariant: this crate does no I/O, has no async code and reads no clock.
//! Times are passed in by the caller, so every function here is
//! deterministic and unit-testable.

pub mod code;
mod code_ref;
pub mod constraint;
pub mod decode;
pub mod events;
pub mod history;
pub mod launch;
pub mod lifecycle;
pub mod machine;
pub mod node;
pub mod reference;
pub mod registry;
pub mod schedule;
pub mod shape;
pub mod state;
mod strict;
pub mod task;
pub mod tenant;
pub mod time;
pub mod validate;
pub mod volume;
pub mod volume_options;
pub mod workflow;

pub use code::{Code, CodeRef, CodeSpec, PackageRef};
pub use constraint::{Constraint, ConstraintError, Operator};
pub use decode::{decode_json, DecodeError};
pub use events::{ClusterEvent, EventCursor, StoredEvent};
pub use launch::{LaunchSpec, LogChunk, LogStream, ResolvedNetwork};
pub use lifecycle::{change, change_with, decide_with, Change, ClosedAttempt, Decision, Event, IllegalTransition, LifecycleContext};
pub use machine::{IllegalMachineChange, Machine, MachineShape, MachineState};
pub use node::{IllegalNodeEvent, NodeEvent, NodeState};
pub use registry::{RegistryAuth, RegistryLogin};
pub use schedule::{CatchUp, Overlap, Schedule, ScheduleSpec, ScheduleState};
pub use state::TaskState;
pub use task::{
    AntiAffinitySpec, Attempt, AttemptOutcome, AttemptRuntime, FailureReason, NewTask, Progress, PullPolicy, QueuePosition, Resources,
    RetryAction, RetryPolicy, RetryRule, ReusePolicy, ScratchSpec, Task, TaskId, TaskSpec, Usage,
};
pub use tenant::{
    engine_network_name, is_env_name, is_project_name, is_secret_name, is_short_name, Egress, NetworkSpec, ProjectLimits, ProjectPolicy,
    SecretRef, MAX_RETENTION_SECONDS,
};
pub use time::Timestamp;
pub use validate::{validate, FieldError, Limits};
pub use volume::{ResolvedMount, Volume, VolumeMount, VolumeScope, VolumeSpec};
pub use workflow::{ArrayMember, ArraySpec, ArrayStatus, DependOn, Dependency, DependencyTarget, FailurePolicy};

//! The task model: what a user submits ([`TaskSpec`]), what Shepherd stores
//! ([`NewTask`]) and what it reports back ([`Task`], [`Attempt`]).

use crate::{TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A task's id: a ULID, so ids sort by creation time and are unique without
/// coordination between servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub ulid::Ulid);

impl TaskId {
    /// A fresh id, ordered after every id made earlier by this process.
    pub fn generate(generator: &mut ulid::Generator, now: Timestamp) -> TaskId {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.millis().max(0) as u64);
        match generator.generate_from_datetime(time) {
            Ok(id) => TaskId(id),
            // The random part overflowed within one millisecond: take a fresh one.
            Err(_) => TaskId(ulid::Ulid::from_datetime(time)),
        }
    }
}

impl TaskId {
    /// The first id of a block of up to 2^32 ids that follow it
    /// ([`TaskId::offset`]): made at `now` with a random part that leaves
    /// room above it, so that an array's children have ids that need no
    /// storing (the first and a position). Two blocks of the same
    /// millisecond meet only if 79 random bits land within a block's
    /// length of each other.
    pub fn block(now: Timestamp) -> TaskId {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.millis().max(0) as u64);
        let id = ulid::Ulid::from_datetime(time).0;
        // Bit 79 clear: the random part has 2^79 of room above it.
        TaskId(ulid::Ulid(id & !(1u128 << 79)))
    }

    /// The id `k` places after this one (the `k`-th of a [`TaskId::block`]).
    pub fn offset(self, k: u32) -> TaskId {
        TaskId(ulid::Ulid(self.0 .0 + u128::from(k)))
    }

    /// How many places after `first` this id is, if it is within `count` of it.
    pub fn position_after(self, first: TaskId, count: u32) -> Option<u32> {
        let k = self.0 .0.checked_sub(first.0 .0)?;
        u32::try_from(k).ok().filter(|k| *k < count)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(TaskId)
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// CPU and memory a task reserves on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Thousandths of a CPU core (1000 = one core).
    #[serde(default = "Resources::default_cpu")]
    pub cpu_millicores: u32,
    /// Memory in MiB.
    #[serde(default = "Resources::default_memory")]
    pub memory_mib: u32,
}

impl Resources {
    fn default_cpu() -> u32 {
        100
    }
    fn default_memory() -> u32 {
        128
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu_millicores: Self::default_cpu(), memory_mib: Self::default_memory() }
    }
}

/// How often a failed or lost task is tried again, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    #[serde(default = "RetryPolicy::default_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles for each later one, capped at an hour.
    #[serde(default = "RetryPolicy::default_backoff")]
    pub backoff_seconds: u32,
    /// Rules by outcome, the first that matches decides (at most 16): an
    /// exit code that ends the task at once, an infrastructure failure
    /// retried without spending an attempt. None matching: retried while
    /// attempts remain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryRule>,
}

/// One rule of a [`RetryPolicy`]: which failed attempts it is about (exit
/// codes, or a reason), and what happens to the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRule {
    /// Attempts that exited with one of these codes (1 to 64 codes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i32>,
    /// Or attempts that failed for this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    pub action: RetryAction,
}

/// Why an attempt failed, as a [`RetryRule`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Its node or agent went away.
    Lost,
    /// It could not start (a bad command, a missing image).
    StartFailed,
    /// Its image could not be pulled in time.
    ImagePullFailed,
    /// The kernel killed it for its memory limit.
    OomKilled,
}

/// What a matching [`RetryRule`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryAction {
    /// Retried while attempts remain (as with no rule).
    Retry,
    /// Retried without spending an attempt (at most 100 such retries).
    RetryFree,
    /// Ends the task `failed` now, attempts left or not.
    Fail,
}

impl RetryRule {
    /// Whether an attempt that failed this way is this rule's.
    pub fn matches(&self, exit_code: Option<i32>, reason: Option<FailureReason>) -> bool {
        exit_code.is_some_and(|c| self.exit_codes.contains(&c)) || (reason.is_some() && self.reason == reason)
    }

    /// Says the rule as `inspect` shows it: `exit 3, 4 ends the task`.
    pub fn describe(&self) -> String {
        let what = match (&self.exit_codes[..], self.reason) {
            ([], Some(reason)) => serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            (codes, _) => format!("exit {}", codes.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")),
        };
        let does = match self.action {
            RetryAction::Retry => "is retried",
            RetryAction::RetryFree => "is retried without spending an attempt",
            RetryAction::Fail => "ends the task",
        };
        format!("{what} {does}")
    }
}

/// The most free retries (`retry_free`) one task gets.
pub const MAX_FREE_RETRIES: u32 = 100;

impl RetryPolicy {
    fn default_attempts() -> u32 {
        1
    }
    fn default_backoff() -> u32 {
        5
    }

    /// The wait before attempt number `next_attempt` (2 for the first retry).
    pub fn backoff_before(&self, next_attempt: u32) -> std::time::Duration {
        let doublings = next_attempt.saturating_sub(2).min(20);
        let seconds = u64::from(self.backoff_seconds).saturating_mul(1 << doublings).min(3600);
        std::time::Duration::from_secs(seconds)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: Self::default_attempts(), backoff_seconds: Self::default_backoff(), on: Vec::new() }
    }
}

/// "At most `max_per_node` tasks with this task's value of label `label` on
/// one node" (e.g. replicas of one service kept apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AntiAffinitySpec {
    /// A label key the task itself carries.
    pub label: String,
    pub max_per_node: u32,
}

/// A private writable directory for one attempt, removed with it: a tmpfs
/// of `size_mib` at `target` (its pages count toward the task's memory, so
/// the size is at most `resources.memory_mib`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScratchSpec {
    /// An absolute path in the container (not `/`, `/tmp`, nor under
    /// `/proc`, `/sys`, `/dev`, `/run/secrets`, `/run/shepherd` or `/task`).
    pub target: String,
    /// Its size in MiB (1 to the task's `memory_mib`).
    pub size_mib: u32,
}

/// Run the task in a warm container that earlier tasks of the same project
/// and key (image, user, workdir, network, limits, pull policy) ran in, and
/// keep it for later ones: no container is created or removed per task.
/// Between tasks the container is reset (every process killed, `/tmp`,
/// secrets and payload wiped); one that fails to reset is discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReusePolicy {
    /// How long the container waits idle for the next task before it is
    /// removed (1 to 3600).
    #[serde(default = "ReusePolicy::default_idle")]
    pub idle_seconds: u32,
    /// How many tasks one container runs before it is replaced (1 to 100000).
    #[serde(default = "ReusePolicy::default_max_tasks")]
    pub max_tasks: u32,
}

impl ReusePolicy {
    fn default_idle() -> u32 {
        60
    }
    fn default_max_tasks() -> u32 {
        1000
    }
}

impl Default for ReusePolicy {
    fn default() -> Self {
        ReusePolicy { idle_seconds: Self::default_idle(), max_tasks: Self::default_max_tasks() }
    }
}

/// When the agent pulls the task's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Use the image the engine holds; fail at once if it holds none.
    Never,
    /// Pull only when the engine does not hold the image.
    #[default]
    IfNotPresent,
    /// Pull before every attempt.
    Always,
}

/// A task as a user submits it: the body of `POST /v1/tasks`.
///
/// Unknown fields are rejected so that a typo never silently drops a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The container image. With the `process` driver it is only recorded.
    /// May be left out when the task names a `code`.
    #[serde(default)]
    pub image: String,
    /// The command and its arguments (argv). Empty: the image's default.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables for the task.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Opaque input, base64-encoded, at most 1 MiB decoded. The task finds it
    /// in the file named by `$SHEPHERD_PAYLOAD_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// CPU and memory reserved for the task.
    #[serde(default)]
    pub resources: Resources,
    /// Seconds the task may run before it is stopped (default 3600, at most 604800).
    #[serde(default = "TaskSpec::default_timeout")]
    pub timeout_seconds: u32,
    /// Higher runs first; equal priorities run in submission order.
    #[serde(default)]
    pub priority: i32,
    /// Retry policy for failed or lost attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Free-form labels, filterable with `GET /v1/tasks?label=key=value`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Placement constraints, e.g. `node.labels.region==eu`.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// The project (tenant) the task belongs to.
    ///
    /// Left out (or empty): the project of the caller's token; with the
    /// admin token, `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// Working directory inside the container (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User (name or uid[:gid]) the command runs as inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `none` (the default: no network at all, only loopback) or `bridge`:
    /// the project's own bridge network (`shepherd-net-PROJECT`), shared with
    /// the project's other tasks and with nothing of any other project.
    #[serde(default = "TaskSpec::default_network")]
    pub network: String,
    /// When to pull the image (docker driver).
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// The placement profile (default: the project's, else the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The node pool the task must run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Keep tasks sharing a label value apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<AntiAffinitySpec>,
    /// Project secrets the task receives (values never appear in the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretRef>,
    /// Run in a warm, reused container (see [`ReusePolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<ReusePolicy>,
    /// A private writable scratch directory for each attempt (a tmpfs),
    /// gone when the attempt ends. Such tasks run cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<ScratchSpec>,
    /// Volumes of the task's project it mounts (`shepherd volume create`);
    /// never a host path. Such tasks run cold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::VolumeMount>,
    /// Named networks of the task's project it joins (set by the admin:
    /// `shepherd project network`), besides `network`. Such tasks run cold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// GPUs the task needs (nodes offer them with `--gpus`; counted like
    /// CPU and memory, within the project's `max_gpus`). Such tasks run cold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    /// Devices the task needs, by the names nodes give them (`--device
    /// /dev/fuse` is `fuse`), among those its project's policy allows.
    /// Such tasks run cold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Seconds the image's pull may take (default 600, at most 3600): a
    /// deadline of its own, before the run's `timeout_seconds` starts. A
    /// pull that fails or runs out of time fails the attempt with
    /// `image_pull_failed` (retried per `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_timeout_seconds: Option<u32>,
    /// Stay queued this many seconds after submission before the first
    /// attempt (at most a year). Not with `start_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u32>,
    /// Stay queued until this time (RFC 3339, UTC, at most a year ahead; a
    /// past time runs at once). Not with `delay_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<Timestamp>,
    /// Make the task from this code (see `POST /v1/codes`): every field the
    /// task leaves out comes from the code; `env` and `labels` are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The code's revision to use (default: its latest). Set by the server
    /// to the revision the task was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_revision: Option<u32>,
    /// A code package (a zip uploaded to the project, by its SHA-256)
    /// unpacked read-only at `/task` (`$SHEPHERD_TASK_DIR`). Set from a
    /// code that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<crate::code_ref::PackageRef>,
    /// When the task ends, Shepherd POSTs its JSON here (http or https),
    /// signed with the project's webhook secret; retried with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Run this spec as an array of `size` children (see [`crate::ArraySpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<crate::ArraySpec>,
    /// Tasks or arrays that must end first (at most 100); until they do,
    /// the task is `waiting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<crate::Dependency>,
}

impl TaskSpec {
    /// The default timeout: one hour.
    pub fn default_timeout() -> u32 {
        3600
    }
    /// The project a task lands in when it names none.
    pub fn default_project() -> String {
        "default".to_string()
    }
    /// No network unless the task asks for one.
    pub fn default_network() -> String {
        "none".to_string()
    }

    /// A minimal spec: the image and command, every other field defaulted.
    pub fn new(image: impl Into<String>, command: Vec<String>) -> TaskSpec {
        TaskSpec {
            image: image.into(),
            command,
            env: BTreeMap::new(),
            payload: None,
            resources: Resources::default(),
            timeout_seconds: Self::default_timeout(),
            priority: 0,
            retry: RetryPolicy::default(),
            labels: BTreeMap::new(),
            constraints: Vec::new(),
            project: String::new(),
            workdir: None,
            user: None,
            network: Self::default_network(),
            pull_policy: PullPolicy::default(),
            profile: None,
            pool: None,
            anti_affinity: None,
            secrets: Vec::new(),
            reuse: None,
            scratch: None,
            volumes: Vec::new(),
            networks: Vec::new(),
            gpus: 0,
            devices: Vec::new(),
            pull_timeout_seconds: None,
            delay_seconds: None,
            start_at: None,
            code: None,
            code_revision: None,
            package: None,
            webhook: None,
            array: None,
            depends_on: Vec::new(),
        }
    }
}

/// A validated task ready to be stored: the spec with its payload decoded,
/// stripped from the spec, and given an id and a creation time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub created_at: Timestamp,
    /// The spec, with `payload` set to `None`: the bytes live in `payload`.
    pub spec: TaskSpec,
    pub payload: Option<Vec<u8>>,
}

impl NewTask {
    /// When the first attempt may be placed: its `start_at` or its
    /// `delay_seconds` after submission, never before submission.
    pub fn not_before(&self) -> Timestamp {
        self.spec.first_start(self.created_at)
    }
}

impl TaskSpec {
    /// When a task submitted at `created_at` may first be placed.
    pub fn first_start(&self, created_at: Timestamp) -> Timestamp {
        let delayed = self.delay_seconds.map(|d| created_at.plus(std::time::Duration::from_secs(u64::from(d))));
        self.start_at.or(delayed).map_or(created_at, |at| at.max(created_at))
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// Exited non-zero.
    Failed,
    /// Could not be started (bad command, missing image).
    StartFailed,
    TimedOut,
    Cancelled,
    /// Its node or agent went away while it was scheduled or running.
    Lost,
    /// Stopped by a clean agent shutdown; does not count against retries.
    Interrupted,
}

impl AttemptOutcome {
    /// The stable snake_case name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::StartFailed => "start_failed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }

    /// Parses [`AttemptOutcome::as_str`]'s names.
    pub fn parse(name: &str) -> Option<AttemptOutcome> {
        [
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed,
            AttemptOutcome::StartFailed,
            AttemptOutcome::TimedOut,
            AttemptOutcome::Cancelled,
            AttemptOutcome::Lost,
            AttemptOutcome::Interrupted,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }
}

/// One try at running a task on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub node_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub scheduled_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// `None` while the attempt is in progress.
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// Where it ran, as its agent reported at the start: the container, and
    /// whether it was a warm one that ran other tasks before (`reuse`).
    /// Absent for drivers without containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<AttemptRuntime>,
    /// What it used, once it ended, if its node measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The size of what it wrote to `$SHEPHERD_RESULT_FILE`, if it wrote
    /// one (`GET /v1/tasks/{id}/result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
}

/// What an attempt used, as its node measured it: the process driver and a
/// warm container's runner from the kernel's record of the exited process
/// tree, the docker driver from the engine's stats (sampled each second
/// once a container has run a second: shorter runs report none, and the
/// last second may be missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// CPU time, user and system, in milliseconds.
    pub cpu_ms: u64,
    /// The most memory it held at once, in bytes.
    pub peak_memory_bytes: u64,
}

/// Where an attempt runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRuntime {
    /// The container's name on the node's engine.
    pub container: String,
    /// Whether the attempt ran in a reused (warm) container rather than one
    /// created for it.
    pub warm: bool,
    /// The image it ran, exactly: its registry digest (`NAME@sha256:…`)
    /// when the image came from a registry, else the engine's image id
    /// (`sha256:…`); absent where the driver does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// A task's own report of how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// At most 1000 bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Progress {
    /// A checked report: 0 to 100 percent (rounded), a message of at most
    /// 1000 bytes; the error names the field (`percent`, `message`).
    pub fn new(percent: f64, message: String) -> Result<Progress, crate::FieldError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(crate::FieldError::new("percent", "must be between 0 and 100"));
        }
        if message.len() > 1000 {
            return Err(crate::FieldError::new("message", "at most 1000 bytes"));
        }
        Ok(Progress { percent: percent.round() as u8, message })
    }
}

/// A task as Shepherd reports it: `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    #[schema(value_type = String, example = "01JDQ4V6Z5M7T8X9Y0A1B2C3D4")]
    pub id: TaskId,
    pub state: TaskState,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Size of the payload in bytes (the bytes themselves are only given to the task).
    pub payload_bytes: u64,
    pub resources: Resources,
    pub timeout_seconds: u32,
    pub priority: i32,
    pub retry: RetryPolicy,
    pub labels: BTreeMap<String, String>,
    pub constraints: Vec<String>,
    pub project: String,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub network: String,
    pub pull_policy: PullPolicy,
    pub profile: Option<String>,
    pub pool: Option<String>,
    pub anti_affinity: Option<AntiAffinitySpec>,
    /// The secrets the task receives, by name (values are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretRef>,
    /// Runs in a warm, reused container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<ReusePolicy>,
    /// Its private scratch directory, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<ScratchSpec>,
    /// The project's volumes it mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::VolumeMount>,
    /// The project's named networks it joins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// GPUs it needs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    /// Devices it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// When its first attempt may start, if it was submitted with a delay
    /// (`delay_seconds` or `start_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<Timestamp>,
    /// The code (and its revision) the task was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::code_ref::CodeRef>,
    /// What the task last said of its progress (`POST /v1/tasks/{id}/progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Where its end is posted (see `GET /v1/tasks/{id}/webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// The array it is a child of, and its index there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<crate::ArrayMember>,
    /// What it waits for (by id), its own or its array's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<crate::Dependency>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// The node of the current or last attempt.
    pub node_id: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the task failed, or why it waits.
    pub reason: Option<String>,
    /// Set once a user asked to cancel a task that was already on a node.
    pub cancel_requested: bool,
    /// A queued task whose attempt failed: when the next attempt may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retry_at: Option<Timestamp>,
    /// A queued task's place in line and when it may start (`GET` of one task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePosition>,
    pub attempts: Vec<Attempt>,
}

/// Where a queued task stands: its place in its project's queue and in
/// the cluster's (1: next), and when it may start going by recent
/// placements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueuePosition {
    /// 1 + the project's queued tasks placed before it (higher priority,
    /// then older).
    pub in_project: u64,
    /// 1 + every project's queued tasks placed before it (fair share across
    /// projects may let it pass some of them). For the admin only: a
    /// project learns nothing of other projects' queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<u64>,
    /// When it may start, if there is a basis for a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub estimated_start: Option<Timestamp>,
    /// How the estimate was made, or why there is none: e.g. `from 12.5
    /// placements/s in project acme over the last minute`, `unknown: no
    /// placements in the last minute`, `unknown: it waits for a quota`.
    pub estimate: String,
}

impl Task {
    /// A queued task with no attempts, from its stored spec (payload stripped).
    pub fn from_spec(id: TaskId, spec: TaskSpec, payload_bytes: u64, created_at: Timestamp) -> Task {
        let start_at = Some(spec.first_start(created_at)).filter(|at| *at > created_at);
        Task {
            id,
            state: TaskState::Queued,
            image: spec.image,
            command: spec.command,
            env: spec.env,
            payload_bytes,
            resources: spec.resources,
            timeout_seconds: spec.timeout_seconds,
            priority: spec.priority,
            retry: spec.retry,
            labels: spec.labels,
            constraints: spec.constraints,
            project: spec.project,
            workdir: spec.workdir,
            user: spec.user,
            network: spec.network,
            pull_policy: spec.pull_policy,
            profile: spec.profile,
            pool: spec.pool,
            anti_affinity: spec.anti_affinity,
            secrets: spec.secrets,
            start_at,
            reuse: spec.reuse,
            scratch: spec.scratch,
            volumes: spec.volumes,
            networks: spec.networks,
            gpus: spec.gpus,
            devices: spec.devices,
            code: spec.code.map(|name| crate::code_ref::CodeRef { name, revision: spec.code_revision.unwrap_or(0) }),
            progress: None,
            webhook: spec.webhook,
            array: None,
            depends_on: spec.depends_on,
            created_at,
            scheduled_at: None,
            started_at: None,
            finished_at: None,
            node_id: None,
            exit_code: None,
            reason: None,
            cancel_requested: false,
            retry_at: None,
            queue: None,
            attempts: Vec::new(),
        }
    }

    /// The task as it stands right after it was stored: queued, no attempts.
    pub fn from_new(new: &NewTask) -> Task {
        Task::from_spec(new.id, new.spec.clone(), new.payload.as_ref().map_or(0, |p| p.len() as u64), new.created_at)
    }
}

/// For `skip_serializing_if`: a count left at zero is left out.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod progress_tests {
    use super::Progress;

    #[test]
    fn progress_is_bounded() {
        assert_eq!(Progress::new(49.6, "x".into()).unwrap(), Progress { percent: 50, message: "x".into() });
        assert!(Progress::new(101.0, String::new()).is_err());
        assert!(Progress::new(5.0, "m".repeat(1001)).is_err());
    }
}

#[cfg(test)]
mod block_tests {
    use super::{TaskId, Timestamp};

    #[test]
    fn a_block_of_ids_sorts_by_position_and_keeps_its_time() {
        let now = Timestamp::now();
        let first = TaskId::block(now);
        let last = first.offset(u32::MAX);
        assert!(first < first.offset(1) && first.offset(1) < last);
        assert_eq!(last.0.timestamp_ms(), first.0.timestamp_ms());
        assert_eq!(first.offset(99_999).position_after(first, 100_000), Some(99_999));
        assert_eq!(first.offset(100_000).position_after(first, 100_000), None);
        assert_eq!(first.position_after(first.offset(1), 10), None);
        // Its text parses back to the same id.
        let text = first.offset(7).to_string();
        assert_eq!(text.parse::<TaskId>().unwrap(), first.offset(7));
    }
}

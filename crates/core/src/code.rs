//! Codes: named, versioned task templates (IronWorker's "code packages",
//! Nomad's parameterized jobs). A code holds what its tasks share (image,
//! command, env, resources, timeout, retries, placement defaults) and a
//! limit on how many of its tasks run at once. Each push is a new
//! revision; a task names the code (and, optionally, a revision) and gives
//! only what differs.
//!
//! A task is made from a code by laying the task's request over the code's
//! template field by field ([`lay_over`]): a field the request sets wins, a
//! field it leaves out comes from the code, and `env` and `labels` are
//! merged key by key. Working on the request's JSON object (rather than on
//! a decoded [`TaskSpec`]) is what tells "left out" from "set to the
//! default": `"timeout_seconds": 3600` overrides a code's 600.

pub use crate::code_ref::{is_code_name, CodeRef, PackageRef, CONFIG_ENV};
use crate::task::{PullPolicy, Resources, RetryPolicy, ReusePolicy};
use crate::{FieldError, TaskSpec, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The label every task made from a code carries: the code's name.
pub const CODE_LABEL: &str = "shepherd.code";

/// The most tasks of one code that may be limited to run at once.
pub const MAX_CONCURRENCY: u32 = 100_000;

/// A code as pushed: the body of `POST /v1/codes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSpec {
    /// The code's name: 1 to 128 of letters, digits, `_`, `-`, `.`,
    /// starting with a letter or digit. Unique within its project.
    pub name: String,
    /// The project it belongs to (left out: the token's; with the admin
    /// token, `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// The image its tasks run. With a `package`, left out: the image the
    /// admin maps its runtime to (`--stack`).
    #[serde(default)]
    pub image: String,
    /// The command and its arguments (empty: the image's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment for every task (a task's own variables win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Labels for every task (a task's own win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Default resources of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Default timeout of its tasks, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Default retry policy of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Default priority of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// At most this many of its tasks are scheduled or running at once,
    /// across the cluster; the rest wait queued, saying so. Left out: no
    /// limit beyond the project's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Default placement profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Default node pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Default network (`none` or `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Default user inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Default working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Default pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Run its tasks in warm, reused containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<ReusePolicy>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The zip package its tasks run (uploaded with `POST /v1/packages`,
    /// `shepherd code push --zip`, or the IronWorker API); `image` then
    /// defaults to the runtime's stack and `command` to running the
    /// package's executable as IronWorker did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageRef>,
    /// Where its tasks' ends are posted (a task's own wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// One revision of a code, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Code {
    /// 1 for the first push; each push adds one. Never reused, not even
    /// after the code is deleted and pushed again.
    pub revision: u32,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The revision this one copies, if it was made by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u32>,
    #[serde(flatten)]
    pub spec: CodeSpec,
}

impl CodeSpec {
    /// The task fields this code gives its tasks, as a JSON object.
    pub fn template(&self) -> Map<String, Value> {
        let mut template = Map::new();
        let mut put = |key: &str, value: Value| {
            template.insert(key.to_string(), value);
        };
        put("image", Value::String(self.image.clone()));
        if !self.command.is_empty() {
            put("command", serde_json::json!(self.command));
        }
        if !self.env.is_empty() {
            put("env", serde_json::json!(self.env));
        }
        if !self.labels.is_empty() {
            put("labels", serde_json::json!(self.labels));
        }
        let optional: [(&str, Option<Value>); 10] = [
            ("resources", self.resources.map(|r| serde_json::json!(r))),
            ("timeout_seconds", self.timeout_seconds.map(Value::from)),
            ("retry", self.retry.as_ref().map(|r| serde_json::json!(r))),
            ("priority", self.priority.map(Value::from)),
            ("profile", self.profile.clone().map(Value::String)),
            ("pool", self.pool.clone().map(Value::String)),
            ("network", self.network.clone().map(Value::String)),
            ("user", self.user.clone().map(Value::String)),
            ("workdir", self.workdir.clone().map(Value::String)),
            ("pull_policy", self.pull_policy.map(|p| serde_json::json!(p))),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                put(key, value);
            }
        }
        if let Some(reuse) = self.reuse {
            put("reuse", serde_json::json!(reuse));
        }
        if let Some(package) = &self.package {
            put("package", serde_json::json!(package));
        }
        if let Some(webhook) = &self.webhook {
            put("webhook", Value::String(webhook.clone()));
        }
        template
    }

    /// Checks what a code may hold: its name, its limit, and that a task
    /// made from it alone is a valid task.
    pub fn validate(&self, limits: &crate::Limits) -> Result<(), FieldError> {
        if !is_code_name(&self.name) {
            return Err(FieldError::new(
                "name",
                format!("`{}` is not a code name (1 to 128 of letters, digits, _ - ., starting with a letter or digit)", self.name),
            ));
        }
        if let Some(max) = self.max_concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&max) {
                return Err(FieldError::new("max_concurrency", format!("must be between 1 and {MAX_CONCURRENCY}")));
            }
        }
        if let Some(package) = &self.package {
            if !PackageRef::is_digest(&package.digest) {
                return Err(FieldError::new("package.digest", "must be a SHA-256 in lowercase hex"));
            }
            let bad = package.executable.is_empty()
                || package.executable.starts_with('/')
                || package.executable.split('/').any(|part| part == "..")
                || package.executable.contains('\0');
            if bad {
                return Err(FieldError::new("package.executable", "must be a relative path inside the package"));
            }
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 4096) {
            return Err(FieldError::new("description", "at most 4096 bytes"));
        }
        // A task of this code with nothing of its own must be valid; its
        // errors name the code's fields, which are the task's names.
        let mut template = self.template();
        template.insert("project".into(), Value::String(self.project.clone()));
        let bytes = serde_json::to_vec(&Value::Object(template)).map_err(|e| FieldError::new("body", e.to_string()))?;
        let spec: TaskSpec = crate::decode_json(&bytes).map_err(|e| FieldError::new(e.field, e.message))?;
        let id = crate::TaskId(ulid::Ulid::nil());
        crate::validate(spec, limits, id, Timestamp(0)).map(|_| ())
    }
}

/// A task request laid over a code's template: the request's fields win,
/// `env` and `labels` are merged key by key, and `code_revision` says
/// which revision the task was made from.
pub fn lay_over(code: &Code, request: &Map<String, Value>) -> Map<String, Value> {
    let mut task = code.spec.template();
    for (key, value) in request {
        match (key.as_str(), task.get_mut(key), value) {
            ("env" | "labels", Some(Value::Object(base)), Value::Object(own)) => {
                base.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {
                task.insert(key.clone(), value.clone());
            }
        }
    }
    task.insert("code".into(), Value::String(code.spec.name.clone()));
    task.insert("code_revision".into(), Value::from(code.revision));
    match task.get_mut("labels") {
        Some(Value::Object(labels)) => {
            labels.insert(CODE_LABEL.into(), Value::String(code.spec.name.clone()));
        }
        _ => {
            task.insert("labels".into(), serde_json::json!({ CODE_LABEL: code.spec.name }));
        }
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code() -> Code {
        let spec: CodeSpec = serde_json::from_value(json!({
            "name": "resize", "image": "busybox", "command": ["sh", "-c", "echo hi"],
            "env": {"A": "code", "B": "code"}, "labels": {"team": "media"},
            "timeout_seconds": 600, "max_concurrency": 2, "retry": {"max_attempts": 3}
        }))
        .unwrap();
        Code { revision: 4, created_at: Timestamp(0), rolled_back_from: None, spec }
    }

    #[test]
    fn a_request_overrides_what_it_sets_and_merges_env_and_labels() {
        let request = json!({"code": "resize", "env": {"B": "task", "C": "task"}, "timeout_seconds": 3600, "labels": {"run": "1"}});
        let task = lay_over(&code(), request.as_object().unwrap());
        let spec: TaskSpec = serde_json::from_value(Value::Object(task)).unwrap();
        assert_eq!(spec.image, "busybox");
        assert_eq!(spec.command, ["sh", "-c", "echo hi"]);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("code"));
        assert_eq!(spec.env.get("B").map(String::as_str), Some("task"));
        assert_eq!(spec.env.get("C").map(String::as_str), Some("task"));
        assert_eq!(spec.labels.len(), 3);
        assert_eq!(spec.labels.get(CODE_LABEL).map(String::as_str), Some("resize"));
        // Set to the default explicitly: still the request's.
        assert_eq!(spec.timeout_seconds, 3600);
        assert_eq!(spec.retry.max_attempts, 3);
        assert_eq!((spec.code.as_deref(), spec.code_revision), (Some("resize"), Some(4)));
    }

    #[test]
    fn a_request_that_sets_nothing_gets_the_code() {
        let task = lay_over(&code(), json!({"code": "resize"}).as_object().unwrap());
        let spec: TaskSpec = serde_json::from_value(Value::Object(task)).unwrap();
        assert_eq!(spec.timeout_seconds, 600);
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn a_package_runs_as_ironworker_ran_workers() {
        let package = PackageRef { digest: "a".repeat(64), size: 1, runtime: "python".into(), executable: "it's.py".into() };
        let command = package.command();
        assert_eq!(&command[..2], ["sh", "-c"]);
        let script = &command[2];
        assert!(
            script.contains("exec python3 \"$TASK_DIR\"/'it'\\''s.py' -payload \"$PAYLOAD_FILE\" -id \"$TASK_ID\" -d \"$TASK_DIR\""),
            "{script}"
        );
        assert!(script.contains("${IRON_CONFIG_JSON+x}") && script.contains("-config"), "{script}");
        let binary = PackageRef { runtime: "binary".into(), executable: "run".into(), ..package };
        assert!(binary.command()[2].contains("exec \"$TASK_DIR\"/'run' -payload"));
    }

    #[test]
    fn codes_are_validated_naming_the_field() {
        let limits = crate::Limits::default();
        code().spec.validate(&limits).unwrap();
        let mut bad = code().spec;
        bad.name = "no spaces".into();
        assert_eq!(bad.validate(&limits).unwrap_err().field, "name");
        let mut bad = code().spec;
        bad.max_concurrency = Some(0);
        assert_eq!(bad.validate(&limits).unwrap_err().field, "max_concurrency");
        let mut bad = code().spec;
        bad.image = "UPPER".into();
        assert_eq!(bad.validate(&limits).unwrap_err().field, "image");
        let mut bad = code().spec;
        bad.timeout_seconds = Some(0);
        assert_eq!(bad.validate(&limits).unwrap_err().field, "timeout_seconds");
        assert!(is_code_name("hello_worker.v2") && !is_code_name("-x") && !is_code_name("a/b"));
    }
}

//! Turns a user's [`TaskSpec`] into a [`NewTask`], or a [`FieldError`] that
//! names the offending field and says what would be accepted.

use crate::{Constraint, NewTask, TaskId, TaskSpec, Timestamp};
use base64::Engine;

/// The bounds a spec must stay within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_timeout_seconds: u32,
    pub max_cpu_millicores: u32,
    pub max_memory_mib: u32,
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_timeout_seconds: 7 * 24 * 3600,
            max_cpu_millicores: 256_000,
            max_memory_mib: 4 * 1024 * 1024,
            max_batch: 10_000,
        }
    }
}

/// A field of a request that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field in the request body, e.g. `tasks[3].resources.cpu_millicores`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }

    /// The same error under a prefix, for specs nested in a batch.
    pub fn within(self, prefix: &str) -> FieldError {
        if prefix.is_empty() {
            self
        } else {
            FieldError { field: format!("{prefix}.{}", self.field), ..self }
        }
    }
}

fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, message()))
    }
}

/// Whether `key` is a label key (also a pool name): 1-63 of letters,
/// digits, `.`, `_`, `-`, `/`.
pub fn is_label_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 63 && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The smallest CPU request: the engine's CFS quota floor is 1 ms per
/// 100 ms period, 1% of a core.
pub const MIN_CPU_MILLICORES: u32 = 10;

/// The longest constraint string (it is echoed in reasons).
pub const MAX_CONSTRAINT_BYTES: usize = 256;

/// The longest a task may wait for its first start (`delay_seconds`, `start_at`): a year.
pub const MAX_DELAY_SECONDS: u32 = 365 * 86_400;

/// Checks a webhook URL and returns it as it will be called: parsed as
/// the HTTP client parses it (the WHATWG URL standard, the `url` crate that
/// reqwest uses), so that what is stored, shown and checked before a
/// delivery is exactly where the delivery goes: `http://0x7f.1/` is stored
/// as `http://127.0.0.1/`, full-width digits and ideographic full stops
/// become ASCII, a trailing dot goes. http or https (any case), a host, at
/// most 2048 bytes, no user or password (they would show in every view of
/// the task), no fragment.
pub fn normalize_webhook(text: &str) -> Result<String, FieldError> {
    let refuse = |why: &str| FieldError::new("webhook", format!("`{text}`: {why}"));
    if text.len() > 2048 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("not an http:// or https:// URL (at most 2048 bytes, no spaces)"));
    }
    let mut url = url::Url::parse(text).map_err(|e| refuse(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("not an http:// or https:// URL"));
    }
    if url.host().is_none() {
        return Err(refuse("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("a user or password in the URL is not allowed (the receiver checks the signature instead)"));
    }
    url.set_fragment(None);
    if let Some(url::Host::Domain(domain)) = url.host() {
        // `example.com.` and `example.com` are one host.
        if let Some(bare) = domain.strip_suffix('.').filter(|d| !d.is_empty()) {
            let bare = bare.to_string();
            url.set_host(Some(&bare)).map_err(|e| refuse(&format!("not a URL ({e})")))?;
        }
    }
    let normalized = url.to_string();
    if normalized.len() > 2048 {
        return Err(refuse("longer than 2048 bytes once normalized"));
    }
    Ok(normalized)
}

/// Checks a webhook URL (see [`normalize_webhook`]).
pub fn check_webhook(url: &str) -> Result<(), FieldError> {
    normalize_webhook(url).map(|_| ())
}

/// Checks a spec and prepares it for storage.
pub fn validate(mut spec: TaskSpec, limits: &Limits, id: TaskId, now: Timestamp) -> Result<NewTask, FieldError> {
    check(!spec.image.is_empty(), "image", || "required (or name a `code` that gives one)".into())?;
    crate::reference::check_image_reference(&spec.image).map_err(|why| FieldError::new("image", why))?;
    if let Some(code) = &spec.code {
        check(crate::code_ref::is_code_name(code), "code", || format!("`{code}` is not a code name"))?;
    }
    if let Some(url) = &spec.webhook {
        spec.webhook = Some(normalize_webhook(url)?);
    }
    if let Some(package) = &spec.package {
        check(crate::code_ref::PackageRef::is_digest(&package.digest), "package.digest", || "must be a SHA-256 in lowercase hex".into())?;
    }
    check(spec.command.len() <= 1024, "command", || "at most 1024 arguments".into())?;
    for (index, arg) in spec.command.iter().enumerate() {
        check(!arg.contains('\0'), &format!("command[{index}]"), || "must not contain a NUL character".into())?;
    }
    let command_bytes: usize = spec.command.iter().map(String::len).sum();
    check(command_bytes <= 256 * 1024, "command", || "at most 256 KiB in all".into())?;
    check(spec.env.len() <= 256, "env", || "at most 256 variables".into())?;
    for (name, value) in &spec.env {
        check(is_env_name(name), "env", || {
            format!("`{name}` is not a valid variable name (letters, digits, _; not starting with a digit)")
        })?;
        check(!name.starts_with("SHEPHERD_"), "env", || format!("`{name}`: the SHEPHERD_ prefix is reserved"))?;
        check(value.len() <= 64 * 1024, "env", || format!("`{name}`: value over 64 KiB"))?;
        check(!value.contains('\0'), "env", || format!("`{name}`: the value must not contain a NUL character"))?;
    }
    let payload = match spec.payload.take() {
        None => None,
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| FieldError::new("payload", format!("must be base64: {e}")))?;
            check(bytes.len() <= limits.max_payload_bytes, "payload", || {
                format!("{} bytes is over the limit of {} bytes", bytes.len(), limits.max_payload_bytes)
            })?;
            Some(bytes)
        }
    };
    let r = spec.resources;
    check((MIN_CPU_MILLICORES..=limits.max_cpu_millicores).contains(&r.cpu_millicores), "resources.cpu_millicores", || {
        format!(
            "must be between {MIN_CPU_MILLICORES} and {} (below {MIN_CPU_MILLICORES}, 1% of a core, the engine cannot enforce a CPU share)",
            limits.max_cpu_millicores
        )
    })?;
    check((4..=limits.max_memory_mib).contains(&r.memory_mib), "resources.memory_mib", || {
        format!("must be between 4 and {}", limits.max_memory_mib)
    })?;
    check((1..=limits.max_timeout_seconds).contains(&spec.timeout_seconds), "timeout_seconds", || {
        format!("must be between 1 and {}", limits.max_timeout_seconds)
    })?;
    check((-1000..=1000).contains(&spec.priority), "priority", || "must be between -1000 and 1000".into())?;
    check((1..=100).contains(&spec.retry.max_attempts), "retry.max_attempts", || "must be between 1 and 100".into())?;
    check(spec.retry.backoff_seconds <= 3600, "retry.backoff_seconds", || "at most 3600".into())?;
    check(spec.retry.on.len() <= 16, "retry.on", || "at most 16 rules".into())?;
    for (i, rule) in spec.retry.on.iter().enumerate() {
        check(rule.exit_codes.is_empty() != rule.reason.is_none(), &format!("retry.on[{i}]"), || {
            "give exit_codes or a reason, not both".into()
        })?;
        check(rule.exit_codes.len() <= 64, &format!("retry.on[{i}].exit_codes"), || "at most 64 codes".into())?;
        check(!rule.exit_codes.contains(&0), &format!("retry.on[{i}].exit_codes"), || "0 is success, never retried".into())?;
    }
    check(spec.labels.len() <= 64, "labels", || "at most 64 labels".into())?;
    for (key, value) in &spec.labels {
        check(is_label_key(key), "labels", || format!("`{key}` is not a valid key (1-63 of letters, digits, . _ - /)"))?;
        check(value.len() <= 255, "labels", || format!("`{key}`: value over 255 characters"))?;
    }
    if let Some(array) = &spec.array {
        let max = crate::workflow::MAX_ARRAY_SIZE;
        check((1..=max).contains(&array.size), "array.size", || format!("must be between 1 and {max}"))?;
        check(array.parallelism.is_none_or(|p| (1..=array.size).contains(&p)), "array.parallelism", || {
            format!("must be between 1 and the array's size ({})", array.size)
        })?;
        check(spec.webhook.is_none(), "webhook", || "an array's children post no webhooks (watch the array's events instead)".into())?;
    }
    check(spec.depends_on.len() <= crate::workflow::MAX_DEPENDENCIES, "depends_on", || {
        format!("at most {} dependencies", crate::workflow::MAX_DEPENDENCIES)
    })?;
    for (i, dep) in spec.depends_on.iter().enumerate() {
        if let crate::DependencyTarget::Id(id) = &dep.task {
            check(id.parse::<TaskId>().is_ok(), &format!("depends_on[{i}].task"), || format!("`{id}` is not a task or array id"))?;
        }
        check(dep.on != crate::DependOn::Each || spec.array.is_some(), &format!("depends_on[{i}].on"), || {
            "`each` pairs the children of two arrays: only an array may depend on `each`".into()
        })?;
        check(!spec.depends_on[..i].iter().any(|d| d.task == dep.task), &format!("depends_on[{i}].task"), || {
            format!("`{}` is named twice", dep.task)
        })?;
    }
    check(spec.constraints.len() <= 32, "constraints", || "at most 32 constraints".into())?;
    for (index, text) in spec.constraints.iter().enumerate() {
        check(text.len() <= MAX_CONSTRAINT_BYTES, &format!("constraints[{index}]"), || {
            format!("is {} bytes long; at most {MAX_CONSTRAINT_BYTES}", text.len())
        })?;
        Constraint::parse(text).map_err(|e| FieldError::new(format!("constraints[{index}]"), e.to_string()))?;
    }
    if spec.project.is_empty() {
        // Not given, and no token's project to put it in: the default project.
        spec.project = TaskSpec::default_project();
    }
    check(crate::is_project_name(&spec.project), "project", || "1-63 of lower-case letters, digits, - and _".into())?;
    check(spec.secrets.len() <= 32, "secrets", || "at most 32 secrets".into())?;
    for (index, secret) in spec.secrets.iter().enumerate() {
        check(crate::is_secret_name(&secret.name), &format!("secrets[{index}].name"), || {
            "1-64 of letters, digits, . _ - (not starting with .)".into()
        })?;
        check(!crate::tenant::is_reserved_secret_name(&secret.name), &format!("secrets[{index}].name"), || {
            format!("`{}` is a registry login: the node pulls with it, a task never receives it", secret.name)
        })?;
        check(!spec.secrets[..index].iter().any(|s| s.name == secret.name), &format!("secrets[{index}].name"), || {
            format!("secret `{}` is listed twice", secret.name)
        })?;
        if let Some(env) = &secret.env {
            check(crate::is_env_name(env), &format!("secrets[{index}].env"), || "an environment variable name".into())?;
        }
    }
    if let Some(workdir) = &spec.workdir {
        check(workdir.starts_with('/') && workdir.len() <= 1024 && !workdir.contains('\0'), "workdir", || {
            "must be an absolute path".into()
        })?;
    }
    if let Some(user) = &spec.user {
        let ok =
            !user.is_empty() && user.len() <= 64 && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'));
        check(ok, "user", || "a user name or uid, optionally :group or :gid".into())?;
    }
    if let Some(profile) = &spec.profile {
        check(is_label_key(profile), "profile", || "a profile name (letters, digits, . _ - /)".into())?;
    }
    if let Some(pool) = &spec.pool {
        check(is_label_key(pool), "pool", || "a pool name (letters, digits, . _ - /)".into())?;
    }
    if let Some(rule) = &spec.anti_affinity {
        check(spec.labels.contains_key(&rule.label), "anti_affinity.label", || {
            format!("the task has no label `{}` to keep apart by", rule.label)
        })?;
        check(rule.max_per_node >= 1, "anti_affinity.max_per_node", || "at least 1".into())?;
    }
    check(spec.delay_seconds.is_none() || spec.start_at.is_none(), "start_at", || "give delay_seconds or start_at, not both".into())?;
    check(spec.delay_seconds.is_none_or(|d| d <= MAX_DELAY_SECONDS), "delay_seconds", || format!("at most {MAX_DELAY_SECONDS} (a year)"))?;
    check(spec.start_at.is_none_or(|at| at.millis() <= now.millis() + i64::from(MAX_DELAY_SECONDS) * 1000), "start_at", || {
        "at most a year ahead".into()
    })?;
    if let Some(scratch) = &spec.scratch {
        check_scratch(scratch, spec.resources.memory_mib)?;
    }
    crate::volume::check_mounts(&spec.volumes, spec.scratch.as_ref().map(|s| s.target.as_str()))?;
    check(spec.networks.len() <= 8, "networks", || "at most 8 networks".into())?;
    check(spec.gpus <= 64, "gpus", || "at most 64".into())?;
    check(spec.pull_timeout_seconds.is_none_or(|t| (1..=3600).contains(&t)), "pull_timeout_seconds", || "between 1 and 3600".into())?;
    check(spec.devices.len() <= 16, "devices", || "at most 16 devices".into())?;
    for (i, name) in spec.devices.iter().enumerate() {
        check(crate::is_short_name(name), &format!("devices[{i}]"), || format!("`{name}` is not a device name (e.g. fuse)"))?;
        check(!spec.devices[..i].contains(name), &format!("devices[{i}]"), || format!("`{name}` is named twice"))?;
    }
    for (i, name) in spec.networks.iter().enumerate() {
        check(crate::is_short_name(name), &format!("networks[{i}]"), || format!("`{name}` is not a network name"))?;
        check(!spec.networks[..i].contains(name), &format!("networks[{i}]"), || format!("`{name}` is named twice"))?;
    }
    if let Some(reuse) = &spec.reuse {
        check((1..=3600).contains(&reuse.idle_seconds), "reuse.idle_seconds", || "must be between 1 and 3600".into())?;
        check((1..=100_000).contains(&reuse.max_tasks), "reuse.max_tasks", || "must be between 1 and 100000".into())?;
    }
    check(matches!(spec.network.as_str(), "none" | "bridge"), "network", || {
        format!("`{}`: use none (the default) or bridge", spec.network)
    })?;
    Ok(NewTask { id, created_at: now, spec, payload })
}

fn check_scratch(scratch: &crate::ScratchSpec, memory_mib: u32) -> Result<(), FieldError> {
    crate::volume::check_target(&scratch.target, "scratch.target")?;
    check((1..=memory_mib).contains(&scratch.size_mib), "scratch.size_mib", || {
        format!("must be between 1 and the task's memory_mib ({memory_mib}): scratch space is memory (a tmpfs)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: TaskSpec) -> Result<NewTask, FieldError> {
        validate(spec, &Limits::default(), TaskId(ulid::Ulid::nil()), Timestamp(0))
    }

    fn field_of(spec: TaskSpec) -> String {
        ok(spec).expect_err("should be rejected").field
    }

    fn base() -> TaskSpec {
        TaskSpec::new("busybox", vec!["true".into()])
    }

    #[test]
    fn a_minimal_spec_is_accepted_with_defaults() {
        let task = ok(base()).unwrap();
        assert_eq!(task.spec.timeout_seconds, 3600);
        assert_eq!(task.spec.project, "default");
        assert!(task.payload.is_none());
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(TaskSpec { image: " ".into(), ..base() }), "image");
        let mut s = base();
        s.resources.cpu_millicores = 0;
        assert_eq!(field_of(s), "resources.cpu_millicores");
        let mut s = base();
        s.resources.memory_mib = u32::MAX;
        assert_eq!(field_of(s), "resources.memory_mib");
        assert_eq!(field_of(TaskSpec { timeout_seconds: 0, ..base() }), "timeout_seconds");
        assert_eq!(field_of(TaskSpec { priority: 5000, ..base() }), "priority");
        assert_eq!(field_of(TaskSpec { project: "Bad Name".into(), ..base() }), "project");
        assert_eq!(field_of(TaskSpec { constraints: vec!["x".into()], ..base() }), "constraints[0]");
        assert_eq!(field_of(TaskSpec { payload: Some("!!".into()), ..base() }), "payload");
        let mut s = base();
        s.env.insert("1BAD".into(), "x".into());
        assert_eq!(field_of(s), "env");
        let mut s = base();
        s.labels.insert("".into(), "x".into());
        assert_eq!(field_of(s), "labels");
        let mut s = base();
        s.retry.max_attempts = 0;
        assert_eq!(field_of(s), "retry.max_attempts");
        assert_eq!(field_of(TaskSpec { workdir: Some("relative".into()), ..base() }), "workdir");
        assert_eq!(field_of(TaskSpec { user: Some("a b".into()), ..base() }), "user");
        assert_eq!(field_of(TaskSpec { network: "host".into(), ..base() }), "network");
        let scratch = |target: &str, size_mib| Some(crate::ScratchSpec { target: target.into(), size_mib });
        for bad in ["work", "/", "/tmp", "/proc/x", "/dev", "/run/secrets", "/task/a", "/a/../b", "/a//b", "/a/", "/a,b", "/a:b"] {
            assert_eq!(field_of(TaskSpec { scratch: scratch(bad, 16), ..base() }), "scratch.target", "{bad}");
        }
        assert_eq!(field_of(TaskSpec { scratch: scratch("/work", 0), ..base() }), "scratch.size_mib");
        let memory = base().resources.memory_mib;
        assert_eq!(field_of(TaskSpec { scratch: scratch("/work", memory + 1), ..base() }), "scratch.size_mib");
        assert!(ok(TaskSpec { scratch: scratch("/work/data", memory), ..base() }).is_ok());
        let reuse = |idle_seconds, max_tasks| Some(crate::ReusePolicy { idle_seconds, max_tasks });
        assert_eq!(field_of(TaskSpec { reuse: reuse(0, 10), ..base() }), "reuse.idle_seconds");
        assert_eq!(field_of(TaskSpec { reuse: reuse(60, 0), ..base() }), "reuse.max_tasks");
        assert_eq!(field_of(TaskSpec { delay_seconds: Some(MAX_DELAY_SECONDS + 1), ..base() }), "delay_seconds");
        let far = Some(Timestamp(Timestamp::now().millis() + 400 * 86_400_000));
        assert_eq!(field_of(TaskSpec { start_at: far, ..base() }), "start_at");
        assert_eq!(field_of(TaskSpec { delay_seconds: Some(1), start_at: Some(Timestamp(0)), ..base() }), "start_at");
    }

    #[test]
    fn issue_10_inputs_are_refused_at_submission() {
        let mut s = base();
        s.resources.cpu_millicores = 5;
        let e = ok(s).unwrap_err();
        assert_eq!(e.field, "resources.cpu_millicores");
        assert!(e.message.contains("between 10 and"), "{}", e.message);
        let mut s = base();
        s.resources.cpu_millicores = 10;
        assert!(ok(s).is_ok());
        for image in ["busybox:", "BUSYBOX", "a@sha256:zz", "../../etc", "-rm", "büsybox", "busy\0box"] {
            assert_eq!(field_of(TaskSpec { image: image.into(), ..base() }), "image", "{image:?}");
        }
        assert_eq!(field_of(TaskSpec { command: vec!["a".into(), "b\0c".into()], ..base() }), "command[1]");
        let mut s = base();
        s.env.insert("X".into(), "a\0b".into());
        assert_eq!(field_of(s), "env");
        let long = format!("node.labels.x=={}", "y".repeat(300));
        assert_eq!(field_of(TaskSpec { constraints: vec![long], ..base() }), "constraints[0]");
        assert_eq!(ok(TaskSpec { project: String::new(), ..base() }).unwrap().spec.project, "default");
    }

    #[test]
    fn payload_is_decoded_and_bounded() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let task = ok(TaskSpec { payload: Some(b64.encode(b"hello")), ..base() }).unwrap();
        assert_eq!(task.payload.as_deref(), Some(&b"hello"[..]));
        assert!(task.spec.payload.is_none());
        let big = vec![0u8; 1024 * 1024 + 1];
        let err = ok(TaskSpec { payload: Some(b64.encode(&big)), ..base() }).unwrap_err();
        assert_eq!(err.field, "payload");
        assert!(ok(TaskSpec { payload: Some(b64.encode(&big[1..])), ..base() }).is_ok());
    }

    #[test]
    fn within_prefixes_batch_fields() {
        assert_eq!(FieldError::new("image", "x").within("tasks[3]").field, "tasks[3].image");
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::normalize_webhook;

    #[test]
    fn webhooks_are_stored_as_the_client_will_call_them() {
        let port = 8080;
        // Every spelling of loopback an attacker tried is one address once parsed.
        for spelling in [
            format!("http://2130706433:{port}/x"),
            format!("http://0x7f000001:{port}/x"),
            format!("http://127.1:{port}/x"),
            format!("http://0x7f.1:{port}/x"),
            format!("http://127.0.0.1.:{port}/x"),
            format!("http://0177.0.0.1:{port}/x"),
            format!("http://127.000.000.001:{port}/x"),
            format!("http://%31%32%37.0.0.1:{port}/x"),
            format!("http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}:{port}/x"),
            format!("http://127\u{3002}0\u{3002}0\u{3002}1:{port}/x"),
            format!("HTTP://127.0.0.1:{port}/x"),
        ] {
            assert_eq!(normalize_webhook(&spelling).unwrap(), format!("http://127.0.0.1:{port}/x"), "{spelling}");
        }
        assert_eq!(normalize_webhook("http://0:80/").unwrap(), "http://0.0.0.0/");
        // A backslash is a slash to the parser: the host is what comes before it.
        assert_eq!(
            normalize_webhook(&format!("http://127.0.0.1:{port}\\@example.com/")).unwrap(),
            format!("http://127.0.0.1:{port}/@example.com/")
        );
        assert_eq!(normalize_webhook("https://Hooks.Example.COM./a?b=1#frag").unwrap(), "https://hooks.example.com/a?b=1");
        for bad in ["ftp://example.com/", "http://", "https://user:pw@example.com/", "https://user@example.com/", "not a url", "mailto:x@y"]
        {
            assert_eq!(normalize_webhook(bad).unwrap_err().field, "webhook", "{bad}");
        }
        assert!(normalize_webhook(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
    }
}

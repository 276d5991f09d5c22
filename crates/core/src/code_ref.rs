//! The small part of codes that tasks and validation name: which code a
//! task was made from ([`CodeRef`]), a code's zip package ([`PackageRef`])
//! and what a code's name may be ([`is_code_name`]). It imports nothing
//! else of the crate, so `task` and `validate` can use it while `code`
//! (which lays tasks over codes and validates them) uses both.

use serde::{Deserialize, Serialize};

/// A zip package of a code: stored by its SHA-256 per project, unpacked
/// read-only at `/task` for the code's tasks, whose command runs
/// `executable` the way IronWorker ran workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// SHA-256 of the zip, in lowercase hex.
    pub digest: String,
    /// The zip's size in bytes.
    pub size: u64,
    /// The runtime it was uploaded for (`sh`, `python`, `binary`, …): which
    /// image (the server's `--stack`) and interpreter run it.
    pub runtime: String,
    /// The file in the package that is run, relative to its root.
    pub executable: String,
}

impl PackageRef {
    /// Whether `digest` is a SHA-256 in lowercase hex.
    pub fn is_digest(digest: &str) -> bool {
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The interpreter of a runtime (none: the executable runs itself).
    pub fn interpreter(runtime: &str) -> Option<&'static str> {
        match runtime {
            "binary" | "exec" => None,
            "bash" => Some("bash"),
            "python" | "python3" => Some("python3"),
            "python2" => Some("python"),
            "ruby" => Some("ruby"),
            "node" | "nodejs" => Some("node"),
            "php" => Some("php"),
            "java" => Some("java -jar"),
            _ => Some("sh"),
        }
    }

    /// The command that runs the package as IronWorker ran workers:
    /// `INTERPRETER EXECUTABLE -payload FILE -id TASK_ID -d DIR` (and
    /// `-config FILE` when the code sets [`CONFIG_ENV`]), with IronWorker's
    /// `TASK_ID`, `TASK_DIR`, `PAYLOAD_FILE` and `CONFIG_FILE` in the
    /// environment, through `sh -c` so the paths come from the task's own.
    pub fn command(&self) -> Vec<String> {
        let quoted = self.executable.replace('\'', "'\\''");
        let run = match Self::interpreter(&self.runtime) {
            Some(interpreter) => format!("{interpreter} \"$TASK_DIR\"/'{quoted}'"),
            None => format!("\"$TASK_DIR\"/'{quoted}'"),
        };
        let script = format!(
            "export TASK_ID=\"$SHEPHERD_TASK_ID\" TASK_DIR=\"$SHEPHERD_TASK_DIR\" PAYLOAD_FILE=\"${{SHEPHERD_PAYLOAD_FILE:-/dev/null}}\"; \
             if [ -n \"${{{CONFIG_ENV}+x}}\" ]; then \
             CONFIG_FILE=$(umask 077; mktemp \"${{TMPDIR:-/tmp}}/iron-config.XXXXXX\") || exit 1; \
             printf '%s' \"${CONFIG_ENV}\" > \"$CONFIG_FILE\" || exit 1; export CONFIG_FILE; set -- -config \"$CONFIG_FILE\" \"$@\"; fi; \
             cd \"$TASK_DIR\" && exec {run} -payload \"$PAYLOAD_FILE\" -id \"$TASK_ID\" -d \"$TASK_DIR\" \"$@\""
        );
        vec!["sh".into(), "-c".into(), script, "worker".into()]
    }
}

/// The environment variable that holds a package code's IronWorker
/// `config` (JSON); its worker gets it as the file at `-config`.
pub const CONFIG_ENV: &str = "IRON_CONFIG_JSON";

/// Which code (and revision) a task was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeRef {
    /// The code's name.
    pub name: String,
    /// The code's revision the task was made from.
    pub revision: u32,
}

/// Whether `name` may name a code.
pub fn is_code_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

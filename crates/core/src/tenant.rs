//! Tenants: project names, a project's quotas, and the secrets a task asks
//! for. Pure data and validation; the server enforces, the store keeps.

use serde::{Deserialize, Serialize};

/// Whether `name` is a valid project name: 1-63 of lower-case letters,
/// digits, `-` and `_`, starting with a letter or digit. Project names end
/// up in Docker network names, so they are kept this narrow.
pub fn is_project_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `name` is a valid secret name: 1-64 of letters, digits, `.`, `_`
/// and `-`, not starting with a dot (it becomes a file name).
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `name` is a valid environment variable name.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A project's quotas; `None` (absent) is unlimited. A zero quota holds
/// everything it counts: `max_queued: 0` refuses new tasks, `max_running`,
/// `max_cpu_millicores` or `max_memory_mib` of 0 keep every task queued (a
/// paused project). `requests_per_second` must be at least 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimits {
    /// Most tasks waiting in the queue; a create beyond it is refused (429). 0: no new tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Most tasks scheduled or running at once; the rest wait in the queue. 0: all wait (paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most CPU held by the project's scheduled and running tasks. 0: all wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_millicores: Option<u64>,
    /// Most memory held by the project's scheduled and running tasks. 0: all wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Requests per second each of the project's tokens may make (bursts
    /// up to twice as many); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
}

impl ProjectLimits {
    /// Refuses limits that have no meaning, naming the field.
    pub fn validate(&self) -> Result<(), crate::FieldError> {
        if self.requests_per_second == Some(0) {
            return Err(crate::FieldError::new(
                "limits.requests_per_second",
                "must be at least 1 (0 would refuse every request; leave it out for no limit)",
            ));
        }
        Ok(())
    }
}

/// A project secret a task receives: always as a read-only file named
/// after the secret (`/run/secrets/NAME` in a container,
/// `$SHEPHERD_SECRETS_DIR/NAME` otherwise), and as an environment variable
/// too when `env` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name in the task's project.
    pub name: String,
    /// Also expose the value as this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_project_name("acme-prod_2"));
        assert!(!is_project_name("Acme"));
        assert!(!is_project_name(""));
        assert!(!is_project_name("-x"));
        assert!(is_secret_name("db.password"));
        assert!(!is_secret_name("../etc"));
        assert!(!is_secret_name(".hidden"));
        assert!(!is_secret_name("a/b"));
        assert!(is_env_name("DB_PASSWORD"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
    }
}

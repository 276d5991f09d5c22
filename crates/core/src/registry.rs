//! Registry credentials: a project's login to an image registry, kept as a
//! project secret (`registry.HOST`, with `_` for the port's `:`) and handed
//! to the agent with the launch spec of that project's tasks whose image
//! comes from that registry. Never returned by the API, never in a `Debug`.

use serde::{Deserialize, Serialize};

/// The registry an image reference pulls from: its first part when that is
/// a host (holds a `.` or a `:`, or is `localhost`), else Docker Hub
/// (`docker.io`), as the engine decides.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// Whether `registry` is a registry host as logins name it: `host[:port]`.
pub fn is_registry_host(registry: &str) -> bool {
    let (host, port) = registry.split_once(':').unwrap_or((registry, ""));
    !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && (port.is_empty() || (port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit())))
        && !registry.ends_with(':')
}

/// The name of the project secret holding a login to `registry`.
pub fn secret_name(registry: &str) -> String {
    format!("registry.{}", registry.replace(':', "_"))
}

/// The registry a secret named by [`secret_name`] is a login to, if it is one.
pub fn registry_of_secret(name: &str) -> Option<String> {
    let host = name.strip_prefix("registry.")?;
    Some(match host.rsplit_once('_') {
        Some((host, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => format!("{host}:{port}"),
        _ => host.to_string(),
    })
}

/// A login to a registry (the secret's value, as JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth").field("registry", &self.registry).field("username", &self.username).finish_non_exhaustive()
    }
}

/// `PUT /v1/projects/{project}/registries/{registry}` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    pub username: String,
    /// Never returned, never logged.
    pub password: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_found_as_the_engine_finds_them() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/tools/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/acme/app@sha256:abc"), "ghcr.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert!(is_registry_host("127.0.0.1:5000") && is_registry_host("ghcr.io") && is_registry_host("localhost"));
        assert!(!is_registry_host("a/b") && !is_registry_host("host:") && !is_registry_host("") && !is_registry_host("h:port"));
        for registry in ["127.0.0.1:5000", "ghcr.io", "my-registry.example.com:443"] {
            let name = secret_name(registry);
            assert!(crate::is_secret_name(&name), "{name}");
            assert_eq!(registry_of_secret(&name).as_deref(), Some(registry));
        }
        assert_eq!(registry_of_secret("db"), None);
        let auth = RegistryAuth { registry: "r".into(), username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}

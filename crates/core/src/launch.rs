//! What a node needs to run one attempt of a task ([`LaunchSpec`]) and the
//! output it sends back ([`LogChunk`]). Shared by the store (which keeps
//! them), the server and the agent; their wire forms live in
//! `shepherd-proto`.

use crate::{TaskId, TaskSpec, TaskState, Timestamp};

use std::collections::BTreeMap;

/// Everything a driver needs to start an attempt. Its `Debug` leaves out
/// the payload and the secrets' values.
#[derive(Clone)]
pub struct LaunchSpec {
    pub id: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    pub node_id: Option<String>,
    pub cancel_requested: bool,
    pub spec: TaskSpec,
    pub payload: Option<Vec<u8>>,
    /// When the current attempt started, if it has.
    pub attempt_started_at: Option<Timestamp>,
    /// The values of the secrets the spec asks for, by secret name. A
    /// secret deleted since the task was created is missing here.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The task's volume mounts, resolved ([`resolve_mounts`]); a volume
    /// removed since the task was made is missing here.
    pub volumes: Vec<crate::ResolvedMount>,
    /// The networks it joins beyond its default one ([`resolve_networks`]).
    pub networks: Vec<ResolvedNetwork>,
    /// The project's login to the registry its image comes from, if it
    /// has one (its `Debug` leaves the password out).
    pub registry_auth: Option<crate::RegistryAuth>,
    /// The results of the task's dependencies that left one, by the
    /// dependency's id (at most 64 KiB each): files under `$SHEPHERD_INPUTS_DIR`.
    pub inputs: BTreeMap<String, Vec<u8>>,
}

/// A network an attempt joins, resolved from its project's policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedNetwork {
    /// The engine's network name.
    pub engine_name: String,
    pub project: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// No route out.
    #[serde(default)]
    pub internal: bool,
}

/// The engine name of a project's default network when the project has no
/// egress (an internal bridge; `_` starts no network name, so it is no
/// named network's).
pub fn isolated_network_name(project: &str) -> String {
    format!("shepherd-net-{project}._isolated")
}

/// A task's mounts against its project's volumes (those it names that
/// exist).
pub fn resolve_mounts(spec: &TaskSpec, volumes: &[crate::Volume]) -> Vec<crate::ResolvedMount> {
    spec.volumes
        .iter()
        .filter_map(|mount| {
            volumes.iter().find(|v| v.name == mount.name && v.project == spec.project).map(|v| crate::ResolvedMount::new(v, mount))
        })
        .collect()
}

/// The networks a task joins, from its project's policy: empty for the
/// plain cases (`none`; `bridge` with egress allowed and no named
/// network), which drivers handle themselves; else its default network
/// first (an internal bridge if the project has no egress), then the named
/// ones it asks for (internal, too, without egress).
pub fn resolve_networks(spec: &TaskSpec, policy: &crate::ProjectPolicy) -> Vec<ResolvedNetwork> {
    let isolated = policy.egress == crate::Egress::None;
    let mut networks = Vec::new();
    if spec.network == "bridge" && (isolated || !spec.networks.is_empty()) {
        networks.push(ResolvedNetwork {
            engine_name: if isolated { isolated_network_name(&spec.project) } else { format!("shepherd-net-{}", spec.project) },
            project: spec.project.clone(),
            driver: "bridge".into(),
            options: BTreeMap::new(),
            internal: isolated,
        });
    }
    for name in &spec.networks {
        if let Some(network) = policy.networks.get(name) {
            networks.push(ResolvedNetwork {
                engine_name: crate::engine_network_name(&spec.project, name),
                project: spec.project.clone(),
                driver: network.driver.clone(),
                options: network.options.clone(),
                internal: network.internal || isolated,
            });
        }
    }
    networks
}

impl std::fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchSpec")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("attempt", &self.attempt)
            .field("node_id", &self.node_id)
            .field("spec", &self.spec)
            .field("payload_bytes", &self.payload.as_ref().map(Vec::len))
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout = 1,
    Stderr = 2,
    /// Lines written by Shepherd itself (e.g. the truncation notice).
    System = 3,
}

impl LogStream {
    /// From the stored number.
    pub fn from_code(code: i64) -> LogStream {
        match code {
            1 => LogStream::Stdout,
            2 => LogStream::Stderr,
            _ => LogStream::System,
        }
    }
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }
}

/// Output to append to a task's log.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub task_id: TaskId,
    pub attempt: u32,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Egress, NetworkSpec, ProjectPolicy};

    #[test]
    fn networks_follow_the_policy_and_egress() {
        let mut spec = TaskSpec::new("busybox", vec![]);
        spec.project = "acme".into();
        let mut policy = ProjectPolicy::default();
        policy.networks.insert("back".into(), NetworkSpec::bridge(false));
        assert!(resolve_networks(&spec, &policy).is_empty(), "none");
        spec.network = "bridge".into();
        assert!(resolve_networks(&spec, &policy).is_empty(), "the plain project bridge is the driver's own");
        spec.networks = vec!["back".into(), "gone".into()];
        let names: Vec<String> = resolve_networks(&spec, &policy).into_iter().map(|n| n.engine_name).collect();
        assert_eq!(names, ["shepherd-net-acme", "shepherd-net-acme.back"]);
        policy.egress = Egress::None;
        let resolved = resolve_networks(&spec, &policy);
        assert_eq!(resolved[0].engine_name, "shepherd-net-acme._isolated");
        assert!(resolved.iter().all(|n| n.internal), "no egress: every network is internal");
        spec.network = "none".into();
        assert_eq!(resolve_networks(&spec, &policy).len(), 1);
    }
}

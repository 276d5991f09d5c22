//! What every task container is made of, cold or warm: Shepherd's labels
//! and mount points, an attempt's container name, the hardened host
//! config, tmpfs options and the task's environment.

use super::spec::AttemptSpec;
use bollard::models::HostConfig;
use shepherd_core::TaskId;
use std::collections::HashMap;

/// Label keys on every container Shepherd creates: the task id,
pub const LABEL_TASK: &str = "io.shepherd.task";
/// the attempt,
pub const LABEL_ATTEMPT: &str = "io.shepherd.attempt";
/// and the node id.
pub const LABEL_NODE: &str = "io.shepherd.node";
/// Label key on the networks Shepherd creates: the project.
pub const LABEL_PROJECT: &str = "io.shepherd.project";
/// Label key on the volumes Shepherd makes: the volume's name in its project.
pub const LABEL_VOLUME: &str = "io.shepherd.volume";
/// Label key on a task container: the GPUs granted to it, comma-separated.
pub const LABEL_GPUS: &str = "io.shepherd.gpus";

/// Where the payload file appears inside the container.
pub const PAYLOAD_PATH: &str = "/run/shepherd/payload";

/// Where a cold container's result file is (in a directory mounted
/// writable for it: `$SHEPHERD_RESULT_FILE`).
pub const RESULT_DIR: &str = "/run/shepherd/out";
/// Where the results of a task's dependencies appear, read-only, one file
/// per dependency named by its id (`$SHEPHERD_INPUTS_DIR`).
pub const INPUTS_PATH: &str = "/run/shepherd/inputs";

/// Where the secrets directory appears inside the container.
pub const SECRETS_PATH: &str = "/run/secrets";
/// Where a task's code package is mounted, read-only.
pub const PACKAGE_PATH: &str = "/task";

/// The container name of one attempt.
pub fn container_name(task_id: TaskId, attempt: u32) -> String {
    format!("shepherd-{}-{attempt}", task_id.to_string().to_lowercase())
}

/// What every task container gets, cold or warm: all capabilities
/// dropped, no-new-privileges, a read-only root with a tmpfs at /tmp, never
/// privileged, the pids limit, the task's CPU and memory (no swap), and its
/// project's network or none.
pub(super) fn hardened_host_config(spec: &AttemptSpec, pids_limit: i64, tmp_size_mib: u32) -> HostConfig {
    let network = if spec.network == "bridge" { super::spec::project_network(&spec.project) } else { "none".to_string() };
    let memory = i64::from(spec.resources.memory_mib) * 1024 * 1024;
    HostConfig {
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(i64::from(spec.resources.cpu_millicores) * 1_000_000),
        pids_limit: Some(pids_limit),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), tmpfs_options(tmp_size_mib))])),
        privileged: Some(false),
        network_mode: Some(network),
        ..Default::default()
    }
}

/// The mount options of a task's scratch tmpfs: its size, and its owner
/// when the task's user is numeric (`1000` or `1000:1000`).
pub(super) fn scratch_options(size_mib: u32, user: Option<&str>) -> String {
    let mut options = tmpfs_options(size_mib);
    if let Some(user) = user {
        let (uid, gid) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
        if uid.parse::<u32>().is_ok() {
            options.push_str(&format!(",uid={uid}"));
        }
        if let Some(gid) = gid.filter(|g| g.parse::<u32>().is_ok()) {
            options.push_str(&format!(",gid={gid}"));
        }
    }
    options
}

/// The mount options of a task's tmpfs of `size_mib`.
pub(super) fn tmpfs_options(size_mib: u32) -> String {
    format!("rw,nosuid,nodev,size={size_mib}m")
}

/// The environment Shepherd gives a task's container, warm or cold: the
/// task's own, then where it runs and where its payload and secrets are.
pub(super) fn task_env(spec: &AttemptSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("SHEPHERD_TASK_ID".into(), spec.task_id.to_string()));
    env.push(("SHEPHERD_ATTEMPT".into(), spec.attempt.to_string()));
    env.push(("SHEPHERD_NODE_ID".into(), spec.node_id.clone()));
    if spec.payload_file.is_some() {
        env.push(("SHEPHERD_PAYLOAD_FILE".into(), PAYLOAD_PATH.into()));
    }
    if spec.secrets_dir.is_some() {
        env.push(("SHEPHERD_SECRETS_DIR".into(), SECRETS_PATH.into()));
    }
    if spec.package_dir.is_some() {
        env.push(("SHEPHERD_TASK_DIR".into(), PACKAGE_PATH.into()));
    }
    if let Some(scratch) = &spec.scratch {
        env.push(("SHEPHERD_SCRATCH_DIR".into(), scratch.target.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_tmpfs_belongs_to_a_numeric_user() {
        assert_eq!(scratch_options(16, None), "rw,nosuid,nodev,size=16m");
        assert_eq!(scratch_options(16, Some("65534")), "rw,nosuid,nodev,size=16m,uid=65534");
        assert_eq!(scratch_options(16, Some("1000:1001")), "rw,nosuid,nodev,size=16m,uid=1000,gid=1001");
        assert_eq!(scratch_options(16, Some("nobody")), "rw,nosuid,nodev,size=16m");
        assert_eq!(scratch_options(16, Some("1000:staff")), "rw,nosuid,nodev,size=16m,uid=1000");
    }
}

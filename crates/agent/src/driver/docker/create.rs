//! An attempt's container: its create body (the hardened defaults, the
//! task's limits, mounts, devices, GPUs and labels), and its create,
//! pulling the image as the pull policy says.

use super::DockerDriver;
use crate::driver::container::{
    hardened_host_config, scratch_options, task_env, INPUTS_PATH, LABEL_ATTEMPT, LABEL_GPUS, LABEL_NODE, LABEL_TASK, PACKAGE_PATH,
    PAYLOAD_PATH, RESULT_DIR, SECRETS_PATH,
};
use crate::driver::engine::{engine_error, is_missing_image, is_status};
use crate::driver::spec::{AttemptSpec, DriverError};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use shepherd_core::PullPolicy;
use std::collections::HashMap;

impl DockerDriver {
    /// Creates the attempt's container, replacing one left over from an
    /// interrupted start. The image is not checked first: the engine says
    /// when it is missing, which saves a call on every start.
    async fn create(&self, name: &str, spec: &AttemptSpec) -> Result<(), bollard::errors::Error> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let started = std::time::Instant::now();
        let created = self.docker.create_container(Some(options), self.container_body(spec)).await;
        match crate::metrics::metrics().time("create", started, created) {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[409]) => {
                let _ = self.docker.remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                let options = CreateContainerOptionsBuilder::default().name(name).build();
                self.docker.create_container(Some(options), self.container_body(spec)).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the container, pulling the image as the pull policy says:
    /// `always` pulls first, with the project's own login, and a pull that
    /// fails fails the attempt (a copy another project pulled is never
    /// used instead); `if_not_present` pulls when the engine lacks the
    /// image; `never` fails at once. Failed pulls say `image_pull_failed`.
    pub(super) async fn create_with_image(&self, name: &str, spec: &AttemptSpec) -> Result<(), DriverError> {
        let image = spec.image.as_str();
        if spec.pull_policy == PullPolicy::Always {
            self.pull(spec, false).await.map_err(DriverError::StartFailed)?;
        }
        let created = match self.create(name, spec).await {
            Err(e) if is_missing_image(&e) => match spec.pull_policy {
                PullPolicy::Never => {
                    return Err(DriverError::StartFailed(format!("image `{image}` is not on this node (pull policy: never)")))
                }
                // Pulled just now, and gone again (removed meanwhile): pulled again.
                PullPolicy::Always | PullPolicy::IfNotPresent => {
                    self.pull(spec, spec.pull_policy == PullPolicy::IfNotPresent).await.map_err(DriverError::StartFailed)?;
                    self.create(name, spec).await
                }
            },
            other => other,
        };
        match created {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[400, 404]) => Err(DriverError::StartFailed(format!("could not create the container: {e}"))),
            Err(e) => Err(engine_error("creating the container", e)),
        }
    }

    /// The create body of an attempt's container: the hardened defaults, the
    /// task's limits, env and labels. Public so benchmarks compare like with like.
    pub fn container_body(&self, spec: &AttemptSpec) -> ContainerCreateBody {
        let mut env: Vec<String> = task_env(spec).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut binds = Vec::new();
        // Results and inputs: cold containers only (a warm one's mounts are its own).
        if let Some(dir) = &spec.out_dir {
            binds.push(format!("{}:{RESULT_DIR}:rw", dir.display()));
            env.push(format!("SHEPHERD_RESULT_FILE={RESULT_DIR}/result"));
        }
        if let Some(dir) = &spec.inputs_dir {
            binds.push(format!("{}:{INPUTS_PATH}:ro", dir.display()));
            env.push(format!("SHEPHERD_INPUTS_DIR={INPUTS_PATH}"));
        }
        if let Some(file) = &spec.payload_file {
            binds.push(format!("{}:{PAYLOAD_PATH}:ro", file.display()));
        }
        if let Some(dir) = &spec.secrets_dir {
            binds.push(format!("{}:{SECRETS_PATH}:ro", dir.display()));
        }
        if let Some(dir) = &spec.package_dir {
            binds.push(format!("{}:{PACKAGE_PATH}:ro", dir.display()));
        }
        let mut labels = HashMap::from([
            (LABEL_TASK.to_string(), spec.task_id.to_string()),
            (LABEL_ATTEMPT.to_string(), spec.attempt.to_string()),
            (LABEL_NODE.to_string(), self.config.node_id.clone()),
        ]);
        if !spec.gpu_ids.is_empty() {
            labels.insert(LABEL_GPUS.to_string(), spec.gpu_ids.join(","));
        }
        let mut host_config = HostConfig {
            // A tiny init (the engine's docker-init) as PID 1: signals reach
            // the command (a cancel's SIGTERM ends `sleep` at once instead of
            // after the grace period) and zombies are reaped.
            init: Some(true),
            binds: (!binds.is_empty()).then_some(binds),
            ..hardened_host_config(spec, self.config.pids_limit, self.config.tmp_size_mib)
        };
        if !spec.volumes.is_empty() {
            host_config.mounts = Some(
                spec.volumes
                    .iter()
                    .map(|v| bollard::models::Mount {
                        typ: Some(bollard::models::MountType::VOLUME),
                        source: Some(v.engine_name.clone()),
                        target: Some(v.target.clone()),
                        read_only: Some(v.read_only),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        if let Some(first) = spec.networks.first() {
            host_config.network_mode = Some(first.engine_name.clone());
        }
        // Only the devices and GPUs granted to this attempt.
        let devices: Vec<_> =
            spec.devices.iter().filter_map(|name| self.config.devices.iter().find(|d| &d.name == name)).map(|d| d.mapping()).collect();
        if !devices.is_empty() {
            host_config.devices = Some(devices);
        }
        let gpus = crate::driver::devices::gpu_request(&spec.gpu_ids);
        if !gpus.is_empty() {
            host_config.device_requests = Some(gpus);
        }
        if let (Some(scratch), Some(tmpfs)) = (&spec.scratch, host_config.tmpfs.as_mut()) {
            // Gone with the container. Owned by the task's user when it is
            // numeric (the engine ignores a mode: a new mountpoint is root's 0755).
            tmpfs.insert(scratch.target.clone(), scratch_options(scratch.size_mib, spec.user.as_deref()));
        }
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            working_dir: spec.workdir.clone(),
            user: spec.user.clone(),
            network_disabled: Some(spec.network != "bridge" && spec.networks.is_empty()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

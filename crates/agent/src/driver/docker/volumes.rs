//! A project's volumes on the engine: made on first use with the project's
//! label, never mounted when they are another project's or when their
//! options would mount the host's files.

use super::DockerDriver;
use crate::driver::container::{LABEL_PROJECT, LABEL_VOLUME};
use crate::driver::engine::{engine_error, engine_message, is_status};
use crate::driver::spec::DriverError;
use std::collections::HashMap;

impl DockerDriver {
    /// Makes a project volume on this engine unless it exists, with its
    /// driver, options and Shepherd's labels. One that exists must carry
    /// the same project: a volume of another project's is never mounted.
    ///
    /// A `local` volume's options are checked again here, before the engine
    /// sees them (the allow-list of [`shepherd_core::volume_options`]): a
    /// volume stored by an older version, or options that reached the node
    /// some other way, never mount the host's files. An existing engine
    /// volume is checked as the engine made it.
    pub(super) async fn ensure_volume(&self, volume: &shepherd_core::ResolvedMount) -> Result<(), DriverError> {
        use shepherd_core::volume_options::{check_local, NfsServers};
        let refuse = |what: &str, e: shepherd_core::FieldError| {
            DriverError::StartFailed(format!("volume {} {what}: {}; refusing to mount it", volume.name, e.message))
        };
        if volume.driver == "local" {
            check_local(&volume.options, NfsServers::AnyLiteral).map_err(|e| refuse("has options a node never mounts", e))?;
        }
        match self.docker.inspect_volume(&volume.engine_name).await {
            Ok(found) => {
                if found.labels.get(LABEL_PROJECT) != Some(&volume.project) {
                    return Err(DriverError::StartFailed(format!(
                        "the engine's volume {} is not project {}'s: refusing to mount it",
                        volume.engine_name, volume.project
                    )));
                }
                if found.driver == "local" {
                    let options: std::collections::BTreeMap<String, String> = found.options.into_iter().collect();
                    check_local(&options, NfsServers::AnyLiteral)
                        .map_err(|e| refuse("on the engine has options a node never mounts", e))?;
                }
                Ok(())
            }
            Err(e) if is_status(&e, &[404]) => {
                let request = bollard::models::VolumeCreateRequest {
                    name: Some(volume.engine_name.clone()),
                    driver: Some(volume.driver.clone()),
                    driver_opts: (!volume.options.is_empty()).then(|| volume.options.clone().into_iter().collect()),
                    labels: Some(HashMap::from([
                        (LABEL_PROJECT.to_string(), volume.project.clone()),
                        (LABEL_VOLUME.to_string(), volume.name.clone()),
                    ])),
                    ..Default::default()
                };
                // Made at once by two starts: the engine answers both with the one volume.
                self.docker
                    .create_volume(request)
                    .await
                    .map_err(|e| DriverError::StartFailed(format!("could not make volume {}: {}", volume.name, engine_message(&e))))?;
                tracing::info!(volume = %volume.engine_name, driver = %volume.driver, "made a project volume");
                Ok(())
            }
            Err(e) => Err(engine_error("inspecting a volume", e)),
        }
    }
}

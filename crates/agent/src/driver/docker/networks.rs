//! A project's networks on the engine: made on first use with the
//! project's label, never joined when they are another project's.

use super::DockerDriver;
use crate::driver::container::{LABEL_NODE, LABEL_PROJECT};
use crate::driver::engine::{engine_error, is_status};
use crate::driver::spec::DriverError;
use std::collections::HashMap;

impl DockerDriver {
    /// Creates the project's network unless it exists. Serialized, so that
    /// two starts never both create it (older engines allow duplicate names).
    pub(super) async fn ensure_network(&self, project: &str) -> Result<(), DriverError> {
        let network = shepherd_core::ResolvedNetwork {
            engine_name: crate::driver::spec::project_network(project),
            project: project.to_string(),
            driver: "bridge".into(),
            options: Default::default(),
            internal: false,
        };
        self.ensure_resolved_network(&network).await
    }

    /// Creates a network of a project's policy unless it exists (with its
    /// driver, options and `internal`). One that exists must be the
    /// project's: a network of another project's is never joined.
    pub(super) async fn ensure_resolved_network(&self, network: &shepherd_core::ResolvedNetwork) -> Result<(), DriverError> {
        let name = network.engine_name.clone();
        let project = network.project.as_str();
        let mut known = self.networks.lock().await;
        if known.contains(&name) {
            return Ok(());
        }
        match self.docker.inspect_network(&name, None).await {
            Ok(found) => {
                let owner = found.labels.as_ref().and_then(|l| l.get(LABEL_PROJECT));
                if owner.is_some_and(|o| o != project) {
                    return Err(DriverError::StartFailed(format!("network {name} belongs to another project")));
                }
            }
            Err(e) if is_status(&e, &[404]) => {
                let request = bollard::models::NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some(network.driver.clone()),
                    internal: Some(network.internal),
                    options: (!network.options.is_empty()).then(|| network.options.clone().into_iter().collect()),
                    labels: Some(HashMap::from([
                        (LABEL_PROJECT.to_string(), project.to_string()),
                        (LABEL_NODE.to_string(), self.config.node_id.clone()),
                    ])),
                    ..Default::default()
                };
                self.docker.create_network(request).await.map_err(|e| engine_error("creating the project network", e))?;
                tracing::info!(network = %name, driver = %network.driver, internal = network.internal, "created a project network");
            }
            Err(e) => return Err(engine_error("inspecting the project network", e)),
        }
        known.insert(name);
        Ok(())
    }
}

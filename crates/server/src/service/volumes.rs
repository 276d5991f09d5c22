//! A project's named volumes: made through the drivers its policy allows
//! and within its quotas; made on an engine when the first task that
//! mounts it starts there; removed from the engines that hold it.

use crate::nodes::links::NodeLinks;
use crate::service::audit;
use crate::service::auth::Caller;
use crate::service::error::{Refusal, ServiceError};
use crate::service::projects::ProjectService;
use shepherd_core::{TaskState, Timestamp, Volume, VolumeScope, VolumeSpec};
use shepherd_store::{Store, TaskFilter};
use std::sync::Arc;

/// Volume operations.
pub struct VolumeService {
    pub store: Arc<dyn Store>,
    /// Which projects the caller may see.
    pub projects: Arc<ProjectService>,
    /// Reaches the nodes that hold a removed volume's data.
    pub links: Arc<dyn NodeLinks>,
}

impl VolumeService {
    /// Makes a volume of a project (stored now; made on an engine at first use).
    pub async fn create(&self, caller: &Caller, project: &str, spec: VolumeSpec) -> Result<Volume, ServiceError> {
        let found = self.projects.visible(caller, project).await?;
        spec.validate(&found.policy)?;
        if !found.policy.allows_volume_driver(&spec.driver) {
            let allowed = if found.policy.volume_drivers.is_empty() { "local".to_string() } else { found.policy.volume_drivers.join(", ") };
            return Err(ServiceError::refused(
                Refusal::Forbidden,
                "driver_not_allowed",
                format!("project {project} may not use volume driver `{}` (allowed: {allowed}; the admin sets them)", spec.driver),
            )
            .on_field("driver"));
        }
        let existing = self.store.volumes(Some(project.to_string())).await?;
        if let Some(max) = found.limits.max_volumes {
            if existing.len() as u64 >= max {
                return Err(ServiceError::refused(
                    Refusal::Quota,
                    "quota_exceeded",
                    format!("project {project} may have {max} volumes; it has {}", existing.len()),
                ));
            }
        }
        if let (Some(max), Some(size)) = (found.limits.max_volume_size_mib, spec.size_mib) {
            let used: u64 = existing.iter().filter_map(|v| v.size_mib).sum();
            if used + size > max {
                return Err(ServiceError::refused(
                    Refusal::Quota,
                    "quota_exceeded",
                    format!("project {project} may have {max} MiB of volumes; it has {used} and this adds {size}"),
                )
                .on_field("size_mib"));
            }
        }
        if existing.iter().any(|v| v.name == spec.name) {
            return Err(ServiceError::refused(
                Refusal::Conflict,
                "exists",
                format!("project {project} has a volume {} already", spec.name),
            ));
        }
        let volume = Volume::new(project, spec, Timestamp::now());
        if !self.store.create_volume(volume.clone()).await? {
            return Err(ServiceError::refused(
                Refusal::Conflict,
                "exists",
                format!("the engine name {} is taken by another project's volume: choose another name", volume.engine_name),
            )
            .on_field("name"));
        }
        let detail = format!("driver {}, {:?} scope", volume.driver, volume.scope).to_lowercase();
        audit::record(self.store.as_ref(), caller, Some(project), "volume.create", &volume.name, Some(detail)).await;
        Ok(volume)
    }

    /// A project's volumes.
    pub async fn list(&self, caller: &Caller, project: &str) -> Result<Vec<Volume>, ServiceError> {
        self.projects.visible(caller, project).await?;
        Ok(self.store.volumes(Some(project.to_string())).await?)
    }

    /// One volume of a project.
    pub async fn get(&self, caller: &Caller, project: &str, name: &str) -> Result<Volume, ServiceError> {
        self.projects.visible(caller, project).await?;
        self.store.get_volume(project, name).await?.ok_or_else(|| ServiceError::Missing(format!("volume {name} in project {project}")))
    }

    /// Removes a volume no unfinished task of its project mounts, and its
    /// data from the engines that hold it.
    pub async fn delete(&self, caller: &Caller, project: &str, name: &str) -> Result<(), ServiceError> {
        let volume = self.get(caller, project, name).await?;
        // Tasks that still need it: the newest 10,000 unfinished ones of the project.
        let filter = TaskFilter {
            states: vec![TaskState::Waiting, TaskState::Queued, TaskState::Scheduled, TaskState::Running],
            project: Some(project.to_string()),
            limit: 10_000,
            ..Default::default()
        };
        let page = self.store.list_tasks(filter).await?;
        if let Some(user) = page.tasks.iter().find(|t| t.volumes.iter().any(|m| m.name == name)) {
            return Err(ServiceError::refused(
                Refusal::Conflict,
                "in_use",
                format!("task {} ({}) mounts volume {name}: cancel it or let it finish first", user.id, user.state.as_str()),
            ));
        }
        if !self.store.delete_volume(project, name).await? {
            return Err(ServiceError::Missing(format!("volume {name} in project {project}")));
        }
        // Its data: on its node, or, for a cluster-wide one, on every node that may have made it.
        let nodes: Vec<String> = match (&volume.scope, &volume.node_id) {
            (VolumeScope::Node, Some(node)) => vec![node.clone()],
            (VolumeScope::Node, None) => Vec::new(),
            (VolumeScope::Cluster, _) => self.store.list_nodes().await?.into_iter().map(|n| n.id).collect(),
        };
        for node in &nodes {
            self.links.remove_volume(node, &volume.engine_name, project);
        }
        audit::record(self.store.as_ref(), caller, Some(project), "volume.delete", name, None).await;
        Ok(())
    }
}

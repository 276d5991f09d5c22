//! Prefetch: pull an image onto the ready nodes of a pool ahead of a burst
//! of tasks that need it, with a project's registry login; then follow
//! which nodes hold it (the nodes' heartbeats list their images, which the
//! `image_locality` score already rewards).

use crate::nodes::links::NodeLinks;
use crate::service::audit;
use crate::service::auth::Caller;
use crate::service::error::ServiceError;
use serde::{Deserialize, Serialize};
use shepherd_core::FieldError;
use shepherd_store::{NodeRecord, NodeState, Store};
use std::sync::Arc;

/// Image operations.
pub struct ImageService {
    pub store: Arc<dyn Store>,
    /// Reaches the nodes asked to pull.
    pub links: Arc<dyn NodeLinks>,
}

/// What to prefetch, and where.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    /// The image reference, as tasks name it (`NAME[:TAG]` or `NAME@sha256:…`).
    pub image: String,
    /// Only the nodes of this pool (default: every ready node the caller's tasks may use).
    #[serde(default)]
    pub pool: Option<String>,
    /// The project whose registry login pulls it: a project token's own
    /// (and only that); for the admin, none unless named.
    #[serde(default)]
    pub project: Option<String>,
    /// How long each node's pull may take (default 600 s).
    #[serde(default)]
    pub pull_timeout_seconds: Option<u32>,
}

/// A node asked to hold the image, and whether its last heartbeat listed it.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrefetchNode {
    pub node_id: String,
    pub present: bool,
}

/// Where an image is, on the nodes a prefetch covers.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrefetchStatus {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub nodes: Vec<PrefetchNode>,
    /// Every node listed holds the image.
    pub done: bool,
}

/// The project a prefetch pulls for: a project token's own (naming another
/// is refused); the admin's choice.
fn project_of(caller: &Caller, named: Option<&str>) -> Result<Option<String>, ServiceError> {
    match (caller.project(), named) {
        (Some(own), Some(named)) if own != named => Err(ServiceError::Missing(format!("project {named}"))),
        (Some(own), _) => Ok(Some(own.to_string())),
        (None, named) => Ok(named.map(str::to_string)),
    }
}

/// The ready nodes a prefetch covers: those of the pool if one is named,
/// and, for a project, none dedicated to other projects.
fn covered(nodes: Vec<NodeRecord>, pool: Option<&str>, project: Option<&str>) -> Vec<NodeRecord> {
    nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Ready)
        .filter(|n| pool.is_none_or(|pool| n.labels.get("pool").map(String::as_str) == Some(pool)))
        .filter(|n| match (project, n.labels.get(shepherd_sched::DEDICATED_LABEL)) {
            (Some(project), Some(dedicated)) => dedicated.split(',').any(|p| p.trim() == project),
            _ => true,
        })
        .collect()
}

/// The reference a node lists an image under (a tag defaults to `latest`).
fn listed_name(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Whether a node's image list holds `image` for `project`: an image some
/// projects pulled with their logins is listed as `for=PROJECT=IMAGE` for
/// each of them, and is another project's only once it pulled it itself
/// (for the admin, held at all).
fn holds(images: &[String], image: &str, project: Option<&str>) -> bool {
    let listed = listed_name(image);
    images.iter().any(|i| {
        let name = match i.strip_prefix("for=").and_then(|rest| rest.split_once('=')) {
            Some((owner, name)) if project.is_none_or(|p| p == owner) => name,
            Some(_) => return false,
            None => i.as_str(),
        };
        name == listed || name == image
    })
}

fn status(image: &str, project: Option<&str>, pool: Option<String>, nodes: &[NodeRecord]) -> PrefetchStatus {
    let nodes: Vec<PrefetchNode> =
        nodes.iter().map(|n| PrefetchNode { node_id: n.id.clone(), present: holds(&n.images, image, project) }).collect();
    let done = nodes.iter().all(|n| n.present);
    PrefetchStatus { image: image.to_string(), pool, nodes, done }
}

fn check(request: &PrefetchRequest) -> Result<(), FieldError> {
    shepherd_core::reference::check_image_reference(&request.image).map_err(|why| FieldError::new("image", why))?;
    if let Some(pool) = &request.pool {
        if !shepherd_core::validate::is_label_key(pool) {
            return Err(FieldError::new("pool", "a pool name (letters, digits, . _ - /)"));
        }
    }
    if request.pull_timeout_seconds.is_some_and(|s| s == 0 || s > 24 * 3600) {
        return Err(FieldError::new("pull_timeout_seconds", "1 to 86400"));
    }
    Ok(())
}

impl ImageService {
    /// Has every ready node of the pool (that the caller's project may use)
    /// pull the image now, with the project's login; the nodes asked.
    pub async fn prefetch(&self, caller: &Caller, request: PrefetchRequest) -> Result<PrefetchStatus, ServiceError> {
        check(&request)?;
        let project = project_of(caller, request.project.as_deref())?;
        let auth = match &project {
            Some(project) => {
                if self.store.get_project(project).await?.is_none() {
                    return Err(ServiceError::Missing(format!("project {project}")));
                }
                self.store.registry_auth(project, &request.image).await?
            }
            None => None,
        };
        let nodes = covered(self.store.list_nodes().await?, request.pool.as_deref(), project.as_deref());
        let timeout = request.pull_timeout_seconds.unwrap_or(600);
        for node in &nodes {
            self.links.prefetch(&node.id, &request.image, project.as_deref(), auth.clone(), timeout);
        }
        let detail = format!("{} node(s){}", nodes.len(), request.pool.as_ref().map(|p| format!(" of pool {p}")).unwrap_or_default());
        audit::record(self.store.as_ref(), caller, project.as_deref(), "image.prefetch", &request.image, Some(detail)).await;
        Ok(status(&request.image, project.as_deref(), request.pool, &nodes))
    }

    /// Which ready nodes of a pool hold an image, as their last heartbeats said.
    pub async fn prefetch_status(&self, caller: &Caller, request: PrefetchRequest) -> Result<PrefetchStatus, ServiceError> {
        check(&request)?;
        let project = project_of(caller, request.project.as_deref())?;
        let nodes = covered(self.store.list_nodes().await?, request.pool.as_deref(), project.as_deref());
        Ok(status(&request.image, project.as_deref(), request.pool, &nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_matched_as_nodes_list_them() {
        assert_eq!(listed_name("busybox"), "busybox:latest");
        assert_eq!(listed_name("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(listed_name("127.0.0.1:5000/app:2"), "127.0.0.1:5000/app:2");
        assert_eq!(listed_name("r/app@sha256:00"), "r/app@sha256:00");
        let images = vec!["busybox:latest".to_string(), "for=a=r/private:1".to_string()];
        assert!(holds(&images, "busybox", Some("b")));
        assert!(holds(&images, "r/private:1", Some("a")));
        assert!(!holds(&images, "r/private:1", Some("b")), "another project's pull is not b's");
        assert!(holds(&images, "r/private:1", None), "the admin sees it held");
    }

    #[test]
    fn a_project_prefetches_for_itself_only() {
        let caller = Caller::Project { project: "a".into(), token_id: "t".into() };
        assert_eq!(project_of(&caller, None).unwrap().as_deref(), Some("a"));
        assert!(project_of(&caller, Some("b")).is_err());
        assert_eq!(project_of(&Caller::Admin, Some("b")).unwrap().as_deref(), Some("b"));
        assert_eq!(project_of(&Caller::Admin, None).unwrap(), None);
    }
}

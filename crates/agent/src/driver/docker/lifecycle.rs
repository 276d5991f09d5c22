//! The docker driver's side of the seam ([`Driver`]): starting an attempt
//! (in a warm container or a cold one), adopting one after a restart,
//! removing orphans, the node's images and their cleanup, prefetch,
//! volumes, draining and shutdown.

use super::attempt::ContainerAttempt;
use super::output::replay;
use super::DockerDriver;
use crate::driver::container::{container_name, LABEL_GPUS, LABEL_NODE, LABEL_PROJECT};
use crate::driver::engine::{engine_error, engine_message, is_status};
use crate::driver::seam::{AttemptHandle, Driver};
use crate::driver::spec::{AttemptSpec, Captured, DriverError, OutputSender};
use async_trait::async_trait;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder};
use shepherd_core::TaskId;
use std::collections::HashMap;
use std::time::Duration;

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn attempts_survive_agent(&self) -> bool {
        true
    }

    async fn start(&self, spec: &AttemptSpec, output: OutputSender) -> Result<Box<dyn AttemptHandle>, DriverError> {
        self.image_use.used(&spec.image);
        if !spec.networks.is_empty() {
            for network in &spec.networks {
                self.ensure_resolved_network(network).await?;
            }
        } else if spec.network == "bridge" {
            self.ensure_network(&spec.project).await?;
        }
        for volume in &spec.volumes {
            self.ensure_volume(volume).await?;
        }
        self.check_image_access(spec).await?;
        if let (Some(pool), Some(reuse), Some(key)) = (&self.warm, spec.reuse, &spec.warm_key) {
            if let Some(handle) = pool.start(spec, reuse, key.clone(), &output).await? {
                return Ok(handle);
            }
        }
        if let Some(missing) = spec.devices.iter().find(|name| !self.config.devices.iter().any(|d| &d.name == *name)) {
            return Err(DriverError::StartFailed(format!("this node offers no device `{missing}`")));
        }
        // Its GPUs: granted now, given back when its container goes.
        let granted = self
            .gpus
            .take(spec.gpus)
            .ok_or_else(|| DriverError::StartFailed(format!("{} GPUs asked, {} free on this node", spec.gpus, self.gpus.free())))?;
        let with_gpus;
        let spec = if granted.is_empty() {
            spec
        } else {
            with_gpus = AttemptSpec { gpu_ids: granted.clone(), ..spec.clone() };
            &with_gpus
        };
        let name = container_name(spec.task_id, spec.attempt);
        // Its own before the engine has it: a reconcile listing meanwhile keeps it.
        self.made.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        if let Err(e) = self.create_with_image(&name, spec).await {
            self.made.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            self.gpus.give_back(&granted);
            return Err(e);
        }
        let mut attempt = ContainerAttempt {
            docker: self.docker.clone(),
            name: name.clone(),
            removed: false,
            killed: false,
            usage: Default::default(),
            gpus: (!granted.is_empty()).then(|| (self.gpus.clone(), granted)),
            image_digest: None,
            made: self.made.clone(),
            adopted: false,
        };
        // Its other networks are joined before it starts.
        for network in spec.networks.iter().skip(1) {
            let request = bollard::models::NetworkConnectRequest { container: name.clone(), ..Default::default() };
            if let Err(e) = self.docker.connect_network(&network.engine_name, request).await {
                let _ = attempt.remove().await;
                return Err(engine_error("joining a project network", e));
            }
        }
        if let Err(e) = self.attach(&name, output).await {
            let _ = attempt.remove().await;
            return Err(engine_error("attaching to the container", e));
        }
        let started = std::time::Instant::now();
        // The image it runs is looked up while the engine starts it.
        let (result, image_digest) = tokio::join!(self.docker.start_container(&name, None), self.image_digest(&spec.image));
        attempt.image_digest = image_digest;
        if let Err(e) = crate::metrics::metrics().time("start", started, result) {
            let _ = attempt.remove().await;
            return Err(DriverError::StartFailed(format!("could not start the container: {e}")));
        }
        Ok(Box::new(attempt))
    }

    async fn recover(
        &self,
        task_id: TaskId,
        attempt: u32,
        output: OutputSender,
        captured: Captured,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        let name = container_name(task_id, attempt);
        match self.docker.inspect_container(&name, None).await {
            Ok(info) => {
                let mine =
                    info.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_NODE)) == Some(&self.config.node_id);
                if !mine {
                    return Ok(None);
                }
                // The engine kept everything the container wrote: read it back
                // from the start, skip what was stored before the restart, and
                // follow on. Output written while no agent watched is not lost.
                let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                // Its GPUs are held again until it goes.
                let gpus: Vec<String> = info
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(LABEL_GPUS))
                    .map(|ids| ids.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                self.gpus.hold(&gpus);
                replay(self.docker.clone(), name.clone(), output, captured, running);
                self.made.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
                Ok(Some(Box::new(ContainerAttempt {
                    docker: self.docker.clone(),
                    name,
                    removed: false,
                    killed: false,
                    usage: Default::default(),
                    gpus: (!gpus.is_empty()).then(|| (self.gpus.clone(), gpus)),
                    image_digest: None,
                    made: self.made.clone(),
                    adopted: true,
                })))
            }
            Err(e) if is_status(&e, &[404]) => Ok(None),
            Err(e) => Err(engine_error("inspecting the container", e)),
        }
    }

    async fn remove_orphans(&self, keep: &[(TaskId, u32)]) -> Result<usize, DriverError> {
        let mut keep: Vec<String> = keep.iter().map(|(task, attempt)| container_name(*task, *attempt)).collect();
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={}", self.config.node_id)])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(|e| engine_error("listing containers", e))?;
        // This driver's own warm containers (a reconnect, not a restart),
        // read after the listing: a warm container is live before the
        // engine makes it, so every one listed is in this set unless it is
        // gone for good.
        keep.extend(self.warm.as_ref().map(|pool| pool.live()).unwrap_or_default());
        // So are the containers of attempts this driver started (named
        // before the engine makes them) and has not removed: the keep-list
        // may predate them.
        keep.extend(self.made.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        let (mut removed, mut failed) = (0, 0);
        for container in containers {
            let names = container.names.unwrap_or_default();
            if names.iter().any(|n| keep.contains(&n.trim_start_matches('/').to_string())) {
                continue;
            }
            let Some(id) = container.id else { continue };
            let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
            match self.docker.remove_container(&id, Some(options)).await {
                Ok(()) => removed += 1,
                Err(e) if is_status(&e, &[404]) => {}
                // One that cannot go now (a removal in progress: 409) does
                // not keep the others: the next reconcile tries it again.
                Err(e) => {
                    failed += 1;
                    tracing::info!(container = %id, error = %engine_message(&e), "could not remove a leftover container; trying again later");
                }
            }
        }
        if failed > 0 {
            tracing::warn!(failed, removed, "some leftover containers could not be removed yet");
        }
        Ok(removed)
    }

    async fn images(&self) -> Vec<String> {
        let options = ListImagesOptionsBuilder::default().build();
        match self.docker.list_images(Some(options)).await {
            Ok(images) => {
                // By tag and by digest (a task may name either). An image
                // some projects pulled with their logins is theirs: listed
                // as `for=PROJECT=REFERENCE` for each of them.
                let present: std::collections::BTreeSet<String> = images.iter().map(|i| i.id.clone()).collect();
                self.access.retain(&present);
                let mut tags: Vec<String> = Vec::new();
                for image in images {
                    let names =
                        image.repo_tags.into_iter().chain(image.repo_digests).filter(|t| t != "<none>:<none>" && t != "<none>@<none>");
                    match self.access.projects_of(&image.id) {
                        None => tags.extend(names),
                        Some(projects) => {
                            for name in names {
                                tags.extend(projects.iter().map(|p| format!("{}{p}={name}", crate::driver::access::FOR_PREFIX)));
                            }
                        }
                    }
                }
                tags.extend(self.warm.as_ref().map(|pool| pool.idle_keys()).unwrap_or_default());
                tags.sort();
                tags
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list images");
                Vec::new()
            }
        }
    }

    async fn prefetch(
        &self,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        deadline: Duration,
    ) -> Result<(), DriverError> {
        self.pull_image(image, project, auth, deadline, false, None).await.map_err(DriverError::StartFailed)
    }

    async fn collect_images(&self, holds: &crate::driver::images::ImageHolds) -> Result<usize, DriverError> {
        let Some(cleanup) = &self.config.image_cleanup else { return Ok(0) };
        let listed = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(|e| engine_error("listing images", e))?;
        let mut total: u64 = listed.iter().map(|i| i.size.max(0) as u64).sum();
        if total <= cleanup.above_bytes {
            return Ok(0);
        }
        self.image_use.save();
        // The images attempts here need, by id: another name of one of them
        // (a digest, a second tag) is never removed either.
        let held_ids: std::collections::HashSet<&str> = holds
            .held()
            .iter()
            .filter_map(|name| listed.iter().find(|i| i.repo_tags.contains(name) || i.repo_digests.contains(name)))
            .map(|i| i.id.as_str())
            .collect();
        let mut removed = 0;
        for image in self.image_use.unused_for(cleanup.unused_for) {
            if total <= cleanup.above_bytes {
                break;
            }
            let name = crate::driver::images::listed_name(&image);
            let Some(found) = listed.iter().find(|i| i.repo_tags.contains(&name) || i.repo_digests.contains(&name)) else {
                // Gone already (removed by hand).
                self.image_use.forget(&image);
                continue;
            };
            if held_ids.contains(found.id.as_str()) {
                continue;
            }
            let Some(_removal) = holds.begin_removal(&image) else { continue };
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().force(false).build();
            match self.docker.remove_image(&image, Some(options), None).await {
                Ok(_) => {
                    tracing::info!(image, bytes = found.size, "image cleanup removed an unused image");
                    crate::metrics::metrics().images_removed.inc();
                    self.image_use.forget(&image);
                    self.digests.lock().unwrap_or_else(|e| e.into_inner()).remove(&image);
                    total = total.saturating_sub(found.size.max(0) as u64);
                    removed += 1;
                }
                Err(e) if is_status(&e, &[404]) => self.image_use.forget(&image),
                // A container (a warm one, one left by hand) still uses it: kept.
                Err(e) if is_status(&e, &[409]) => tracing::debug!(image, "image still used by a container; kept"),
                Err(e) => tracing::warn!(image, error = %e, "image cleanup could not remove an image"),
            }
        }
        Ok(removed)
    }

    async fn remove_volume(&self, engine_name: &str, project: &str) -> Result<bool, DriverError> {
        match self.docker.inspect_volume(engine_name).await {
            Ok(found) if found.labels.get(LABEL_PROJECT).map(String::as_str) == Some(project) => {}
            Ok(_) => return Ok(false),
            Err(e) if is_status(&e, &[404]) => return Ok(false),
            Err(e) => return Err(engine_error("inspecting a volume", e)),
        }
        match self.docker.remove_volume(engine_name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => {
                tracing::info!(volume = %engine_name, "removed a project volume");
                Ok(true)
            }
            Err(e) if is_status(&e, &[404]) => Ok(false),
            Err(e) => Err(engine_error("removing a volume", e)),
        }
    }

    fn keep_idle(&self, keep: bool) {
        if let Some(pool) = &self.warm {
            pool.keep_idle(keep);
        }
    }

    async fn shutdown(&self) -> usize {
        match &self.warm {
            Some(pool) => pool.remove_idle().await,
            None => 0,
        }
    }
}

//! An attempt's image on the engine: pulled once per image and login at a
//! time (its progress told to the attempts waiting), checked against which
//! projects may run the node's copy, and what a reference resolves to.

use super::{DockerDriver, ImageFacts};
use crate::driver::spec::{AttemptSpec, DriverError};
use shepherd_core::PullPolicy;
use std::time::Duration;

/// How long an image reference's digest is reused before the engine is
/// asked again (a tag moved by hand is seen at most this late; a pull by
/// this agent is seen at once).
const DIGEST_FOR: Duration = Duration::from_secs(2);

impl DockerDriver {
    /// Pulls an image with the attempt's login and deadline: one pull per
    /// image and login on this node at a time (the others wait for it).
    /// With `skip_if_present`, an image that arrived meanwhile is not pulled.
    pub(super) async fn pull(&self, spec: &AttemptSpec, skip_if_present: bool) -> Result<(), String> {
        self.pull_image(
            &spec.image,
            Some(&spec.project),
            spec.registry_auth.clone(),
            spec.pull_timeout,
            skip_if_present,
            spec.progress.as_ref(),
        )
        .await
    }

    /// A task runs a local copy of its image only if its project may
    /// ([`crate::driver::access`]): an image another project pulled with its login
    /// is pulled again with this task's own (or without, if its project
    /// has none), whatever its pull policy; a pull the registry refuses
    /// fails the attempt. With `verify_images`, every start of such an
    /// image asks the registry again.
    pub(super) async fn check_image_access(&self, spec: &AttemptSpec) -> Result<(), DriverError> {
        if !self.access.any_restricted() {
            return Ok(());
        }
        let Some(facts) = self.image_facts(&spec.image).await else { return Ok(()) }; // missing: the create pulls it
        if !self.access.is_restricted(&facts.id) {
            return Ok(());
        }
        let allowed = self.access.allows(&facts.id, &spec.project);
        if allowed && !self.config.verify_images {
            return Ok(());
        }
        // The registry decides: asked with this project's own login (or
        // none), never answered from the node's copy (a pull by digest of
        // an image the engine holds would not ask it).
        let served = crate::driver::pull::registry_digest(&self.docker, &spec.image, spec.registry_auth.clone(), spec.pull_timeout)
            .await
            .map_err(|e| {
            DriverError::StartFailed(format!(
                "{e} (the copy on this node was pulled with another project's login: a project pulls it itself)"
            ))
        })?;
        if facts.digest == format!("{}@{served}", crate::driver::pull::repository(&spec.image)) {
            // The node's copy is what the registry serves this project.
            self.access.pulled(&facts.id, spec.registry_auth.as_ref().map(|_| spec.project.as_str()));
            return Ok(());
        }
        // The tag moved: pulled as it is now, with this project's login.
        if spec.pull_policy == PullPolicy::Never {
            return Err(DriverError::StartFailed(format!(
                "image_pull_failed: {}: the registry serves another image than this node's copy (pull policy never)",
                spec.image
            )));
        }
        self.pull(spec, false).await.map_err(DriverError::StartFailed)?;
        match self.image_facts(&spec.image).await {
            Some(now) if self.access.allows(&now.id, &spec.project) => Ok(()),
            _ => {
                Err(DriverError::StartFailed(format!("image_pull_failed: {}: this project may not run the copy on this node", spec.image)))
            }
        }
    }

    /// Pulls `image` with `auth` within `deadline` (see [`Self::pull`]),
    /// telling `progress` how far the pull got, twice a second at most.
    pub(super) async fn pull_image(
        &self,
        image: &str,
        project: Option<&str>,
        auth: Option<shepherd_core::RegistryAuth>,
        deadline: Duration,
        skip_if_present: bool,
        progress: Option<&crate::driver::spec::ProgressSink>,
    ) -> Result<(), String> {
        let key = crate::driver::pull::pull_key(image, auth.as_ref());
        let with_login = auth.is_some();
        let work = {
            let (docker, image, key, percents) = (self.docker.clone(), image.to_string(), key.clone(), self.pull_progress.clone());
            let image_use = self.image_use.clone();
            move || async move {
                if skip_if_present && docker.inspect_image(&image).await.is_ok() {
                    return Ok(());
                }
                let (tx, rx) = tokio::sync::watch::channel(0u8);
                percents.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), rx);
                let pulled = crate::driver::pull::pull(docker, image.clone(), auth, deadline, move |percent| {
                    tx.send_replace(percent);
                })
                .await;
                percents.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                if pulled.is_ok() {
                    image_use.pulled(&image);
                }
                pulled
            }
        };
        let flight = async {
            if self.config.pull_dedup {
                self.pulls.run(key.clone(), work, Err("image_pull_failed: the pull stopped".into())).await
            } else {
                work().await
            }
        };
        let pulled = match progress {
            None => flight.await,
            Some(sink) => {
                let watch = async {
                    let mut last = None;
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let percent = self.pull_progress.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|rx| *rx.borrow());
                        if let Some(percent) = percent.filter(|p| last != Some(*p)) {
                            last = Some(percent);
                            if let Ok(report) = shepherd_core::Progress::new(f64::from(percent), format!("pulling image: {percent}%")) {
                                sink(report);
                            }
                        }
                    }
                };
                tokio::select! {
                    pulled = flight => pulled,
                    _ = watch => Err("image_pull_failed: the pull stopped".into()),
                }
            }
        };
        self.digests.lock().unwrap_or_else(|e| e.into_inner()).remove(image);
        if pulled.is_ok() {
            // Whose it is now: the project whose login pulled it; anyone's
            // after a pull by tag without a login (the engine asked the
            // registry, which served it to anyone). A pull by digest of an
            // image the engine holds asks nobody: it proves nothing.
            match (self.image_facts(image).await, with_login) {
                (Some(facts), true) => self.access.pulled(&facts.id, project),
                (Some(facts), false) if !image.contains('@') => self.access.pulled(&facts.id, None),
                (Some(_), false) => {}
                (None, _) => tracing::warn!(image, "pulled an image the engine then could not find"),
            }
        }
        pulled
    }

    /// What `image` resolves to on the engine now (at most [`DIGEST_FOR`]
    /// old); `None` if the engine lacks it or cannot say.
    async fn image_facts(&self, image: &str) -> Option<ImageFacts> {
        let cached = self.digests.lock().unwrap_or_else(|e| e.into_inner()).get(image).cloned();
        if let Some((at, facts)) = cached {
            if at.elapsed() < DIGEST_FOR {
                return Some(facts);
            }
        }
        let started = std::time::Instant::now();
        let inspected = crate::metrics::metrics().time("inspect_image", started, self.docker.inspect_image(image).await).ok()?;
        let facts = ImageFacts { digest: crate::driver::pull::image_digest(image, &inspected), id: inspected.id.clone()? };
        self.digests.lock().unwrap_or_else(|e| e.into_inner()).insert(image.to_string(), (std::time::Instant::now(), facts.clone()));
        Some(facts)
    }

    /// What an attempt of `image` records as the image it ran
    /// ([`crate::driver::pull::image_digest`]); `None` if the engine cannot say.
    pub(super) async fn image_digest(&self, image: &str) -> Option<String> {
        self.image_facts(image).await.map(|f| f.digest)
    }
}

//! Image pulls: one pull per image and login at a time on a node (N
//! attempts that start together with a missing image wait for the one
//! pull), with the project's registry login, under a deadline of its own.
//! A failure says `image_pull_failed` and the registry's own words.

use futures_util::StreamExt;
use shepherd_core::RegistryAuth;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Runs one future per key at a time; callers asking for a key already in
/// flight wait for its result instead of running their own. The work runs
/// detached, so a caller that goes away (a cancelled attempt) does not
/// abandon the others.
pub struct SingleFlight<K, V> {
    flights: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { flights: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of `work` for `key`: run now, or joined if it runs already.
    /// `lost` is the answer if the work panics.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F, lost: V) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let Ok(mut flights) = self.flights.lock() else { return lost };
            match flights.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    let flights = self.flights.clone();
                    let future = work();
                    tokio::spawn(async move {
                        let value = future.await;
                        if let Ok(mut flights) = flights.lock() {
                            flights.remove(&key);
                        }
                        let _ = tx.send(Some(value));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(value) = rx.borrow_and_update().clone() {
                return value;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone().unwrap_or(lost);
            }
        }
    }

    /// How many keys are in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or(0)
    }
}

/// What a pull is keyed by: the image and whose login pulls it (a pull
/// with one project's login never stands in for another's).
pub type PullKey = (String, Option<(String, String)>);

/// The key of pulling `image` with `auth`.
pub fn pull_key(image: &str, auth: Option<&RegistryAuth>) -> PullKey {
    (image.to_string(), auth.map(|a| (a.registry.clone(), a.username.clone())))
}

/// How far a pull got, from the engine's progress messages: each layer's
/// download and extraction, weighted by its size (a layer the engine
/// already holds counts as done; one whose size is not known yet, not at all).
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Per layer: size, bytes downloaded, bytes extracted.
    layers: HashMap<String, (u64, u64, u64)>,
}

impl PullProgress {
    /// Takes one message of the pull's stream.
    pub fn step(&mut self, info: &bollard::models::CreateImageInfo) {
        let (Some(id), Some(status)) = (&info.id, &info.status) else { return };
        let detail = info.progress_detail.as_ref();
        let current = detail.and_then(|d| d.current).unwrap_or(0).max(0) as u64;
        let total = detail.and_then(|d| d.total).unwrap_or(0).max(0) as u64;
        let layer = self.layers.entry(id.clone()).or_default();
        match status.as_str() {
            "Downloading" => {
                layer.0 = layer.0.max(total);
                layer.1 = current.min(layer.0);
            }
            "Verifying Checksum" | "Download complete" => layer.1 = layer.0,
            "Extracting" => {
                layer.0 = layer.0.max(total);
                layer.1 = layer.0;
                layer.2 = current.min(layer.0);
            }
            "Pull complete" => {
                layer.1 = layer.0;
                layer.2 = layer.0;
            }
            _ => {}
        }
    }

    /// Percent done: downloads and extractions, 99 at most until the
    /// pull ends.
    pub fn percent(&self) -> u8 {
        // In u128: the sizes come from the registry, whatever they say.
        let total: u128 = self.layers.values().map(|l| u128::from(l.0)).sum();
        if total == 0 {
            return 0;
        }
        let done: u128 = self.layers.values().map(|l| u128::from(l.1) + u128::from(l.2)).sum();
        (done * 100 / (2 * total)).min(99) as u8
    }
}

/// Pulls `image` on `docker` with `auth`, within `deadline`, telling
/// `progress` how far it got (percent) as it goes. The error is the reason
/// an attempt fails with: `image_pull_failed: …`.
pub async fn pull(
    docker: bollard::Docker,
    image: String,
    auth: Option<RegistryAuth>,
    deadline: Duration,
    progress: impl Fn(u8) + Send,
) -> Result<(), String> {
    let (name, tag) = split_reference(&image);
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
    let credentials = auth.map(credentials);
    let started = std::time::Instant::now();
    let mut steps = docker.create_image(Some(options), None, credentials);
    crate::metrics::metrics().pulls_in_flight.inc();
    let pulled = tokio::time::timeout(deadline, async {
        let mut done = PullProgress::default();
        while let Some(step) = steps.next().await {
            done.step(&step?);
            progress(done.percent());
        }
        Ok::<(), bollard::errors::Error>(())
    })
    .await;
    crate::metrics::metrics().pulls_in_flight.dec();
    let result = match pulled {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("image_pull_failed: {}: {}", image, super::engine::engine_message(&e))),
        Err(_) => Err(format!(
            "image_pull_failed: {image}: the pull took longer than its pull_timeout ({})",
            humantime::format_duration(deadline)
        )),
    };
    tracing::info!(image, ok = result.is_ok(), seconds = started.elapsed().as_secs_f64(), "pulled an image");
    crate::metrics::metrics().pulls.inc();
    crate::metrics::metrics().pull_seconds.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        progress(100);
    }
    result
}

/// A project's login as the engine takes it.
pub fn credentials(auth: RegistryAuth) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(auth.username),
        password: Some(auth.password),
        // Docker Hub's logins name its index, as `docker login` does.
        serveraddress: Some(if auth.registry == "docker.io" { "https://index.docker.io/v1/".to_string() } else { auth.registry }),
        ..Default::default()
    }
}

/// Asks the registry, through the engine, whether `auth` (or no login)
/// may have `image`, without pulling it: the manifest digest it serves
/// (`sha256:…`), or the registry's refusal (`image_pull_failed: …`).
pub async fn registry_digest(
    docker: &bollard::Docker,
    image: &str,
    auth: Option<RegistryAuth>,
    deadline: Duration,
) -> Result<String, String> {
    let asked = tokio::time::timeout(deadline, docker.inspect_registry_image(image, auth.map(credentials))).await;
    match asked {
        Ok(Ok(found)) => found.descriptor.digest.ok_or_else(|| format!("image_pull_failed: {image}: the registry named no digest")),
        Ok(Err(e)) => Err(format!("image_pull_failed: {image}: {}", super::engine::engine_message(&e))),
        Err(_) => Err(format!("image_pull_failed: {image}: the registry did not answer within {}", humantime::format_duration(deadline))),
    }
}

/// The repository of a reference, without tag or digest.
pub fn repository(image: &str) -> &str {
    let (name, _) = split_reference(image);
    name.split_once('@').map_or(name, |(name, _)| name)
}

/// What an attempt records as the image it ran: the registry digest of the
/// reference's repository (`NAME@sha256:…`) when the engine holds one (the
/// image came from, or went to, that registry), else the engine's image id
/// (never another repository's digest of the same image).
pub fn image_digest(reference: &str, image: &bollard::models::ImageInspect) -> String {
    let (name, _) = split_reference(reference);
    let name = name.split_once('@').map_or(name, |(name, _)| name);
    let digests = image.repo_digests.as_deref().unwrap_or_default();
    // The engine names Docker Hub's images in full (`docker.io/library/…`
    // is shown as `busybox@…`): matched by the repository's own name.
    let matching = digests.iter().find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == name));
    match matching {
        Some(digest) => digest.clone(),
        None => image.id.clone().unwrap_or_default(),
    }
}

/// `name` and `tag` of a reference (a digest reference whole, no tag).
pub fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn fifty_callers_of_one_key_share_one_run_and_other_keys_run_apart() {
        let flights: Arc<SingleFlight<PullKey, Result<(), String>>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for i in 0..50 {
            let (flights, runs) = (flights.clone(), runs.clone());
            // Two logins: 45 of one project, 5 of another.
            let auth =
                RegistryAuth { registry: "r".into(), username: if i % 10 == 0 { "b".into() } else { "a".into() }, password: "p".into() };
            waiting.push(tokio::spawn(async move {
                let work = move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(())
                };
                flights.run(pull_key("img", Some(&auth)), work, Err("lost".into())).await
            }));
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per image and login");
        assert_eq!(flights.in_flight(), 0);
        // A caller that goes away leaves the run to the others.
        let f = flights.clone();
        let gone = tokio::spawn(async move {
            f.run(
                pull_key("slow", None),
                || async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err("no".to_string())
                },
                Err("lost".into()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gone.abort();
        let second = flights.run(pull_key("slow", None), || async { Ok(()) }, Err("lost".into())).await;
        assert_eq!(second, Err("no".to_string()), "joined the first run, which went on");
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/a/b:1"), ("127.0.0.1:5000/a/b", "1"));
        assert_eq!(split_reference("127.0.0.1:5000/a/b"), ("127.0.0.1:5000/a/b", "latest"));
        assert_eq!(split_reference("a@sha256:00"), ("a@sha256:00", ""));
    }

    #[test]
    fn an_attempt_records_its_repository_s_digest_else_the_image_id() {
        let image = bollard::models::ImageInspect {
            id: Some("sha256:1d".into()),
            repo_digests: Some(vec!["127.0.0.1:5000/other@sha256:aa".into(), "127.0.0.1:5000/app@sha256:bb".into()]),
            ..Default::default()
        };
        assert_eq!(image_digest("127.0.0.1:5000/app:1", &image), "127.0.0.1:5000/app@sha256:bb");
        assert_eq!(image_digest("127.0.0.1:5000/app@sha256:bb", &image), "127.0.0.1:5000/app@sha256:bb");
        assert_eq!(image_digest("busybox", &image), "sha256:1d", "never another repository's digest");
    }

    #[test]
    fn pull_progress_weighs_layers_by_size_and_counts_download_and_extraction() {
        let step = |id: &str, status: &str, current: i64, total: i64| bollard::models::CreateImageInfo {
            id: Some(id.into()),
            status: Some(status.into()),
            progress_detail: Some(bollard::models::ProgressDetail { current: Some(current), total: Some(total) }),
            ..Default::default()
        };
        let mut progress = PullProgress::default();
        assert_eq!(progress.percent(), 0);
        progress.step(&step("a", "Pulling fs layer", 0, 0));
        progress.step(&step("a", "Downloading", 300, 600));
        progress.step(&step("b", "Downloading", 0, 200));
        // 300 of 800 bytes downloaded, nothing extracted: 300 / 1600.
        assert_eq!(progress.percent(), 18);
        progress.step(&step("a", "Download complete", 0, 0));
        progress.step(&step("b", "Download complete", 0, 0));
        assert_eq!(progress.percent(), 50);
        progress.step(&step("a", "Extracting", 600, 600));
        progress.step(&step("b", "Pull complete", 0, 0));
        assert_eq!(progress.percent(), 99, "99 at most until the pull ends");
        // Sizes a registry made up do not overflow.
        progress.step(&step("c", "Downloading", i64::MAX, i64::MAX));
        progress.step(&step("d", "Extracting", i64::MAX, i64::MAX));
        assert!(progress.percent() <= 99);
    }
}

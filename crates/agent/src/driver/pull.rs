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

/// Pulls `image` on `docker` with `auth`, within `deadline`. The error is
/// the reason an attempt fails with: `image_pull_failed: …`.
pub async fn pull(docker: bollard::Docker, image: String, auth: Option<RegistryAuth>, deadline: Duration) -> Result<(), String> {
    let (name, tag) = split_reference(&image);
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
    let credentials = auth.map(|a| bollard::auth::DockerCredentials {
        username: Some(a.username),
        password: Some(a.password),
        // Docker Hub's logins name its index, as `docker login` does.
        serveraddress: Some(if a.registry == "docker.io" { "https://index.docker.io/v1/".to_string() } else { a.registry }),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let mut progress = docker.create_image(Some(options), None, credentials);
    let pulled = tokio::time::timeout(deadline, async {
        while let Some(step) = progress.next().await {
            step?;
        }
        Ok::<(), bollard::errors::Error>(())
    })
    .await;
    let result = match pulled {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("image_pull_failed: {}: {}", image, super::docker::engine_message(&e))),
        Err(_) => Err(format!(
            "image_pull_failed: {image}: the pull took longer than its pull_timeout ({})",
            humantime::format_duration(deadline)
        )),
    };
    tracing::info!(image, ok = result.is_ok(), seconds = started.elapsed().as_secs_f64(), "pulled an image");
    crate::metrics::metrics().pulls.inc();
    result
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
}

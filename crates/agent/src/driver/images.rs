//! Image cleanup: a node removes the images it pulled that no task used
//! for a while, once the engine's images take more room than allowed, as
//! the kubelet's image garbage collection does. Never removed: an image
//! this agent did not pull (put there by hand, or by another agent), and an
//! image an attempt of this node needs (assigned and about to start, or
//! running).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// When the image cleanup removes images.
#[derive(Debug, Clone)]
pub struct ImageCleanup {
    /// Images are removed only while the engine's images take more than
    /// this many bytes (the sum of their sizes as the engine lists them).
    pub above_bytes: u64,
    /// An image no task of this node used for this long may go.
    pub unused_for: Duration,
    /// Where the pulled images and their last use are kept across restarts.
    pub state_file: Option<PathBuf>,
}

/// Which images the attempts of this node need now. An attempt expects
/// an image from its assignment ([`ImageHolds::expect`]) and holds it from
/// when its launch spec names it until it ends ([`ImageHolds::hold`]);
/// the cleanup removes one image at a time, and only while no attempt
/// holds it and none is still to say which it needs.
#[derive(Default)]
pub struct ImageHolds {
    state: Mutex<HoldState>,
}

#[derive(Default)]
struct HoldState {
    counts: HashMap<String, usize>,
    /// Attempts assigned whose image is not known yet.
    unresolved: usize,
    /// The image being removed now, if any.
    removing: Option<String>,
}

/// An attempt that will name its image soon.
pub struct Expected {
    holds: std::sync::Arc<ImageHolds>,
    resolved: bool,
}

impl Drop for Expected {
    fn drop(&mut self) {
        if !self.resolved {
            self.holds.lock().unresolved -= 1;
        }
    }
}

/// An image held by an attempt until dropped.
pub struct ImageHold<'a> {
    holds: &'a ImageHolds,
    image: String,
}

impl Drop for ImageHold<'_> {
    fn drop(&mut self) {
        let mut state = self.holds.lock();
        if let Some(count) = state.counts.get_mut(&self.image) {
            *count -= 1;
            if *count == 0 {
                state.counts.remove(&self.image);
            }
        }
    }
}

/// The image the cleanup is removing, until dropped.
pub struct Removal<'a> {
    holds: &'a ImageHolds,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        self.holds.lock().removing = None;
    }
}

impl ImageHolds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HoldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt was assigned: until it holds its image (or gives up), no
    /// image is removed.
    pub fn expect(self: &std::sync::Arc<Self>) -> Expected {
        self.lock().unresolved += 1;
        Expected { holds: self.clone(), resolved: false }
    }

    /// The attempt `expected` needs `image` until the hold is dropped; waits
    /// while the cleanup is removing that very image (the attempt then
    /// pulls it again as its pull policy says).
    pub async fn hold(&self, image: &str, mut expected: Expected) -> ImageHold<'_> {
        let image = &listed_name(image);
        loop {
            {
                let mut state = self.lock();
                if state.removing.as_deref() != Some(image) {
                    *state.counts.entry(image.to_string()).or_default() += 1;
                    state.unresolved -= 1;
                    expected.resolved = true;
                    return ImageHold { holds: self, image: image.to_string() };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks `image` as being removed, if no attempt holds it and none is
    /// still to name its image; `None` otherwise.
    pub fn begin_removal(&self, image: &str) -> Option<Removal<'_>> {
        let image = &listed_name(image);
        let mut state = self.lock();
        if state.unresolved > 0 || state.counts.contains_key(image) || state.removing.is_some() {
            return None;
        }
        state.removing = Some(image.to_string());
        Some(Removal { holds: self })
    }

    /// The images held now, as [`listed_name`] names them.
    pub fn held(&self) -> Vec<String> {
        let mut images: Vec<String> = self.lock().counts.keys().cloned().collect();
        images.sort();
        images
    }
}

/// The images this agent pulled, and when a task of this node last used
/// each (milliseconds since the epoch), kept in a file when there is one.
#[derive(Default)]
pub struct ImageUse {
    path: Option<PathBuf>,
    last_used: Mutex<HashMap<String, i64>>,
}

impl ImageUse {
    /// What `path` holds (nothing if it is missing or unreadable: the
    /// cleanup then knows of no image to remove, which is safe).
    pub fn load(path: Option<PathBuf>) -> ImageUse {
        let last_used = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<HashMap<String, i64>>(&bytes).ok())
            .unwrap_or_default();
        ImageUse { path, last_used: Mutex::new(last_used) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This agent pulled `image` just now.
    pub fn pulled(&self, image: &str) {
        self.lock().insert(listed_name(image), shepherd_core::Timestamp::now().millis());
        self.save();
    }

    /// A task of this node uses `image` now (kept in memory; written with
    /// the next pull or cleanup).
    pub fn used(&self, image: &str) {
        if let Some(at) = self.lock().get_mut(&listed_name(image)) {
            *at = shepherd_core::Timestamp::now().millis();
        }
    }

    /// The image is gone from the engine.
    pub fn forget(&self, image: &str) {
        self.lock().remove(&listed_name(image));
        self.save();
    }

    /// The pulled images unused for `unused_for`, least recently used first.
    pub fn unused_for(&self, unused_for: Duration) -> Vec<String> {
        let before = shepherd_core::Timestamp::now().millis() - unused_for.as_millis() as i64;
        let mut old: Vec<(i64, String)> =
            self.lock().iter().filter(|(_, at)| **at <= before).map(|(image, at)| (*at, image.clone())).collect();
        old.sort();
        old.into_iter().map(|(_, image)| image).collect()
    }

    /// Writes the record (whole, then renamed into place).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let Ok(text) = serde_json::to_vec(&*self.lock()) else { return };
        let partial = path.with_extension("partial");
        if let Err(e) = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path)) {
            tracing::warn!(path = %path.display(), error = %e, "could not record the pulled images");
        }
    }
}

/// The reference an image is listed under by the engine: Docker Hub's
/// names short (`docker.io/library/busybox` is `busybox`), a digest
/// reference as it is, else with its tag (`:latest` when it names none).
/// Two spellings of one reference name the same image here.
pub fn listed_name(image: &str) -> String {
    let short = ["docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"]
        .iter()
        .find_map(|prefix| image.strip_prefix(prefix))
        .unwrap_or(image);
    if short.contains('@') {
        return short.to_string();
    }
    let (name, tag) = super::pull::split_reference(short);
    format!("{name}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_image_held_or_still_to_be_named_is_never_removed() {
        let holds = std::sync::Arc::new(ImageHolds::default());
        assert!(holds.begin_removal("a").is_some(), "nothing needs it");
        let expected = holds.expect();
        assert!(holds.begin_removal("a").is_none(), "an assigned attempt has not named its image yet");
        let hold = holds.hold("a", expected).await;
        assert!(holds.begin_removal("a").is_none(), "held");
        {
            let removal = holds.begin_removal("b");
            assert!(removal.is_some(), "another image may go");
            assert!(holds.begin_removal("c").is_none(), "one at a time");
        }
        drop(hold);
        assert_eq!(holds.held(), Vec::<String>::new());
        // An attempt naming the image being removed waits for the removal.
        let removal = holds.begin_removal("a").unwrap();
        let expected = holds.expect();
        let waiting = tokio::time::timeout(Duration::from_millis(150), holds.hold("a", expected)).await;
        assert!(waiting.is_err(), "waits while the image is being removed");
        drop(removal);
        let hold = holds.hold("a", holds.expect()).await;
        assert_eq!(holds.held(), vec!["a:latest".to_string()]);
        drop(hold);
        // A dropped expectation (the attempt gave up) frees the cleanup.
        drop(holds.expect());
        assert!(holds.begin_removal("a").is_some());
        // Spellings of one reference are one image.
        let hold = holds.hold("docker.io/library/busybox", holds.expect()).await;
        assert!(holds.begin_removal("busybox:latest").is_none());
        assert_eq!(holds.held(), vec!["busybox:latest".to_string()]);
        drop(hold);
    }

    #[test]
    fn pulled_images_are_remembered_across_restarts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let images = ImageUse::load(Some(path.clone()));
        images.pulled("r/a:1");
        images.pulled("r/b:1");
        images.used("never-pulled");
        images.save();
        let again = ImageUse::load(Some(path));
        let old = again.unused_for(Duration::ZERO);
        assert_eq!(old.len(), 2, "{old:?}");
        assert!(again.unused_for(Duration::from_secs(3600)).is_empty(), "used just now");
        again.forget("r/a:1");
        assert_eq!(again.unused_for(Duration::ZERO), vec!["r/b:1".to_string()]);
        assert_eq!(listed_name("busybox"), "busybox:latest");
        assert_eq!(listed_name("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(listed_name("docker.io/acme/app"), "acme/app:latest");
        assert_eq!(listed_name("r:5000/a@sha256:00"), "r:5000/a@sha256:00");
    }
}

//! Which projects may run each image this node pulled.
//!
//! An image a project pulled with its registry login is that project's:
//! another project on the node may not run the local copy, by tag, by
//! digest or warm, whatever its pull policy, until it pulled the image
//! itself (with its own login, or anonymously: then the registry serves it
//! to anyone and it is public). Images this agent did not pull (built or
//! loaded on the node by its admin) are the node's and public.
//!
//! Kept by the engine's image id (what a tag or a digest resolves to), in
//! a file of the agent's data directory so that a restart forgets nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

/// How a node lists, among its images, one that `PROJECT` pulled with its
/// login: `for=PROJECT=REFERENCE` (no reference holds `=`).
pub const FOR_PREFIX: &str = "for=";

/// Who may run an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Pulled without a login: the registry gives it to anyone.
    Public,
    /// Pulled with these projects' logins only.
    Projects(BTreeSet<String>),
}

/// What this node pulled, and for whom.
#[derive(Default)]
pub struct ImageAccess {
    by_id: Mutex<BTreeMap<String, Access>>,
    file: Option<PathBuf>,
}

impl ImageAccess {
    /// Reads the record from `file` (a missing or unreadable file: empty).
    pub fn load(file: Option<PathBuf>) -> ImageAccess {
        let by_id = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, Access>>(&bytes).ok())
            .unwrap_or_default();
        ImageAccess { by_id: Mutex::new(by_id), file }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Access>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any image here is restricted to some projects (if not, no
    /// start needs to look its image up).
    pub fn any_restricted(&self) -> bool {
        self.lock().values().any(|a| matches!(a, Access::Projects(_)))
    }

    /// Whether only some projects may run the image with this id.
    pub fn is_restricted(&self, image_id: &str) -> bool {
        matches!(self.lock().get(image_id), Some(Access::Projects(_)))
    }

    /// The projects the image with this id is restricted to (`None`: anyone's).
    pub fn projects_of(&self, image_id: &str) -> Option<BTreeSet<String>> {
        match self.lock().get(image_id) {
            Some(Access::Projects(projects)) => Some(projects.clone()),
            _ => None,
        }
    }

    /// Whether `project` may run the image with this id as it is here.
    pub fn allows(&self, image_id: &str, project: &str) -> bool {
        match self.lock().get(image_id) {
            None | Some(Access::Public) => true,
            Some(Access::Projects(projects)) => projects.contains(project),
        }
    }

    /// A pull of the image with this id succeeded: with `project`'s login
    /// (`Some`), or without any (`None`: public from now on).
    pub fn pulled(&self, image_id: &str, project: Option<&str>) {
        {
            let mut by_id = self.lock();
            match project {
                None => {
                    by_id.insert(image_id.to_string(), Access::Public);
                }
                Some(project) => match by_id.entry(image_id.to_string()).or_insert_with(|| Access::Projects(BTreeSet::new())) {
                    Access::Public => {}
                    Access::Projects(projects) => {
                        projects.insert(project.to_string());
                    }
                },
            }
        }
        self.save();
    }

    /// Forgets images the engine no longer has.
    pub fn retain(&self, present: &BTreeSet<String>) {
        let changed = {
            let mut by_id = self.lock();
            let before = by_id.len();
            by_id.retain(|id, _| present.contains(id));
            before != by_id.len()
        };
        if changed {
            self.save();
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let Ok(bytes) = serde_json::to_vec(&*self.lock()) else { return };
        // Written whole, then renamed: a crash never leaves half a record.
        let partial = file.with_extension("partial");
        let written = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "could not keep the record of which projects may run which images");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_pulled_with_a_login_is_that_project_s_until_pulled_without() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image-access.json");
        let access = ImageAccess::load(Some(file.clone()));
        assert!(access.allows("sha256:local", "anyone"), "what the agent did not pull is the node's");
        assert!(!access.any_restricted());
        access.pulled("sha256:private", Some("a"));
        assert!(access.allows("sha256:private", "a"));
        assert!(!access.allows("sha256:private", "b"));
        assert!(access.any_restricted());
        access.pulled("sha256:private", Some("b"));
        assert!(access.allows("sha256:private", "b"), "b pulled it with its own login");
        assert!(!access.allows("sha256:private", "c"));
        // Kept across a restart.
        let again = ImageAccess::load(Some(file));
        assert!(!again.allows("sha256:private", "c") && again.allows("sha256:private", "a"));
        again.pulled("sha256:private", None);
        assert!(again.allows("sha256:private", "c"), "the registry gave it without a login: public");
        again.pulled("sha256:private", Some("d"));
        assert!(again.allows("sha256:private", "c"), "a later login does not make it private again");
        again.retain(&BTreeSet::new());
        assert!(!again.any_restricted());
    }
}

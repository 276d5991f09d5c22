//! Codes: push (a new revision), read, list, revisions, roll back, delete;
//! each checked against the caller's project and audited.

use super::audit::audit_entry;
use super::error::ServiceError;
use crate::service::auth::Caller;
use shepherd_core::{Code, CodeSpec, FieldError, Limits, Timestamp};
use shepherd_store::Store;
use std::sync::Arc;

/// Code operations.
pub struct CodeService {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub engine: shepherd_sched::SharedEngine,
    /// Runtimes (IronWorker's stacks) and the images that run their packages.
    pub stacks: Arc<std::collections::BTreeMap<String, String>>,
}

/// The largest code package (a zip).
pub const MAX_PACKAGE_BYTES: usize = 32 * 1024 * 1024;

/// A stored code package.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredPackage {
    /// SHA-256 of the zip, lowercase hex: name it in a code's `package.digest`.
    pub digest: String,
    pub size: u64,
    /// How many files it holds.
    pub file_count: usize,
    /// The first [`FILES_SHOWN`] of them.
    pub files: Vec<String>,
}

/// File names a stored package's answer lists at most.
pub const FILES_SHOWN: usize = 100;

/// A project's package, as listed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PackageEntry {
    pub digest: String,
    pub size: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A project's packages, oldest first, with its quota.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PackageList {
    pub packages: Vec<PackageEntry>,
    /// Most packages the project may store.
    pub max_packages: u64,
    /// Most bytes they may add up to.
    pub max_bytes: u64,
}

/// The project a caller means: a project token's own (naming another is
/// refused), else the one asked for, else `default`.
pub fn project_of(caller: &Caller, asked: Option<&str>) -> Result<String, ServiceError> {
    match (caller.project(), asked.filter(|p| !p.is_empty())) {
        (Some(own), Some(asked)) if own != asked => Err(ServiceError::Forbidden {
            field: "project".into(),
            message: format!("this token belongs to project `{own}`, not `{asked}`"),
        }),
        (Some(own), _) => Ok(own.to_string()),
        (None, Some(asked)) => {
            if shepherd_core::is_project_name(asked) {
                Ok(asked.to_string())
            } else {
                Err(FieldError::new("project", format!("`{asked}` is not a project name")).into())
            }
        }
        (None, None) => Ok(shepherd_core::TaskSpec::default_project()),
    }
}

/// The project a caller may read in: as [`project_of`], but another
/// project answers as a missing one (404), never "forbidden".
pub fn readable_project(caller: &Caller, asked: Option<&str>) -> Result<String, ServiceError> {
    project_of(caller, asked).map_err(|e| match e {
        ServiceError::Forbidden { .. } => ServiceError::Missing(format!("project {}", asked.unwrap_or_default())),
        other => other,
    })
}

impl CodeService {
    /// Stores a new revision of a code, after checking that a task of it
    /// alone would be valid.
    pub async fn push(&self, caller: &Caller, mut spec: CodeSpec) -> Result<Code, ServiceError> {
        spec.project = project_of(caller, Some(&spec.project))?;
        if let Some(package) = &spec.package {
            self.check_package(&spec.project, package).await?;
            if spec.image.is_empty() {
                spec.image = self.stack_image(&package.runtime)?;
            }
            if spec.command.is_empty() {
                spec.command = package.command();
            }
        }
        spec.validate(&self.limits)?;
        if let Some(profile) = spec.profile.as_deref().filter(|p| !self.engine.get().has_profile(p)) {
            return Err(FieldError::new("profile", format!("unknown profile `{profile}`")).into());
        }
        let project = spec.project.clone();
        self.check_code_quota(&project, &spec.name).await?;
        let code = self.store.push_code(&project, spec, Timestamp::now(), None).await?;
        self.audit(caller, &project, "code.push", &code, None).await;
        Ok(code)
    }

    /// Stores a code package (a zip) in a project, checked: at most
    /// [`MAX_PACKAGE_BYTES`], a zip whose files stay inside it.
    ///
    /// The zip is read to its end (off the async runtime: it is CPU work),
    /// so that names given twice, a file where a directory must be, or a
    /// header that lies about a size are refused now, not by every node.
    /// Within the project's package quota (count and bytes); the same
    /// bytes again are the package it has.
    pub async fn put_package(&self, caller: &Caller, project: Option<&str>, zip: Vec<u8>) -> Result<StoredPackage, ServiceError> {
        let project = readable_project(caller, project)?;
        if zip.len() > MAX_PACKAGE_BYTES {
            return Err(ServiceError::TooLarge(format!("a code package is at most {MAX_PACKAGE_BYTES} bytes, not {}", zip.len())));
        }
        let (zip, checked) = tokio::task::spawn_blocking(move || {
            let checked = shepherd_agent::package::verify(&zip).map(|files| (files, shepherd_agent::package::sha256_hex(&zip)));
            (zip, checked)
        })
        .await
        .map_err(|_| ServiceError::Store(shepherd_store::StoreError::Closed))?;
        let (files, digest) = checked.map_err(|e| FieldError::new("body", e.to_string()))?;
        let size = zip.len() as u64;
        let limits = self.project_limits(&project).await?;
        let stored = self.store.list_packages(&project).await?;
        if !stored.iter().any(|p| p.digest == digest) {
            let used: u64 = stored.iter().map(|p| p.size).sum();
            if stored.len() as u64 >= limits.packages() {
                return Err(ServiceError::QuotaExceeded(format!(
                    "project {project} may store {} code packages and has {}: remove some (shepherd package rm)",
                    limits.packages(),
                    stored.len()
                )));
            }
            if used + size > limits.package_bytes() {
                return Err(ServiceError::QuotaExceeded(format!(
                    "project {project} may store {} bytes of code packages; it has {used} and this adds {size}",
                    limits.package_bytes()
                )));
            }
            self.store.put_package(&project, &digest, zip, Timestamp::now()).await?;
            let line = audit_entry(caller, Some(&project), "package.put", &digest, Some(format!("{size} bytes")));
            if let Err(e) = self.store.append_audit(vec![line]).await {
                tracing::error!(error = %e, "could not write the audit log");
            }
        }
        let file_count = files.len();
        Ok(StoredPackage { digest, size, file_count, files: files.into_iter().take(FILES_SHOWN).collect() })
    }

    /// A project's packages and its package quota.
    pub async fn packages(&self, caller: &Caller, project: Option<&str>) -> Result<PackageList, ServiceError> {
        let project = readable_project(caller, project)?;
        let limits = self.project_limits(&project).await?;
        let packages = self
            .store
            .list_packages(&project)
            .await?
            .into_iter()
            .map(|p| PackageEntry { digest: p.digest, size: p.size, created_at: p.created_at })
            .collect();
        Ok(PackageList { packages, max_packages: limits.packages(), max_bytes: limits.package_bytes() })
    }

    /// Removes a project's package, unless a live code runs it or an
    /// unfinished task does (409).
    pub async fn delete_package(&self, caller: &Caller, project: Option<&str>, digest: &str) -> Result<(), ServiceError> {
        let project = readable_project(caller, project)?;
        if self.store.package_size(&project, digest).await?.is_none() {
            return Err(ServiceError::Missing(format!("package {digest} in project `{project}`")));
        }
        if let Some(why) = self.package_kept(&project, digest).await? {
            return Err(ServiceError::Conflict(format!("package {digest} is in use: {why}")));
        }
        self.store.delete_package(&project, digest).await?;
        let line = audit_entry(caller, Some(&project), "package.delete", digest, None);
        if let Err(e) = self.store.append_audit(vec![line]).await {
            tracing::error!(error = %e, "could not write the audit log");
        }
        Ok(())
    }

    /// Why a package must stay: a live code runs it, or an unfinished task.
    async fn package_kept(&self, project: &str, digest: &str) -> Result<Option<String>, ServiceError> {
        let codes = self.store.list_codes(Some(project.to_string())).await?;
        if let Some(code) = codes.iter().find(|c| c.spec.package.as_ref().is_some_and(|p| p.digest == digest)) {
            return Ok(Some(format!("code `{}` runs it", code.spec.name)));
        }
        if self.store.package_in_use(project, digest).await? {
            return Ok(Some("an unfinished task runs it".into()));
        }
        Ok(None)
    }

    /// The project's limits (the defaults for a project without a record).
    async fn project_limits(&self, project: &str) -> Result<shepherd_core::ProjectLimits, ServiceError> {
        Ok(self.store.get_project(project).await?.map(|p| p.limits).unwrap_or_default())
    }

    /// A new code within the project's live codes, a new revision within
    /// the code's revisions.
    async fn check_code_quota(&self, project: &str, name: &str) -> Result<(), ServiceError> {
        let limits = self.project_limits(project).await?;
        let codes = self.store.list_codes(Some(project.to_string())).await?;
        if !codes.iter().any(|c| c.spec.name == name) && codes.len() as u64 >= limits.codes() {
            return Err(ServiceError::QuotaExceeded(format!(
                "project {project} may have {} codes and has {}: remove some (shepherd code rm)",
                limits.codes(),
                codes.len()
            )));
        }
        let revisions = self.store.code_revisions(project, name).await?.len() as u64;
        if revisions >= limits.code_revisions() {
            return Err(ServiceError::QuotaExceeded(format!(
                "code `{name}` has {revisions} revisions, the most project {project} may keep (the admin raises max_code_revisions)"
            )));
        }
        Ok(())
    }

    /// The image of a runtime's stack.
    pub fn stack_image(&self, runtime: &str) -> Result<String, ServiceError> {
        self.stacks.get(runtime).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.stacks.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            FieldError::new(
                "package.runtime",
                format!("no image for the runtime `{runtime}`: the admin maps runtimes with `--stack {runtime}=IMAGE` (mapped: {known})"),
            )
            .into()
        })
    }

    /// The project has the package, and it holds the executable.
    async fn check_package(&self, project: &str, package: &shepherd_core::PackageRef) -> Result<(), ServiceError> {
        let Some(zip) = self.store.get_package(project, &package.digest).await? else {
            return Err(FieldError::new("package.digest", format!("project `{project}` has no package {}", package.digest)).into());
        };
        let files = shepherd_agent::package::files(&zip).map_err(|e| FieldError::new("package.digest", e.to_string()))?;
        if !files.contains(&package.executable) {
            let message = format!("the package has no file `{}`; it holds: {}", package.executable, files.join(", "));
            return Err(FieldError::new("package.executable", message).into());
        }
        Ok(())
    }

    /// A code's latest revision, or the one asked for.
    pub async fn get(&self, caller: &Caller, project: Option<&str>, name: &str, revision: Option<u32>) -> Result<Code, ServiceError> {
        let project = readable_project(caller, project)?;
        self.store.get_code(&project, name, revision).await?.ok_or_else(|| missing(&project, name, revision))
    }

    /// A code (at its latest revision or the one asked) with its package's zip.
    pub async fn package_zip(
        &self,
        caller: &Caller,
        project: Option<&str>,
        name: &str,
        revision: Option<u32>,
    ) -> Result<(Code, Vec<u8>), ServiceError> {
        let code = self.get(caller, project, name, revision).await?;
        let package = code.spec.package.as_ref().ok_or_else(|| ServiceError::Missing(format!("package: code {name} has none")))?;
        let zip =
            self.store.get_package(&code.spec.project, &package.digest).await?.ok_or_else(|| ServiceError::Missing("package".into()))?;
        Ok((code, zip))
    }

    /// Codes of the caller's project (or, for the admin, of the one asked, or all).
    pub async fn list(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<Code>, ServiceError> {
        let project = match (caller.project(), project) {
            (None, None) => None,
            _ => Some(readable_project(caller, project)?),
        };
        Ok(self.store.list_codes(project).await?)
    }

    /// A code's revisions, newest first.
    pub async fn revisions(&self, caller: &Caller, project: Option<&str>, name: &str) -> Result<Vec<Code>, ServiceError> {
        let project = readable_project(caller, project)?;
        let revisions = self.store.code_revisions(&project, name).await?;
        if revisions.is_empty() {
            return Err(missing(&project, name, None));
        }
        Ok(revisions)
    }

    /// Makes an earlier revision current again, as a new revision (a copy
    /// of it), so that the history only grows.
    pub async fn rollback(&self, caller: &Caller, project: Option<&str>, name: &str, revision: u32) -> Result<Code, ServiceError> {
        let project = readable_project(caller, project)?;
        let old = self.store.get_code(&project, name, Some(revision)).await?.ok_or_else(|| missing(&project, name, Some(revision)))?;
        self.check_code_quota(&project, name).await?;
        let code = self.store.push_code(&project, old.spec, Timestamp::now(), Some(revision)).await?;
        self.audit(caller, &project, "code.rollback", &code, Some(format!("to revision {revision}"))).await;
        Ok(code)
    }

    /// Deletes a code; its tasks keep running. The packages its revisions
    /// ran that nothing else needs (no live code, no unfinished task) go
    /// with it.
    pub async fn delete(&self, caller: &Caller, project: Option<&str>, name: &str) -> Result<(), ServiceError> {
        let project = readable_project(caller, project)?;
        let revisions = self.store.code_revisions(&project, name).await?;
        if !self.store.delete_code(&project, name).await? {
            return Err(missing(&project, name, None));
        }
        let line = audit_entry(caller, Some(&project), "code.delete", name, None);
        if let Err(e) = self.store.append_audit(vec![line]).await {
            tracing::error!(error = %e, code = name, "could not write the audit log");
        }
        let mut digests: Vec<String> = revisions.into_iter().filter_map(|c| c.spec.package.map(|p| p.digest)).collect();
        digests.sort();
        digests.dedup();
        for digest in digests {
            if self.store.package_size(&project, &digest).await?.is_some() && self.package_kept(&project, &digest).await?.is_none() {
                self.store.delete_package(&project, &digest).await?;
                let line = audit_entry(caller, Some(&project), "package.delete", &digest, Some(format!("with code {name}")));
                if let Err(e) = self.store.append_audit(vec![line]).await {
                    tracing::error!(error = %e, "could not write the audit log");
                }
            }
        }
        Ok(())
    }

    async fn audit(&self, caller: &Caller, project: &str, action: &str, code: &Code, detail: Option<String>) {
        let target = format!("{}@{}", code.spec.name, code.revision);
        if let Err(e) = self.store.append_audit(vec![audit_entry(caller, Some(project), action, &target, detail)]).await {
            tracing::error!(error = %e, code = %target, "could not write the audit log");
        }
    }
}

fn missing(project: &str, name: &str, revision: Option<u32>) -> ServiceError {
    let what = revision.map_or(String::new(), |r| format!(" revision {r}"));
    ServiceError::Missing(format!("code `{name}`{what} in project `{project}`"))
}

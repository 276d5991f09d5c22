//! Codes: push (a new revision), read, list, revisions, roll back, delete;
//! each checked against the caller's project and audited.

use super::tasks::{audit_entry, TaskError};
use crate::auth::Caller;
use shepherd_core::{Code, CodeSpec, FieldError, Limits, Timestamp};
use shepherd_store::Store;
use std::sync::Arc;

/// Code operations.
pub struct CodeService {
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub engine: Arc<shepherd_sched::Engine>,
}

/// The project a caller means: a project token's own (naming another is
/// refused), else the one asked for, else `default`.
pub fn project_of(caller: &Caller, asked: Option<&str>) -> Result<String, TaskError> {
    match (caller.project(), asked.filter(|p| !p.is_empty())) {
        (Some(own), Some(asked)) if own != asked => {
            Err(TaskError::Forbidden { field: "project".into(), message: format!("this token belongs to project `{own}`, not `{asked}`") })
        }
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

impl CodeService {
    /// Stores a new revision of a code, after checking that a task of it
    /// alone would be valid.
    pub async fn push(&self, caller: &Caller, mut spec: CodeSpec) -> Result<Code, TaskError> {
        spec.project = project_of(caller, Some(&spec.project))?;
        spec.validate(&self.limits)?;
        if let Some(profile) = spec.profile.as_deref().filter(|p| !self.engine.has_profile(p)) {
            return Err(FieldError::new("profile", format!("unknown profile `{profile}`")).into());
        }
        if let Some(package) = &spec.package {
            if self.store.package_size(&spec.project, &package.digest).await?.is_none() {
                let message = format!("project `{}` has no package {}", spec.project, package.digest);
                return Err(FieldError::new("package.digest", message).into());
            }
        }
        let project = spec.project.clone();
        let code = self.store.push_code(&project, spec, Timestamp::now(), None).await?;
        self.audit(caller, &project, "code.push", &code, None).await;
        Ok(code)
    }

    /// A code's latest revision, or the one asked for.
    pub async fn get(&self, caller: &Caller, project: Option<&str>, name: &str, revision: Option<u32>) -> Result<Code, TaskError> {
        let project = project_of(caller, project)?;
        self.store.get_code(&project, name, revision).await?.ok_or_else(|| missing(&project, name, revision))
    }

    /// Codes of the caller's project (or, for the admin, of the one asked, or all).
    pub async fn list(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<Code>, TaskError> {
        let project = match (caller.project(), project) {
            (None, None) => None,
            _ => Some(project_of(caller, project)?),
        };
        Ok(self.store.list_codes(project).await?)
    }

    /// A code's revisions, newest first.
    pub async fn revisions(&self, caller: &Caller, project: Option<&str>, name: &str) -> Result<Vec<Code>, TaskError> {
        let project = project_of(caller, project)?;
        let revisions = self.store.code_revisions(&project, name).await?;
        if revisions.is_empty() {
            return Err(missing(&project, name, None));
        }
        Ok(revisions)
    }

    /// Makes an earlier revision current again, as a new revision (a copy
    /// of it), so that the history only grows.
    pub async fn rollback(&self, caller: &Caller, project: Option<&str>, name: &str, revision: u32) -> Result<Code, TaskError> {
        let project = project_of(caller, project)?;
        let old = self.store.get_code(&project, name, Some(revision)).await?.ok_or_else(|| missing(&project, name, Some(revision)))?;
        let code = self.store.push_code(&project, old.spec, Timestamp::now(), Some(revision)).await?;
        self.audit(caller, &project, "code.rollback", &code, Some(format!("to revision {revision}"))).await;
        Ok(code)
    }

    /// Deletes a code; its tasks keep running.
    pub async fn delete(&self, caller: &Caller, project: Option<&str>, name: &str) -> Result<(), TaskError> {
        let project = project_of(caller, project)?;
        if !self.store.delete_code(&project, name).await? {
            return Err(missing(&project, name, None));
        }
        let line = audit_entry(caller, Some(&project), "code.delete", name, None);
        if let Err(e) = self.store.append_audit(vec![line]).await {
            tracing::error!(error = %e, code = name, "could not write the audit log");
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

fn missing(project: &str, name: &str, revision: Option<u32>) -> TaskError {
    let what = revision.map_or(String::new(), |r| format!(" revision {r}"));
    TaskError::Missing(format!("code `{name}`{what} in project `{project}`"))
}

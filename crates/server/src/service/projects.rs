//! Tenants: projects and their limits and policy, API tokens, secrets, and
//! the audit log, with who may do what.
//!
//! The admin token manages projects, limits, policies and tokens; a project
//! token sees its own project, lists and revokes its own tokens, sets its
//! own secrets and reads its own audit log. Another project answers as a
//! missing one does.

use crate::service::audit;
use crate::service::auth::{mint_token, Auth, Caller};
use crate::service::error::{Refusal, ServiceError};
use shepherd_core::registry::{is_registry_host, registry_of_secret, secret_name};
use shepherd_core::{is_project_name, is_secret_name, FieldError, ProjectLimits, ProjectPolicy, RegistryAuth, RegistryLogin, Timestamp};
use shepherd_store::{AuditEntry, Project, SecretInfo, Store, TokenRecord};
use std::sync::Arc;
use tokio::sync::Notify;

/// The largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Project, token, secret and audit operations.
pub struct ProjectService {
    pub store: Arc<dyn Store>,
    /// Token and limit lookups (forgotten when they change).
    pub auth: Arc<Auth>,
    /// Wakes the scheduler when limits change.
    pub wakeup: Arc<Notify>,
}

/// A new token: its record and the token itself (shown once).
pub struct NewToken {
    pub record: TokenRecord,
    pub token: String,
}

fn limits_text(limits: &ProjectLimits) -> String {
    serde_json::to_string(limits).unwrap_or_default()
}

impl ProjectService {
    /// The project, if the caller may see it; a missing one and another
    /// project's answer alike.
    pub async fn visible(&self, caller: &Caller, name: &str) -> Result<Project, ServiceError> {
        caller.require_project(name)?;
        self.store.get_project(name).await?.ok_or_else(|| ServiceError::Missing(format!("project {name}")))
    }

    async fn issue_token(&self, project: &str, name: &str) -> Result<NewToken, ServiceError> {
        let (record, token) = mint_token(self.store.as_ref(), project, name).await?;
        Ok(NewToken { record, token })
    }

    /// Creates a project with its limits and its first token (admin).
    pub async fn create(&self, caller: &Caller, name: &str, limits: ProjectLimits) -> Result<(Project, NewToken), ServiceError> {
        caller.require_admin()?;
        if !is_project_name(name) {
            return Err(FieldError::new("name", "1-63 of lower-case letters, digits, - and _").into());
        }
        limits.validate()?;
        let project = Project { name: name.to_string(), created_at: Timestamp::now(), limits, policy: Default::default() };
        if !self.store.create_project(project.clone()).await? {
            return Err(ServiceError::refused(Refusal::Conflict, "exists", format!("project {name} exists")).on_field("name"));
        }
        self.auth.forget();
        let token = self.issue_token(name, "default").await?;
        let store = self.store.as_ref();
        audit::record(store, caller, Some(name), "project.create", name, Some(format!("limits {}", limits_text(&limits)))).await;
        audit::record(store, caller, Some(name), "token.create", &token.record.id, None).await;
        Ok((project, token))
    }

    /// The projects the caller may see.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Project>, ServiceError> {
        Ok(self.store.list_projects().await?.into_iter().filter(|p| caller.can_access(&p.name)).collect())
    }

    /// Sets a project's limits (admin).
    pub async fn set_limits(&self, caller: &Caller, name: &str, limits: ProjectLimits) -> Result<Project, ServiceError> {
        self.visible(caller, name).await?;
        caller.require_admin()?;
        limits.validate()?;
        self.store.set_project_limits(name, limits).await?;
        self.auth.forget();
        audit::record(self.store.as_ref(), caller, Some(name), "project.update", name, Some(format!("limits {}", limits_text(&limits))))
            .await;
        self.wakeup.notify_one();
        self.visible(caller, name).await
    }

    /// Sets a project's policy: its volume drivers and options, networks,
    /// egress and devices (admin).
    pub async fn set_policy(&self, caller: &Caller, project: &str, policy: ProjectPolicy) -> Result<ProjectPolicy, ServiceError> {
        self.visible(caller, project).await?;
        caller.require_admin()?;
        policy.validate()?;
        self.store.set_project_policy(project, policy.clone()).await?;
        let detail = serde_json::to_string(&policy).unwrap_or_default();
        audit::record(self.store.as_ref(), caller, Some(project), "project.policy", project, Some(detail)).await;
        Ok(policy)
    }

    /// Makes another token for a project (admin); `label` names it.
    pub async fn create_token(&self, caller: &Caller, project: &str, label: Option<String>) -> Result<NewToken, ServiceError> {
        self.visible(caller, project).await?;
        caller.require_admin()?;
        let label = label.unwrap_or_else(|| "default".into());
        if label.is_empty() || label.len() > 100 {
            return Err(FieldError::new("name", "1-100 characters").into());
        }
        let token = self.issue_token(project, &label).await?;
        audit::record(self.store.as_ref(), caller, Some(project), "token.create", &token.record.id, Some(label)).await;
        Ok(token)
    }

    /// A project's tokens (never the tokens themselves).
    pub async fn tokens(&self, caller: &Caller, project: &str) -> Result<Vec<TokenRecord>, ServiceError> {
        self.visible(caller, project).await?;
        Ok(self.store.list_tokens(project).await?)
    }

    /// Revokes a token of a project: effective at once here.
    pub async fn revoke_token(&self, caller: &Caller, project: &str, id: &str) -> Result<(), ServiceError> {
        self.visible(caller, project).await?;
        if !self.store.revoke_token(project, id, Timestamp::now()).await? {
            return Err(ServiceError::Missing(format!("live token {id} in project {project}")));
        }
        self.auth.forget();
        audit::record(self.store.as_ref(), caller, Some(project), "token.revoke", id, None).await;
        Ok(())
    }

    /// Sets a secret of a project.
    pub async fn put_secret(&self, caller: &Caller, project: &str, name: &str, value: String) -> Result<(), ServiceError> {
        self.visible(caller, project).await?;
        if !is_secret_name(name) {
            return Err(FieldError::new("name", "1-64 of letters, digits, . _ - (not starting with .)").into());
        }
        if shepherd_core::tenant::is_reserved_secret_name(name) {
            return Err(FieldError::new(
                "name",
                "`registry.*` names are registry logins: set them with PUT /v1/projects/{p}/registries/{host}",
            )
            .into());
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(FieldError::new("value", format!("at most {MAX_SECRET_BYTES} bytes")).into());
        }
        self.store.put_secret(project, name, value.into_bytes(), Timestamp::now()).await?;
        audit::record(self.store.as_ref(), caller, Some(project), "secret.set", name, None).await;
        Ok(())
    }

    /// Removes a secret of a project.
    pub async fn delete_secret(&self, caller: &Caller, project: &str, name: &str) -> Result<(), ServiceError> {
        self.visible(caller, project).await?;
        // Shepherd's own (the webhook signing key) and registry logins are not
        // removed here: the webhook key rotates, logins have their own route.
        if !is_secret_name(name) || shepherd_core::tenant::is_reserved_secret_name(name) || !self.store.delete_secret(project, name).await?
        {
            return Err(ServiceError::Missing(format!("secret {name} in project {project}")));
        }
        audit::record(self.store.as_ref(), caller, Some(project), "secret.delete", name, None).await;
        Ok(())
    }

    /// The names (never the values) of a project's secrets.
    pub async fn secrets(&self, caller: &Caller, project: &str) -> Result<Vec<SecretInfo>, ServiceError> {
        self.visible(caller, project).await?;
        // Names starting with `.` are Shepherd's own (the webhook secret).
        Ok(self
            .store
            .list_secrets(project)
            .await?
            .into_iter()
            .filter(|s| !shepherd_core::tenant::is_reserved_secret_name(&s.name))
            .collect())
    }

    /// A page of the audit log, newest first: a project token's own
    /// project only; the admin's, one project's or everything.
    pub async fn audit(
        &self,
        caller: &Caller,
        project: Option<String>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        let mut project = project;
        if let Some(own) = caller.project() {
            if project.as_deref().is_some_and(|p| p != own) {
                return Err(ServiceError::Forbidden { field: "project".into(), message: format!("this token sees project `{own}` only") });
            }
            project = Some(own.to_string());
        }
        Ok(self.store.list_audit(project, before, limit).await?)
    }

    /// Stores a project's login to a registry (kept apart from its secrets).
    pub async fn registry_login(&self, caller: &Caller, project: &str, registry: &str, login: RegistryLogin) -> Result<(), ServiceError> {
        self.visible(caller, project).await?;
        if !is_registry_host(registry) {
            return Err(
                FieldError::new("registry", format!("`{registry}`: a registry is host[:port], e.g. ghcr.io or 127.0.0.1:5000")).into()
            );
        }
        if login.username.is_empty() || login.username.len() > 256 {
            return Err(FieldError::new("username", "1-256 characters").into());
        }
        if login.password.is_empty() || login.password.len() > 8192 {
            return Err(FieldError::new("password", "1-8192 characters").into());
        }
        let username = login.username.clone();
        let value =
            serde_json::to_vec(&RegistryAuth { registry: registry.to_string(), username: login.username, password: login.password })
                .map_err(|e| FieldError::new("password", e.to_string()))?;
        self.store.put_secret(project, &secret_name(registry), value, Timestamp::now()).await?;
        audit::record(self.store.as_ref(), caller, Some(project), "registry.login", registry, Some(format!("as {username}"))).await;
        Ok(())
    }

    /// Forgets a project's login to a registry.
    pub async fn registry_logout(&self, caller: &Caller, project: &str, registry: &str) -> Result<(), ServiceError> {
        self.visible(caller, project).await?;
        if !self.store.delete_secret(project, &secret_name(registry)).await? {
            return Err(ServiceError::Missing(format!("login to {registry} in project {project}")));
        }
        audit::record(self.store.as_ref(), caller, Some(project), "registry.logout", registry, None).await;
        Ok(())
    }

    /// The registries a project has logins to, and when each was set.
    pub async fn registries(&self, caller: &Caller, project: &str) -> Result<Vec<(String, Timestamp)>, ServiceError> {
        self.visible(caller, project).await?;
        Ok(self
            .store
            .list_secrets(project)
            .await?
            .into_iter()
            .filter_map(|s| registry_of_secret(&s.name).map(|r| (r, s.updated_at)))
            .collect())
    }

    /// The project's webhook signing secret (made on first use); reading it is audited.
    pub async fn webhook_secret(&self, caller: &Caller, project: &str) -> Result<String, ServiceError> {
        self.visible(caller, project).await?;
        let secret = crate::loops::webhooks::project_secret(self.store.as_ref(), project).await?;
        audit::record(self.store.as_ref(), caller, Some(project), "webhook_secret.read", project, None).await;
        Ok(secret)
    }

    /// A new webhook signing secret for the project.
    pub async fn rotate_webhook_secret(&self, caller: &Caller, project: &str) -> Result<String, ServiceError> {
        self.visible(caller, project).await?;
        let secret = crate::loops::webhooks::rotate_secret(self.store.as_ref(), project).await?;
        audit::record(self.store.as_ref(), caller, Some(project), "webhook_secret.rotate", project, None).await;
        Ok(secret)
    }
}

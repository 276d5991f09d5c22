//! Projects, API tokens, secrets and registry logins (PostgreSQL).

use super::connection::PgStore;
use super::sql::{corrupt, error};
use crate::{Project, SecretInfo, StoreError, TokenRecord};
use shepherd_core::Timestamp;
use tokio_postgres::Row;

/// A token from a row of `id, project, name, created_at, revoked_at`.
fn token_from(row: &Row) -> TokenRecord {
    TokenRecord {
        id: row.get(0),
        project: row.get(1),
        name: row.get(2),
        created_at: Timestamp(row.get(3)),
        revoked_at: row.get::<_, Option<i64>>(4).map(Timestamp),
    }
}

/// A project from a row of `name, created_at, limits, policy`.
fn project_from(row: &Row) -> Result<Project, StoreError> {
    Ok(Project {
        name: row.get(0),
        created_at: Timestamp(row.get(1)),
        limits: serde_json::from_str(row.get::<_, &str>(2)).map_err(|e| corrupt("project limits", e))?,
        policy: serde_json::from_str(row.get::<_, &str>(3)).map_err(|e| corrupt("project policy", e))?,
    })
}

/// The [`Store`](crate::Store) methods on projects, tokens, secrets and
/// registry logins, as `pg_` methods its impl (in `mod.rs`) hands each call
/// to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_create_project(&self, project: Project) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let limits = serde_json::to_string(&project.limits).map_err(|e| corrupt("limits", e))?;
        Ok(client
            .execute(
                "INSERT INTO projects (name, created_at, limits) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[&project.name, &project.created_at.millis(), &limits],
            )
            .await
            .map_err(error)?
            > 0)
    }

    pub(super) async fn pg_get_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT name, created_at, limits, policy FROM projects WHERE name = $1", &[&name])
            .await
            .map_err(error)?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    pub(super) async fn pg_list_projects(&self) -> Result<Vec<Project>, StoreError> {
        let client = self.client().await?;
        client
            .query("SELECT name, created_at, limits, policy FROM projects ORDER BY name", &[])
            .await
            .map_err(error)?
            .iter()
            .map(project_from)
            .collect()
    }

    pub(super) async fn pg_set_project_limits(&self, name: &str, limits: shepherd_core::ProjectLimits) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let limits = serde_json::to_string(&limits).map_err(|e| corrupt("limits", e))?;
        Ok(client.execute("UPDATE projects SET limits = $2 WHERE name = $1", &[&name, &limits]).await.map_err(error)? > 0)
    }

    pub(super) async fn pg_registry_login_projects(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT DISTINCT project FROM secrets WHERE name LIKE 'registry.%' ORDER BY project", &[]).await.map_err(error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) async fn pg_registry_auth(&self, project: &str, image: &str) -> Result<Option<shepherd_core::RegistryAuth>, StoreError> {
        let client = self.client().await?;
        let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(image));
        let value = client
            .query_opt("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&project, &login])
            .await
            .map_err(error)?
            .map(|row| row.get::<_, Vec<u8>>(0));
        Ok(crate::registry_auth_from(image, value))
    }

    pub(super) async fn pg_set_project_policy(&self, name: &str, policy: shepherd_core::ProjectPolicy) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let policy = serde_json::to_string(&policy).map_err(|e| corrupt("policy", e))?;
        Ok(client.execute("UPDATE projects SET policy = $2 WHERE name = $1", &[&name, &policy]).await.map_err(error)? > 0)
    }

    pub(super) async fn pg_create_token(&self, token: TokenRecord, hash: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_tokens (id, project, name, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&token.id, &token.project, &token.name, &hash, &token.created_at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
            .await
            .map_err(error)?;
        Ok(client.query_opt(&stmt, &[&hash]).await.map_err(error)?.as_ref().map(token_from))
    }

    pub(super) async fn pg_list_tokens(&self, project: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE project = $1 ORDER BY created_at, id",
                &[&project],
            )
            .await
            .map_err(error)?
            .iter()
            .map(token_from)
            .collect())
    }

    pub(super) async fn pg_revoke_token(&self, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE api_tokens SET revoked_at = $3 WHERE project = $1 AND id = $2 AND revoked_at IS NULL",
                &[&project, &id, &at.millis()],
            )
            .await
            .map_err(error)?
            > 0)
    }

    pub(super) async fn pg_put_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO secrets (project, name, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&project, &name, &value, &at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_delete_secret(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM secrets WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)? > 0)
    }

    pub(super) async fn pg_list_secrets(&self, project: &str) -> Result<Vec<SecretInfo>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT name, updated_at FROM secrets WHERE project = $1 ORDER BY name", &[&project])
            .await
            .map_err(error)?
            .iter()
            .map(|row| SecretInfo { name: row.get(0), updated_at: Timestamp(row.get(1)) })
            .collect())
    }

    pub(super) async fn pg_ensure_secret(&self, project: &str, name: &str, value: Vec<u8>, at: Timestamp) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO secrets (project, name, value, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (project, name) DO NOTHING",
                &[&project, &name, &value, &at.millis()],
            )
            .await
            .map_err(error)?;
        let row =
            client.query_one("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)?;
        Ok(row.get(0))
    }
}

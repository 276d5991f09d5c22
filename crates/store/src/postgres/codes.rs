//! Codes (revisions of a named task template) and code packages in
//! PostgreSQL.

use super::connection::PgStore;
use super::sql::{corrupt, error, to_u32};
use crate::{CodeLimit, StoreError};
use shepherd_core::{Code, CodeSpec, Timestamp};
use tokio_postgres::Row;

/// `revision, created_at, rolled_back_from, spec` as a code.
fn code_from(row: &Row) -> Result<Code, StoreError> {
    let spec: CodeSpec = serde_json::from_str(row.get::<_, &str>(3)).map_err(|e| corrupt("code spec", e))?;
    Ok(Code {
        revision: to_u32(row.get(0)),
        created_at: Timestamp(row.get(1)),
        rolled_back_from: row.get::<_, Option<i64>>(2).map(to_u32),
        spec,
    })
}

const CODE_COLUMNS: &str = "r.revision, r.created_at, r.rolled_back_from, r.spec";

/// The [`Store`](crate::Store) methods on codes and code packages, as `pg_`
/// methods its impl (in `mod.rs`) hands each call to; the trait documents
/// each.
impl PgStore {
    pub(super) async fn pg_push_code(
        &self,
        project: &str,
        mut spec: CodeSpec,
        at: Timestamp,
        from: Option<u32>,
    ) -> Result<Code, StoreError> {
        spec.project = project.to_string();
        let text = serde_json::to_string(&spec).map_err(|e| corrupt("code spec", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let revision: i64 = tx
            .query_one(
                "INSERT INTO codes (project, name, latest, live, max_concurrency) VALUES ($1, $2, 1, TRUE, $3) \
                 ON CONFLICT (project, name) DO UPDATE SET latest = codes.latest + 1, live = TRUE, max_concurrency = excluded.max_concurrency \
                 RETURNING latest",
                &[&project, &spec.name, &spec.max_concurrency.map(i64::from)],
            )
            .await
            .map_err(error)?
            .get(0);
        tx.execute(
            "INSERT INTO code_revisions (project, name, revision, created_at, rolled_back_from, spec) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&project, &spec.name, &revision, &at.millis(), &from.map(i64::from), &text],
        )
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)?;
        Ok(Code { revision: to_u32(revision), created_at: at, rolled_back_from: from, spec })
    }

    pub(super) async fn pg_get_code(&self, project: &str, name: &str, revision: Option<u32>) -> Result<Option<Code>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     AND r.revision = COALESCE($3, c.latest) WHERE c.project = $1 AND c.name = $2 AND c.live"
                ),
                &[&project, &name, &revision.map(i64::from)],
            )
            .await
            .map_err(error)?;
        row.as_ref().map(code_from).transpose()
    }

    pub(super) async fn pg_list_codes(&self, project: Option<String>) -> Result<Vec<Code>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     AND r.revision = c.latest WHERE c.live AND ($1::text IS NULL OR c.project = $1) ORDER BY c.project, c.name"
                ),
                &[&project],
            )
            .await
            .map_err(error)?;
        rows.iter().map(code_from).collect()
    }

    pub(super) async fn pg_code_revisions(&self, project: &str, name: &str) -> Result<Vec<Code>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
                     WHERE c.project = $1 AND c.name = $2 AND c.live ORDER BY r.revision DESC"
                ),
                &[&project, &name],
            )
            .await
            .map_err(error)?;
        rows.iter().map(code_from).collect()
    }

    pub(super) async fn pg_delete_code(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute("UPDATE codes SET live = FALSE WHERE project = $1 AND name = $2 AND live", &[&project, &name])
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_code_limits(&self) -> Result<Vec<CodeLimit>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT project, name, max_concurrency FROM codes WHERE live AND max_concurrency IS NOT NULL", &[])
            .await
            .map_err(error)?;
        Ok(rows.iter().map(|row| CodeLimit { project: row.get(0), name: row.get(1), max: to_u32(row.get(2)) }).collect())
    }

    pub(super) async fn pg_put_package(&self, project: &str, digest: &str, data: Vec<u8>, at: Timestamp) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO packages (project, digest, size, data, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, digest) DO NOTHING",
                &[&project, &digest, &(data.len() as i64), &data, &at.millis()],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_get_package(&self, project: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT data FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn pg_list_packages(&self, project: &str) -> Result<Vec<crate::PackageInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT digest, size, created_at FROM packages WHERE project = $1 ORDER BY created_at, digest", &[&project])
            .await
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|r| crate::PackageInfo { digest: r.get(0), size: r.get::<_, i64>(1).max(0) as u64, created_at: Timestamp(r.get(2)) })
            .collect())
    }

    pub(super) async fn pg_delete_package(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_package_in_use(&self, project: &str, digest: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let pattern = format!("%\"digest\":\"{digest}\"%");
        let row = client
            .query_opt(
                "SELECT 1 FROM tasks WHERE project = $1 AND state IN ('waiting', 'queued', 'scheduled', 'running') AND spec LIKE $2 \
                 UNION ALL SELECT 1 FROM arrays WHERE project = $1 AND state IN ('waiting', 'running') AND spec LIKE $2 LIMIT 1",
                &[&project, &pattern],
            )
            .await
            .map_err(error)?;
        Ok(row.is_some())
    }

    pub(super) async fn pg_package_size(&self, project: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT size FROM packages WHERE project = $1 AND digest = $2", &[&project, &digest]).await.map_err(error)?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }
}

//! Named volumes (PostgreSQL).

use super::connection::PgStore;
use super::sql::{corrupt, error};
use crate::StoreError;
use shepherd_core::Volume;

/// The [`Store`](crate::Store) methods on volumes, as `pg_` methods its
/// impl (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_create_volume(&self, volume: Volume) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let record = serde_json::to_string(&volume).map_err(|e| corrupt("volume record", e))?;
        Ok(client
            .execute(
                "INSERT INTO volumes (project, name, engine_name, node_id, record) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&volume.project, &volume.name, &volume.engine_name, &volume.node_id, &record],
            )
            .await
            .map_err(error)?
            == 1)
    }

    pub(super) async fn pg_volumes(&self, project: Option<String>) -> Result<Vec<Volume>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT record, node_id FROM volumes WHERE $1::TEXT IS NULL OR project = $1 ORDER BY project, name", &[&project])
            .await
            .map_err(error)?;
        rows.iter().map(|row| crate::volume_from(row.get::<_, &str>(0), row.get(1))).collect()
    }

    pub(super) async fn pg_delete_volume(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM volumes WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)? == 1)
    }

    pub(super) async fn pg_bind_volume(&self, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        client
            .execute("UPDATE volumes SET node_id = $3 WHERE project = $1 AND name = $2 AND node_id IS NULL", &[&project, &name, &node])
            .await
            .map_err(error)?;
        let row =
            client.query_opt("SELECT node_id FROM volumes WHERE project = $1 AND name = $2", &[&project, &name]).await.map_err(error)?;
        Ok(row.and_then(|r| r.get(0)))
    }
}

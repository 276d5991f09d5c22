//! Provisioned machines and the cluster's own values (PostgreSQL).

use super::connection::PgStore;
use super::sql::{append_events, error};
use crate::StoreError;
use shepherd_core::{Machine, MachineState, Timestamp};

/// The [`Store`](crate::Store) methods on machines and the cluster's
/// values, as `pg_` methods its impl (in `mod.rs`) hands each call to; the
/// trait documents each.
impl PgStore {
    pub(super) async fn pg_put_machine(&self, machine: Machine, expected: Option<MachineState>) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let record = serde_json::to_string(&machine).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))?;
        let tx = client.transaction().await.map_err(error)?;
        let changed = match expected {
            None => tx
                .execute(
                    "INSERT INTO machines (id, state, record) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                    &[&machine.id, &machine.state.as_str(), &record],
                )
                .await
                .map_err(error)?,
            Some(expected) => tx
                .execute(
                    "UPDATE machines SET state = $2, record = $3 WHERE id = $1 AND state = $4",
                    &[&machine.id, &machine.state.as_str(), &record, &expected.as_str()],
                )
                .await
                .map_err(error)?,
        };
        if changed == 1 {
            tx.execute(crate::history::MACHINE_ASKED, &[&machine.id, &machine.pool, &machine.created_at.millis()]).await.map_err(error)?;
            if let Some(joined) = machine.joined_at {
                tx.execute(crate::history::MACHINE_JOINED, &[&machine.id, &joined.millis()]).await.map_err(error)?;
            }
        }
        if changed == 1 && expected != Some(machine.state) {
            let at = Timestamp::now();
            append_events(&tx, at, &[shepherd_core::events::MachineChange::of(&machine, at)]).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(changed == 1)
    }

    pub(super) async fn pg_machines(&self) -> Result<Vec<Machine>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT record FROM machines ORDER BY id", &[]).await.map_err(error)?;
        rows.iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| StoreError::Corrupt(format!("machine record: {e}"))))
            .collect()
    }

    pub(super) async fn pg_delete_machine(&self, id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let Some(row) = tx.query_opt("DELETE FROM machines WHERE id = $1 RETURNING record", &[&id]).await.map_err(error)? else {
            return Ok(false);
        };
        let machine: Machine =
            serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))?;
        let at = Timestamp::now();
        tx.execute(crate::history::MACHINE_GONE, &[&id, &at.millis()]).await.map_err(error)?;
        append_events(&tx, at, &[shepherd_core::events::MachineChange::destroyed(&machine, at)]).await?;
        tx.commit().await.map_err(error)?;
        Ok(true)
    }

    pub(super) async fn pg_machine_history(&self, until: Timestamp) -> Result<Vec<shepherd_core::history::MachineRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(crate::history::MACHINE_HISTORY_SQL, &[&until.millis()]).await.map_err(error)?;
        Ok(rows
            .iter()
            .map(|row| shepherd_core::history::MachineRecord {
                machine: row.get(0),
                pool: row.get(1),
                asked: row.get(2),
                joined: row.get(3),
                gone: row.get(4),
            })
            .collect())
    }

    pub(super) async fn pg_cluster_value(&self, key: &str, proposed: &str) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute("INSERT INTO cluster_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &proposed])
            .await
            .map_err(error)?;
        let row = client.query_one("SELECT value FROM cluster_meta WHERE key = $1", &[&key]).await.map_err(error)?;
        Ok(row.get(0))
    }
}

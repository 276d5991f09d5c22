//! Nodes: registration, heartbeats (one statement for a batch), state,
//! removal, and the credential a node id is bound to.

use super::connection::PgStore;
use super::sql::{append_events, corrupt, error};
use crate::{NodeBeat, NodeRecord, NodeState, StoreError};
use deadpool_postgres::GenericClient;
use shepherd_core::{Resources, Timestamp};
use tokio_postgres::Row;

/// A node from a row of `id, hostname, state, driver, cpu_millicores,
/// memory_mib, max_tasks, labels, registered_at, last_heartbeat_at, images`.
fn node_from_row(row: &Row) -> Result<NodeRecord, StoreError> {
    let state: String = row.get(2);
    Ok(NodeRecord {
        id: row.get(0),
        hostname: row.get(1),
        state: NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))?,
        driver: row.get(3),
        capacity: Resources { cpu_millicores: row.get::<_, i64>(4) as u32, memory_mib: row.get::<_, i64>(5) as u32 },
        max_tasks: row.get::<_, i64>(6) as u32,
        labels: serde_json::from_str(row.get::<_, &str>(7)).map_err(|e| corrupt("node labels", e))?,
        images: serde_json::from_str(row.get::<_, &str>(10)).map_err(|e| corrupt("node images", e))?,
        registered_at: Timestamp(row.get(8)),
        last_heartbeat_at: Timestamp(row.get(9)),
    })
}

/// Records a node's new state in the event stream.
async fn append_node_event(tx: &impl GenericClient, id: &str, state: NodeState, at: Timestamp) -> Result<(), StoreError> {
    // And in `node_history`, for replays (see `crate::history`).
    tx.execute(crate::history::NODE_HISTORY_INSERT, &[&id, &state.as_str(), &at.millis()]).await.map_err(error)?;
    let event = shepherd_core::ClusterEvent::Node(shepherd_core::events::NodeChange {
        node: id.to_string(),
        state: state.as_str().to_string(),
        at,
    });
    append_events(tx, at, &[event]).await
}

/// How often a server measures the database's clock against its own.
const OFFSET_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Offsets below this are taken as none: clocks that agree this well
/// need no correction, and times written on one host stay exact.
const OFFSET_FLOOR_MS: i64 = 1_000;

impl PgStore {
    /// The database's clock less this server's, in milliseconds, measured
    /// at most every [`OFFSET_FOR`] (half the round trip counted), and 0
    /// below [`OFFSET_FLOOR_MS`]. Node heartbeat times are written in the
    /// database's clock (this server's time plus the offset), so that a
    /// server whose clock is off makes no live node look silent.
    pub(super) async fn clock_offset(&self) -> Result<i64, StoreError> {
        if let Some((at, offset)) = *self.offset.lock().map_err(|_| StoreError::Corrupt("clock offset lock".into()))? {
            if at.elapsed() < OFFSET_FOR {
                return Ok(offset);
            }
        }
        let client = self.client().await?;
        let before = Timestamp::now().millis();
        let row = client.query_one("SELECT (extract(epoch from clock_timestamp()) * 1000)::int8", &[]).await.map_err(error)?;
        let after = Timestamp::now().millis();
        let measured = row.get::<_, i64>(0) - (before + after) / 2;
        let offset = if measured.abs() < OFFSET_FLOOR_MS { 0 } else { measured };
        if offset != 0 {
            tracing::debug!(offset_ms = offset, "this server's clock differs from the database's");
        }
        if let Ok(mut slot) = self.offset.lock() {
            *slot = Some((std::time::Instant::now(), offset));
        }
        Ok(offset)
    }

    pub(super) async fn pg_clock(&self) -> Result<Timestamp, StoreError> {
        Ok(Timestamp(Timestamp::now().millis() + self.clock_offset().await?))
    }
}

/// The [`Store`](crate::Store) methods on nodes, as `pg_` methods its impl
/// (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_upsert_node(&self, node: NodeRecord) -> Result<(), StoreError> {
        let offset = self.clock_offset().await?;
        let mut client = self.client().await?;
        let client = client.transaction().await.map_err(error)?;
        let labels = serde_json::to_string(&node.labels).map_err(|e| corrupt("labels", e))?;
        let images = serde_json::to_string(&node.images).map_err(|e| corrupt("images", e))?;
        client
            .execute(
                "INSERT INTO nodes (id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, \
                 last_heartbeat_at, images) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, state = excluded.state, driver = excluded.driver, \
                 cpu_millicores = excluded.cpu_millicores, memory_mib = excluded.memory_mib, max_tasks = excluded.max_tasks, \
                 labels = excluded.labels, last_heartbeat_at = excluded.last_heartbeat_at, images = excluded.images",
                &[
                    &node.id,
                    &node.hostname,
                    &node.state.as_str(),
                    &node.driver,
                    &i64::from(node.capacity.cpu_millicores),
                    &i64::from(node.capacity.memory_mib),
                    &i64::from(node.max_tasks),
                    &labels,
                    &node.registered_at.millis(),
                    &(node.last_heartbeat_at.millis() + offset),
                    &images,
                ],
            )
            .await
            .map_err(error)?;
        append_node_event(&client, &node.id, node.state, node.last_heartbeat_at).await?;
        client.commit().await.map_err(error)
    }

    pub(super) async fn pg_list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, last_heartbeat_at, images \
                 FROM nodes ORDER BY id",
            )
            .await
            .map_err(error)?;
        client.query(&stmt, &[]).await.map_err(error)?.iter().map(node_from_row).collect()
    }

    pub(super) async fn pg_get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, hostname, state, driver, cpu_millicores, memory_mib, max_tasks, labels, registered_at, last_heartbeat_at, images \
                 FROM nodes WHERE id = $1",
            )
            .await
            .map_err(error)?;
        client.query_opt(&stmt, &[&id]).await.map_err(error)?.as_ref().map(node_from_row).transpose()
    }

    pub(super) async fn pg_touch_node(&self, id: &str, at: Timestamp, images: Vec<String>) -> Result<Option<NodeState>, StoreError> {
        let at = Timestamp(at.millis() + self.clock_offset().await?);
        let client = self.client().await?;
        let images = serde_json::to_string(&images).map_err(|e| corrupt("images", e))?;
        let row = client
            .query_opt(
                "UPDATE nodes SET last_heartbeat_at = GREATEST(last_heartbeat_at, $2), images = $3 WHERE id = $1 RETURNING state",
                &[&id, &at.millis(), &images],
            )
            .await
            .map_err(error)?;
        row.map(|row| {
            let state: String = row.get(0);
            NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))
        })
        .transpose()
    }

    pub(super) async fn pg_touch_nodes(&self, beats: Vec<NodeBeat>) -> Result<Vec<Option<NodeState>>, StoreError> {
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // In id order, so two servers' batches lock rows in the same order.
        let mut sorted: Vec<&NodeBeat> = beats.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = sorted.iter().map(|b| b.id.as_str()).collect();
        let offset = self.clock_offset().await?;
        let times: Vec<i64> = sorted.iter().map(|b| b.at.millis() + offset).collect();
        let images = sorted
            .iter()
            .map(|b| b.images.as_ref().map(serde_json::to_string).transpose().map_err(|e| corrupt("images", e)))
            .collect::<Result<Vec<Option<String>>, StoreError>>()?;
        // One statement for the whole batch; images kept where none were sent.
        let rows = client
            .query(
                "UPDATE nodes n SET last_heartbeat_at = GREATEST(n.last_heartbeat_at, v.at), images = COALESCE(v.images, n.images) \
                 FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS v(id, at, images) WHERE n.id = v.id RETURNING n.id, n.state",
                &[&ids, &times, &images],
            )
            .await
            .map_err(error)?;
        let mut states = std::collections::HashMap::new();
        for row in rows {
            let state: String = row.get(1);
            let state = NodeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("bad node state `{state}`")))?;
            states.insert(row.get::<_, String>(0), state);
        }
        Ok(beats.iter().map(|b| states.get(&b.id).copied()).collect())
    }

    pub(super) async fn pg_set_node_state(&self, id: &str, state: NodeState) -> Result<bool, StoreError> {
        self.pg_set_node_state_as(id, state, None).await
    }

    /// Sets a node's state; with a `lease`, only while it is the current one.
    pub(super) async fn pg_set_node_state_as(&self, id: &str, state: NodeState, lease: Option<&crate::Lease>) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        if let Some(lease) = lease {
            super::leases::check_lease(&tx, lease).await?;
        }
        let changed = tx.execute("UPDATE nodes SET state = $2 WHERE id = $1", &[&id, &state.as_str()]).await.map_err(error)? > 0;
        if changed {
            append_node_event(&tx, id, state, Timestamp::now()).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(changed)
    }

    pub(super) async fn pg_delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM nodes WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM tasks WHERE node_id = $1 AND state IN ('scheduled', 'running'))",
                &[&id],
            )
            .await
            .map_err(error)?;
        if deleted == 1 {
            client.execute("DELETE FROM node_credentials WHERE node_id = $1", &[&id]).await.map_err(error)?;
        }
        Ok(deleted == 1)
    }

    pub(super) async fn pg_claim_node(&self, id: &str, credential: Option<String>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        if let Some(credential) = &credential {
            client
                .execute(
                    "INSERT INTO node_credentials (node_id, credential) VALUES ($1, $2) ON CONFLICT (node_id) DO NOTHING",
                    &[&id, credential],
                )
                .await
                .map_err(error)?;
        }
        let row = client.query_opt("SELECT credential FROM node_credentials WHERE node_id = $1", &[&id]).await.map_err(error)?;
        Ok(row.map(|r| r.get::<_, String>(0)) == credential)
    }
}

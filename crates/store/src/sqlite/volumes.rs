//! Named volumes (SQLite).

use crate::StoreError;
use rusqlite::{params, Connection};
use shepherd_core::Volume;

pub fn create(conn: &Connection, volume: &Volume) -> Result<bool, StoreError> {
    let record = serde_json::to_string(volume).map_err(|e| StoreError::Corrupt(format!("volume record: {e}")))?;
    Ok(conn.execute(
        "INSERT INTO volumes (project, name, engine_name, node_id, record) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        params![volume.project, volume.name, volume.engine_name, volume.node_id, record],
    )? == 1)
}

pub fn list(conn: &Connection, project: Option<&str>) -> Result<Vec<Volume>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT record, node_id FROM volumes WHERE ?1 IS NULL OR project = ?1 ORDER BY project, name")?;
    let rows: Vec<(String, Option<String>)> = stmt.query_map([project], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    rows.into_iter().map(|(record, node)| crate::volume_from(&record, node)).collect()
}

pub fn delete(conn: &Connection, project: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM volumes WHERE project = ?1 AND name = ?2", [project, name])? == 1)
}

pub fn bind(conn: &Connection, project: &str, name: &str, node: &str) -> Result<Option<String>, StoreError> {
    conn.execute("UPDATE volumes SET node_id = ?3 WHERE project = ?1 AND name = ?2 AND node_id IS NULL", [project, name, node])?;
    let mut stmt = conn.prepare_cached("SELECT node_id FROM volumes WHERE project = ?1 AND name = ?2")?;
    let mut rows = stmt.query([project, name])?;
    match rows.next()? {
        Some(row) => Ok(row.get(0)?),
        None => Ok(None),
    }
}

//! Provisioned machines and the cluster's identity (SQLite).

use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use shepherd_core::{Machine, MachineState};

fn encode(machine: &Machine) -> Result<String, StoreError> {
    serde_json::to_string(machine).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))
}

/// Decodes a stored machine record.
pub fn decode(record: &str) -> Result<Machine, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt(format!("machine record: {e}")))
}

pub fn put(conn: &Connection, machine: &Machine, expected: Option<MachineState>) -> Result<bool, StoreError> {
    let record = encode(machine)?;
    let changes_state = expected != Some(machine.state);
    let changed = match expected {
        None => conn.execute(
            "INSERT INTO machines (id, state, record) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            params![machine.id, machine.state.as_str(), record],
        )?,
        Some(expected) => conn.execute(
            "UPDATE machines SET state = ?2, record = ?3 WHERE id = ?1 AND state = ?4",
            params![machine.id, machine.state.as_str(), record, expected.as_str()],
        )?,
    };
    if changed == 1 {
        let sql = |q: &str| q.replace('$', "?");
        conn.execute(&sql(crate::history::MACHINE_ASKED), params![machine.id, machine.pool, machine.created_at.millis()])?;
        if let Some(joined) = machine.joined_at {
            conn.execute(&sql(crate::history::MACHINE_JOINED), params![machine.id, joined.millis()])?;
        }
    }
    if changed == 1 && changes_state {
        let at = shepherd_core::Timestamp::now();
        super::writer::append_events(conn, at, &[shepherd_core::events::MachineChange::of(machine, at)])?;
    }
    Ok(changed == 1)
}

pub fn list(conn: &Connection) -> Result<Vec<Machine>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT record FROM machines ORDER BY id")?;
    let records: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    records.iter().map(|r| decode(r)).collect()
}

pub fn delete(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    let record: Option<String> = conn.query_row("SELECT record FROM machines WHERE id = ?1", [id], |row| row.get(0)).optional()?;
    let Some(record) = record else { return Ok(false) };
    conn.execute("DELETE FROM machines WHERE id = ?1", [id])?;
    let at = shepherd_core::Timestamp::now();
    conn.execute(&crate::history::MACHINE_GONE.replace('$', "?"), params![id, at.millis()])?;
    super::writer::append_events(conn, at, &[shepherd_core::events::MachineChange::destroyed(&decode(&record)?, at)])?;
    Ok(true)
}

pub fn delete_node(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    let deleted = conn.execute(
        "DELETE FROM nodes WHERE id = ?1 AND NOT EXISTS \
         (SELECT 1 FROM tasks WHERE node_id = ?1 AND state IN ('scheduled', 'running'))",
        [id],
    )? == 1;
    if deleted {
        conn.execute("DELETE FROM node_credentials WHERE node_id = ?1", [id])?;
    }
    Ok(deleted)
}

pub fn claim_node(conn: &Connection, id: &str, credential: Option<&str>) -> Result<bool, StoreError> {
    if let Some(credential) = credential {
        conn.execute(
            "INSERT INTO node_credentials (node_id, credential) VALUES (?1, ?2) ON CONFLICT (node_id) DO NOTHING",
            [id, credential],
        )?;
    }
    let bound: Option<String> =
        conn.query_row("SELECT credential FROM node_credentials WHERE node_id = ?1", [id], |row| row.get(0)).optional()?;
    Ok(bound.as_deref() == credential)
}

pub fn cluster_value(conn: &Connection, key: &str, proposed: &str) -> Result<String, StoreError> {
    conn.execute("INSERT INTO cluster_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING", [key, proposed])?;
    let value: Option<String> = conn.query_row("SELECT value FROM cluster_meta WHERE key = ?1", [key], |row| row.get(0)).optional()?;
    value.ok_or_else(|| StoreError::Corrupt(format!("no cluster value {key} after storing one")))
}

/// Every machine asked for before `until`.
pub fn history(conn: &Connection, until: i64) -> Result<Vec<shepherd_core::history::MachineRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&crate::history::MACHINE_HISTORY_SQL.replace('$', "?"))?;
    let rows = stmt.query_map([until], |row| {
        Ok(shepherd_core::history::MachineRecord {
            machine: row.get(0)?,
            pool: row.get(1)?,
            asked: row.get(2)?,
            joined: row.get(3)?,
            gone: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

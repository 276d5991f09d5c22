//! Projects, API tokens, secrets and the audit log in SQLite.

use crate::{AuditEntry, Project, SecretInfo, StoreError, TokenRecord};
use rusqlite::{params, Connection, OptionalExtension, Row};
use shepherd_core::{ProjectLimits, ProjectPolicy, Timestamp};
use std::collections::BTreeMap;

fn limits_from(text: &str) -> Result<ProjectLimits, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("project limits: {e}")))
}

fn limits_to(limits: &ProjectLimits) -> Result<String, StoreError> {
    serde_json::to_string(limits).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn project_from(row: &Row) -> Result<Project, StoreError> {
    Ok(Project {
        name: row.get(0)?,
        created_at: Timestamp(row.get(1)?),
        limits: limits_from(&row.get::<_, String>(2)?)?,
        policy: serde_json::from_str(&row.get::<_, String>(3)?).map_err(|e| StoreError::Corrupt(format!("project policy: {e}")))?,
    })
}

fn token_from(row: &Row) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        project: row.get(1)?,
        name: row.get(2)?,
        created_at: Timestamp(row.get(3)?),
        revoked_at: row.get::<_, Option<i64>>(4)?.map(Timestamp),
    })
}

pub fn create_project(conn: &Connection, project: &Project) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached("INSERT INTO projects (name, created_at, limits) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING")?
        .execute(params![project.name, project.created_at.millis(), limits_to(&project.limits)?])?;
    Ok(inserted > 0)
}

pub fn get_project(conn: &Connection, name: &str) -> Result<Option<Project>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name, created_at, limits, policy FROM projects WHERE name = ?1")?;
    let mut rows = stmt.query([name])?;
    match rows.next()? {
        Some(row) => Ok(Some(project_from(row)?)),
        None => Ok(None),
    }
}

pub fn list_projects(conn: &Connection) -> Result<Vec<Project>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name, created_at, limits, policy FROM projects ORDER BY name")?;
    let mut rows = stmt.query([])?;
    let mut projects = Vec::new();
    while let Some(row) = rows.next()? {
        projects.push(project_from(row)?);
    }
    Ok(projects)
}

pub fn set_project_limits(conn: &Connection, name: &str, limits: &ProjectLimits) -> Result<bool, StoreError> {
    let updated = conn.prepare_cached("UPDATE projects SET limits = ?2 WHERE name = ?1")?.execute(params![name, limits_to(limits)?])?;
    Ok(updated > 0)
}

pub fn set_project_policy(conn: &Connection, name: &str, policy: &ProjectPolicy) -> Result<bool, StoreError> {
    let text = serde_json::to_string(policy).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(conn.prepare_cached("UPDATE projects SET policy = ?2 WHERE name = ?1")?.execute(params![name, text])? > 0)
}

pub fn create_token(conn: &Connection, token: &TokenRecord, hash: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO api_tokens (id, project, name, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
        token.id,
        token.project,
        token.name,
        hash,
        token.created_at.millis()
    ])?;
    Ok(())
}

pub fn token_by_hash(conn: &Connection, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL")?
        .query_row([hash], token_from)
        .optional()?)
}

pub fn list_tokens(conn: &Connection, project: &str) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, project, name, created_at, revoked_at FROM api_tokens WHERE project = ?1 ORDER BY created_at, id")?;
    let tokens = stmt.query_map([project], token_from)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tokens)
}

pub fn revoke_token(conn: &Connection, project: &str, id: &str, at: Timestamp) -> Result<bool, StoreError> {
    let updated = conn
        .prepare_cached("UPDATE api_tokens SET revoked_at = ?3 WHERE project = ?1 AND id = ?2 AND revoked_at IS NULL")?
        .execute(params![project, id, at.millis()])?;
    Ok(updated > 0)
}

pub fn put_secret(conn: &Connection, project: &str, name: &str, value: &[u8], at: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO secrets (project, name, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (project, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )?
    .execute(params![project, name, value, at.millis()])?;
    Ok(())
}

pub fn delete_secret(conn: &Connection, project: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("DELETE FROM secrets WHERE project = ?1 AND name = ?2")?.execute(params![project, name])? > 0)
}

pub fn list_secrets(conn: &Connection, project: &str) -> Result<Vec<SecretInfo>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name, updated_at FROM secrets WHERE project = ?1 ORDER BY name")?;
    let secrets = stmt
        .query_map([project], |row| Ok(SecretInfo { name: row.get(0)?, updated_at: Timestamp(row.get(1)?) }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(secrets)
}

/// The values of the named secrets of a project (missing ones left out).
pub fn secret_values(conn: &Connection, project: &str, names: &[String]) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM secrets WHERE project = ?1 AND name = ?2")?;
    let mut values = BTreeMap::new();
    for name in names {
        if let Some(value) = stmt.query_row(params![project, name], |row| row.get::<_, Vec<u8>>(0)).optional()? {
            values.insert(name.clone(), value);
        }
    }
    Ok(values)
}

pub fn append_audit(conn: &Connection, entries: &[AuditEntry]) -> Result<(), StoreError> {
    // Each project numbers its own entries (one writer: no race), so a
    // project's cursor says nothing of other projects' activity.
    let mut insert = conn.prepare_cached(
        "INSERT INTO audit_log (at, actor, project, action, target, detail, project_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
         CASE WHEN ?3 IS NULL THEN NULL ELSE (SELECT COALESCE(MAX(project_seq), 0) + 1 FROM audit_log WHERE project = ?3) END)",
    )?;
    for e in entries {
        insert.execute(params![e.at.millis(), e.actor, e.project, e.action, e.target, e.detail])?;
    }
    if let Some(first) = entries.first() {
        super::writer::append_events(conn, first.at, &crate::audit_events(entries))?;
    }
    Ok(())
}

/// The audit log, newest first. For one project, `seq` (and `before`) are
/// the project's own numbers; for all, the log's.
pub fn list_audit(conn: &Connection, project: Option<&str>, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = limit.clamp(1, 10_000) as i64;
    let (sql, project) = match project {
        Some(project) => (
            "SELECT project_seq, at, actor, project, action, target, detail FROM audit_log \
             WHERE project = ?1 AND (?2 IS NULL OR project_seq < ?2) ORDER BY project_seq DESC LIMIT ?3",
            Some(project),
        ),
        None => (
            "SELECT seq, at, actor, project, action, target, detail FROM audit_log \
             WHERE ?1 IS NULL AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3",
            None,
        ),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let entries = stmt
        .query_map(params![project, before, limit], |row| {
            Ok(AuditEntry {
                seq: row.get(0)?,
                at: Timestamp(row.get(1)?),
                actor: row.get(2)?,
                project: row.get(3)?,
                action: row.get(4)?,
                target: row.get(5)?,
                detail: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(entries)
}

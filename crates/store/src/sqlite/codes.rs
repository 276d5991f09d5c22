//! Codes and schedules in SQLite: plain functions over a connection, run on
//! the writer thread (writes) or a reader (reads).

use crate::{CodeLimit, ScheduleFiring, StoreError, WebhookAttempt, WebhookDelivery, WebhookNext};
use rusqlite::{params, Connection, OptionalExtension, Row};
use shepherd_core::{Code, CodeSpec, Schedule, ScheduleSpec, ScheduleState, Timestamp};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// `revision, created_at, rolled_back_from, spec` as a code.
fn code_from(row: &Row<'_>) -> Result<Code, StoreError> {
    let spec: CodeSpec = serde_json::from_str(&row.get::<_, String>(3)?).map_err(|e| corrupt("code spec", e))?;
    Ok(Code {
        revision: u32::try_from(row.get::<_, i64>(0)?).map_err(|e| corrupt("code revision", e))?,
        created_at: Timestamp(row.get(1)?),
        rolled_back_from: row.get::<_, Option<i64>>(2)?.and_then(|r| u32::try_from(r).ok()),
        spec,
    })
}

pub fn push_code(conn: &Connection, project: &str, mut spec: CodeSpec, at: Timestamp, from: Option<u32>) -> Result<Code, StoreError> {
    spec.project = project.to_string();
    let max = spec.max_concurrency.map(i64::from);
    let revision: i64 = conn
        .prepare_cached(
            "INSERT INTO codes (project, name, latest, live, max_concurrency) VALUES (?1, ?2, 1, 1, ?3) \
             ON CONFLICT (project, name) DO UPDATE SET latest = codes.latest + 1, live = 1, max_concurrency = excluded.max_concurrency \
             RETURNING latest",
        )?
        .query_row(params![project, spec.name, max], |row| row.get(0))?;
    let text = serde_json::to_string(&spec).map_err(|e| corrupt("code spec", e))?;
    conn.prepare_cached(
        "INSERT INTO code_revisions (project, name, revision, created_at, rolled_back_from, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![project, spec.name, revision, at.millis(), from.map(i64::from), text])?;
    Ok(Code { revision: revision as u32, created_at: at, rolled_back_from: from, spec })
}

pub fn get_code(conn: &Connection, project: &str, name: &str, revision: Option<u32>) -> Result<Option<Code>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.revision, r.created_at, r.rolled_back_from, r.spec FROM codes c \
         JOIN code_revisions r ON r.project = c.project AND r.name = c.name AND r.revision = COALESCE(?3, c.latest) \
         WHERE c.project = ?1 AND c.name = ?2 AND c.live = 1",
    )?;
    let mut rows = stmt.query(params![project, name, revision.map(i64::from)])?;
    rows.next()?.map(code_from).transpose()
}

pub fn list_codes(conn: &Connection, project: Option<&str>) -> Result<Vec<Code>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.revision, r.created_at, r.rolled_back_from, r.spec FROM codes c \
         JOIN code_revisions r ON r.project = c.project AND r.name = c.name AND r.revision = c.latest \
         WHERE c.live = 1 AND (?1 IS NULL OR c.project = ?1) ORDER BY c.project, c.name",
    )?;
    let mut rows = stmt.query(params![project])?;
    let mut codes = Vec::new();
    while let Some(row) = rows.next()? {
        codes.push(code_from(row)?);
    }
    Ok(codes)
}

pub fn code_revisions(conn: &Connection, project: &str, name: &str) -> Result<Vec<Code>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.revision, r.created_at, r.rolled_back_from, r.spec FROM codes c \
         JOIN code_revisions r ON r.project = c.project AND r.name = c.name \
         WHERE c.project = ?1 AND c.name = ?2 AND c.live = 1 ORDER BY r.revision DESC",
    )?;
    let mut rows = stmt.query(params![project, name])?;
    let mut codes = Vec::new();
    while let Some(row) = rows.next()? {
        codes.push(code_from(row)?);
    }
    Ok(codes)
}

pub fn delete_code(conn: &Connection, project: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("UPDATE codes SET live = 0 WHERE project = ?1 AND name = ?2 AND live = 1")?.execute(params![project, name])? > 0)
}

pub fn code_limits(conn: &Connection) -> Result<Vec<CodeLimit>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT project, name, max_concurrency FROM codes WHERE live = 1 AND max_concurrency IS NOT NULL")?;
    let limits = stmt
        .query_map([], |row| {
            Ok(CodeLimit { project: row.get(0)?, name: row.get(1)?, max: row.get::<_, i64>(2)?.clamp(0, u32::MAX.into()) as u32 })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(limits)
}

const SCHEDULE_COLUMNS: &str = "id, spec, created_at, state, next_at, fired, skipped, last_task, last_fired_at, failed, reason";

fn schedule_from(row: &Row<'_>) -> Result<Schedule, StoreError> {
    let spec: ScheduleSpec = serde_json::from_str(&row.get::<_, String>(1)?).map_err(|e| corrupt("schedule spec", e))?;
    let state: String = row.get(3)?;
    Ok(Schedule {
        id: row.get(0)?,
        created_at: Timestamp(row.get(2)?),
        state: ScheduleState::parse(&state).ok_or_else(|| corrupt("schedule state", &state))?,
        next_at: row.get::<_, Option<i64>>(4)?.map(Timestamp),
        fired: row.get::<_, i64>(5)?.clamp(0, u32::MAX.into()) as u32,
        skipped: row.get::<_, i64>(6)?.clamp(0, u32::MAX.into()) as u32,
        last_task: row.get(7)?,
        last_fired_at: row.get::<_, Option<i64>>(8)?.map(Timestamp),
        failed: row.get::<_, i64>(9)?.clamp(0, u32::MAX.into()) as u32,
        reason: row.get(10)?,
        spec,
    })
}

fn schedules(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Schedule>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(schedule_from(row)?);
    }
    Ok(out)
}

pub fn create_schedule(conn: &Connection, s: &Schedule) -> Result<(), StoreError> {
    let spec = serde_json::to_string(&s.spec).map_err(|e| corrupt("schedule spec", e))?;
    conn.prepare_cached(
        "INSERT INTO schedules (id, project, spec, created_at, state, next_at, fired, skipped, last_task, last_fired_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        s.id,
        s.spec.project,
        spec,
        s.created_at.millis(),
        s.state.as_str(),
        s.next_at.map(Timestamp::millis),
        s.fired,
        s.skipped,
        s.last_task,
        s.last_fired_at.map(Timestamp::millis)
    ])?;
    Ok(())
}

pub fn get_schedule(conn: &Connection, id: &str) -> Result<Option<Schedule>, StoreError> {
    Ok(schedules(conn, &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"), params![id])?.pop())
}

pub fn list_schedules(conn: &Connection, project: Option<&str>) -> Result<Vec<Schedule>, StoreError> {
    schedules(
        conn,
        &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE ?1 IS NULL OR project = ?1 ORDER BY created_at, id"),
        params![project],
    )
}

pub fn set_schedule_state(conn: &Connection, id: &str, state: ScheduleState, next_at: Option<Timestamp>) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("UPDATE schedules SET state = ?2, next_at = ?3 WHERE id = ?1 AND state <> 'cancelled'")?.execute(params![
        id,
        state.as_str(),
        next_at.map(Timestamp::millis)
    ])? > 0)
}

pub fn due_schedules(conn: &Connection, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, StoreError> {
    schedules(
        conn,
        &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE state = 'active' AND next_at <= ?1 ORDER BY next_at LIMIT ?2"),
        params![now.millis(), limit as i64],
    )
}

pub fn next_schedule_at(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = conn
        .prepare_cached("SELECT MIN(next_at) FROM schedules WHERE state = 'active'")?
        .query_row([], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(at.map(Timestamp))
}

/// Moves the schedule on if it is still where the firing expects; false if not.
pub fn advance_schedule(conn: &Connection, f: &ScheduleFiring) -> Result<bool, StoreError> {
    let state = if f.next.is_some() { ScheduleState::Active } else { ScheduleState::Done };
    let last = f.tasks.last().map(|t| t.id.to_string());
    let fired = f.tasks.len() as i64;
    let changed = conn
        .prepare_cached(
            "UPDATE schedules SET next_at = ?3, state = ?4, fired = fired + ?5, skipped = skipped + ?6, \
             last_task = COALESCE(?7, last_task), last_fired_at = CASE WHEN ?5 > 0 THEN ?8 ELSE last_fired_at END, \
             failed = failed + ?9, reason = CASE WHEN ?5 > 0 OR ?10 IS NOT NULL THEN ?10 ELSE reason END \
             WHERE id = ?1 AND state = 'active' AND next_at = ?2",
        )?
        .execute(params![
            f.id,
            f.expected_next.millis(),
            f.next.map(Timestamp::millis),
            state.as_str(),
            fired,
            i64::from(f.skipped),
            last,
            f.at.millis(),
            i64::from(f.failed),
            f.reason
        ])?;
    Ok(changed > 0)
}

/// Records a project's package whose bytes are in the packages directory
/// (the row keeps an empty `data`; rows stored inline by older versions
/// keep theirs).
pub fn put_package(conn: &Connection, project: &str, digest: &str, size: u64, at: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO packages (project, digest, size, data, created_at) VALUES (?1, ?2, ?3, X'', ?4) ON CONFLICT (project, digest) DO NOTHING",
    )?
    .execute(params![project, digest, size as i64, at.millis()])?;
    Ok(())
}

/// A package's row: its inline bytes (empty when they are in a file) and size.
pub fn get_package(conn: &Connection, project: &str, digest: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT data, size FROM packages WHERE project = ?1 AND digest = ?2")?
        .query_row(params![project, digest], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)))
        .optional()?)
}

pub fn list_packages(conn: &Connection, project: &str) -> Result<Vec<crate::PackageInfo>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT digest, size, created_at FROM packages WHERE project = ?1 ORDER BY created_at, digest")?;
    let rows = stmt.query_map(params![project], |row| {
        Ok(crate::PackageInfo { digest: row.get(0)?, size: row.get::<_, i64>(1)?.max(0) as u64, created_at: Timestamp(row.get(2)?) })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Removes a project's package: (whether it had it, whether no project
/// has that digest any more).
pub fn delete_package(conn: &Connection, project: &str, digest: &str) -> Result<(bool, bool), StoreError> {
    let deleted = conn.prepare_cached("DELETE FROM packages WHERE project = ?1 AND digest = ?2")?.execute(params![project, digest])? > 0;
    let left: i64 = conn.prepare_cached("SELECT COUNT(*) FROM packages WHERE digest = ?1")?.query_row(params![digest], |row| row.get(0))?;
    Ok((deleted, left == 0))
}

/// Unfinished tasks of the project whose spec names the package (a spec
/// stores it as `"digest":"HEX"`).
pub fn package_in_use(conn: &Connection, project: &str, digest: &str) -> Result<bool, StoreError> {
    let pattern = format!("%\"digest\":\"{digest}\"%");
    let found: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM tasks WHERE project = ?1 AND state IN ('waiting', 'queued', 'scheduled', 'running') AND spec LIKE ?2 \
             UNION ALL SELECT 1 FROM arrays WHERE project = ?1 AND state IN ('waiting', 'running') AND spec LIKE ?2 LIMIT 1",
        )?
        .query_row(params![project, pattern], |row| row.get(0))
        .optional()?;
    Ok(found.is_some())
}

pub fn package_size(conn: &Connection, project: &str, digest: &str) -> Result<Option<u64>, StoreError> {
    let size: Option<i64> = conn
        .prepare_cached("SELECT size FROM packages WHERE project = ?1 AND digest = ?2")?
        .query_row(params![project, digest], |row| row.get(0))
        .optional()?;
    Ok(size.map(|s| s.max(0) as u64))
}

pub fn set_progress(conn: &Connection, id: shepherd_core::TaskId, progress: &shepherd_core::Progress) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("UPDATE tasks SET progress_percent = ?2, progress_message = ?3 WHERE id = ?1")?.execute(params![
        id.to_string(),
        i64::from(progress.percent),
        progress.message
    ])? > 0)
}

pub fn set_attempt_progress(
    conn: &Connection,
    id: shepherd_core::TaskId,
    attempt: u32,
    node_id: Option<&str>,
    progress: &shepherd_core::Progress,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE tasks SET progress_percent = ?2, progress_message = ?3 \
             WHERE id = ?1 AND attempt = ?4 AND state = 'scheduled' AND (?5 IS NULL OR node_id = ?5)",
        )?
        .execute(params![id.to_string(), i64::from(progress.percent), progress.message, attempt, node_id])?
        > 0)
}

pub fn ensure_secret(conn: &Connection, project: &str, name: &str, value: &[u8], at: Timestamp) -> Result<Vec<u8>, StoreError> {
    conn.prepare_cached(
        "INSERT INTO secrets (project, name, value, updated_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project, name) DO NOTHING",
    )?
    .execute(params![project, name, value, at.millis()])?;
    Ok(conn
        .prepare_cached("SELECT value FROM secrets WHERE project = ?1 AND name = ?2")?
        .query_row(params![project, name], |row| row.get(0))?)
}

const WEBHOOK_COLUMNS: &str = "d.task_id, d.project, d.url, d.state, d.attempts, d.next_at, d.delivered_at";

fn webhook_from(row: &Row<'_>) -> Result<WebhookDelivery, StoreError> {
    Ok(WebhookDelivery {
        task_id: super::rows::parse_id(&row.get::<_, String>(0)?)?,
        project: row.get(1)?,
        url: row.get(2)?,
        state: row.get(3)?,
        attempts: row.get::<_, i64>(4)?.clamp(0, u32::MAX.into()) as u32,
        next_at: row.get::<_, Option<i64>>(5)?.map(Timestamp),
        delivered_at: row.get::<_, Option<i64>>(6)?.map(Timestamp),
        history: Vec::new(),
    })
}

pub fn due_webhooks(conn: &Connection, now: Timestamp, limit: usize, per_project: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM (SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.project ORDER BY d.next_at) AS rank \
         FROM webhook_deliveries d JOIN tasks t ON t.id = d.task_id \
         WHERE d.state = 'pending' AND d.next_at <= ?1 AND t.state IN ('succeeded', 'failed', 'timed_out', 'cancelled')) d \
         WHERE d.rank <= ?3 ORDER BY d.next_at LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![now.millis(), limit as i64, per_project.max(1) as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(webhook_from(row)?);
    }
    Ok(out)
}

pub fn record_webhook(
    conn: &Connection,
    task: shepherd_core::TaskId,
    attempt: &WebhookAttempt,
    next: WebhookNext,
) -> Result<(), StoreError> {
    let id = task.to_string();
    conn.prepare_cached(
        "INSERT INTO webhook_attempts (task_id, number, at, status, latency_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (task_id, number) DO NOTHING",
    )?
    .execute(params![id, attempt.number, attempt.at.millis(), attempt.status, attempt.latency_ms as i64, attempt.error])?;
    let (state, next_at, delivered_at) = match next {
        WebhookNext::Delivered => ("delivered", None, Some(attempt.at.millis())),
        WebhookNext::RetryAt(at) => ("pending", Some(at.millis()), None),
        WebhookNext::GiveUp => ("failed", None, None),
    };
    conn.prepare_cached(
        "UPDATE webhook_deliveries SET state = ?2, next_at = ?3, delivered_at = ?4, attempts = MAX(attempts, ?5) WHERE task_id = ?1 AND state = 'pending'",
    )?
    .execute(params![id, state, next_at, delivered_at, attempt.number])?;
    Ok(())
}

pub fn webhook_of(conn: &Connection, task: shepherd_core::TaskId) -> Result<Option<WebhookDelivery>, StoreError> {
    let id = task.to_string();
    let mut stmt = conn.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhook_deliveries d WHERE d.task_id = ?1"))?;
    let mut rows = stmt.query(params![id])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    let mut delivery = webhook_from(row)?;
    let mut stmt =
        conn.prepare_cached("SELECT number, at, status, latency_ms, error FROM webhook_attempts WHERE task_id = ?1 ORDER BY number")?;
    delivery.history = stmt
        .query_map(params![id], |row| {
            Ok(WebhookAttempt {
                number: row.get(0)?,
                at: Timestamp(row.get(1)?),
                status: row.get::<_, Option<i64>>(2)?.and_then(|s| u16::try_from(s).ok()),
                latency_ms: row.get::<_, i64>(3)?.max(0) as u64,
                error: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(delivery))
}

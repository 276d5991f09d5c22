//! An array's children as rows, made as the queue reaches them (see
//! [`crate::workflow::ARRAY_WINDOW`]): the first ones with the array, the
//! next ones when a child of the last half made leaves the queue (placed or
//! ended), in the transaction that moved it. Children not made yet are
//! `waiting` as far as anyone can tell (counts, quotas); an array that stops
//! ends them `cancelled` without ever making them.

use crate::workflow::{Children, ARRAY_WINDOW};
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use shepherd_core::workflow::dependency_failed;
use shepherd_core::{Event, TaskId, TaskSpec, TaskState, Timestamp};
use std::collections::VecDeque;

/// Events the hooks queue for the same transaction: a dependent to end.
pub(crate) type FollowUps = VecDeque<(TaskId, Event)>;

const INSERT_CHILD: &str = "INSERT INTO tasks (id, project, state, priority, image, cpu_millicores, memory_mib, constraints, \
     spec, payload, payload_bytes, created_at, attempt, charged_attempts, max_attempts, backoff_seconds, \
     cancel_requested, not_before, updated_at, shape, waiting_on, array_id, array_index, retry_rules) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', NULL, ?9, ?10, 0, 0, ?11, ?12, 0, ?13, ?10, ?14, ?15, ?16, ?17, ?18)";

/// What making an array's next children needs to know of it.
pub(crate) struct Maker<'a> {
    pub id: &'a str,
    pub spec: &'a TaskSpec,
    pub children: &'a Children,
    /// How many exist as rows (children `0..made`).
    pub made: u32,
    /// Running (its own dependencies met), not stopping.
    pub running: bool,
    pub admitted: i64,
    /// The arrays it pairs with (`each`).
    pub each: &'a [String],
    pub shape: i64,
    pub created_at: Timestamp,
    pub payload_bytes: i64,
}

/// Where child `index` of array `dep` stands for a child paired with it.
enum Pair {
    Met,
    Waiting,
    /// Can never succeed: why.
    Failed(String),
}

fn pair(tx: &Connection, dep: &str, index: u32) -> Result<Pair, StoreError> {
    let row: Option<(String, String)> = tx
        .prepare_cached("SELECT id, state FROM tasks WHERE array_id = ?1 AND array_index = ?2")?
        .query_row(params![dep, index], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((id, state)) = row {
        // (As when the pair ends after this child was made: the pair's id.)
        return Ok(match super::rows::parse_state(&state)? {
            TaskState::Succeeded => Pair::Met,
            s if s.is_terminal() => Pair::Failed(id),
            _ => Pair::Waiting,
        });
    }
    // Not a row: not made yet, never to be made (its array stopped), or no such child.
    let array = tx
        .prepare_cached("SELECT made, children, first_child, indices, stopping FROM arrays WHERE id = ?1")?
        .query_row([dep], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })
        .optional()?;
    let Some((made, count, first, indices, stopping)) = array else {
        return Ok(Pair::Failed(format!("{dep}[{index}] (no such child)")));
    };
    let children = Children::from_row(first.as_deref(), indices.as_deref(), count)?;
    match children.and_then(|c| c.position(index)) {
        Some(k) if i64::from(k) >= made && !stopping => Ok(Pair::Waiting),
        Some(k) if i64::from(k) >= made => Ok(Pair::Failed(format!("{dep}[{index}] (never made: its array stopped)"))),
        _ => Ok(Pair::Failed(format!("{dep}[{index}] (no such child)"))),
    }
}

/// Makes children `made..upto` of an array as rows: queued while it runs
/// and has room under its parallelism and their pairs (`each`) are met,
/// waiting otherwise; one whose pair can never succeed ends with the
/// follow-ups. Records the new `made` and `admitted`.
pub(crate) fn make(tx: &Connection, m: &Maker<'_>, upto: u32, follow: &mut FollowUps) -> Result<(), StoreError> {
    let upto = upto.min(m.children.count);
    if upto <= m.made {
        return Ok(());
    }
    let spec = m.spec;
    let cap = spec.array.and_then(|a| a.parallelism).map_or(i64::MAX, i64::from);
    let constraints = crate::workflow::constraints_text(spec)?;
    let rules = crate::workflow::rules_text(spec)?;
    let not_before = spec.first_start(m.created_at).millis();
    let mut admitted = m.admitted;
    let mut insert = tx.prepare_cached(INSERT_CHILD)?;
    for k in m.made..upto {
        let (child, index) = (m.children.id(k), m.children.index(k));
        let (mut waiting, mut failed) = (0i64, None);
        for dep in m.each {
            match pair(tx, dep, index)? {
                Pair::Met => {}
                Pair::Waiting => waiting += 1,
                Pair::Failed(why) => {
                    failed.get_or_insert(why);
                }
            }
        }
        // A child whose pair already failed is never released: it ends with the follow-ups.
        waiting += i64::from(failed.is_some());
        let queued = m.running && waiting == 0 && admitted < cap;
        admitted += i64::from(queued);
        let state = if queued { TaskState::Queued } else { TaskState::Waiting };
        let inserted = insert.execute(params![
            child.to_string(),
            spec.project,
            state.as_str(),
            spec.priority,
            spec.image,
            spec.resources.cpu_millicores,
            spec.resources.memory_mib,
            constraints,
            m.payload_bytes,
            m.created_at.millis(),
            spec.retry.max_attempts,
            spec.retry.backoff_seconds,
            not_before,
            m.shape,
            waiting,
            m.id,
            index,
            rules,
        ]);
        match inserted {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(StoreError::Duplicate(child))
            }
            other => other?,
        };
        if let Some(why) = failed {
            follow.push_back((child, Event::DependencyFailed { reason: dependency_failed(&why) }));
        }
    }
    tx.prepare_cached("UPDATE arrays SET made = ?2, admitted = ?3 WHERE id = ?1")?.execute(params![m.id, upto, admitted])?;
    Ok(())
}

/// After child `child` of `array` left the queue (placed or ended): if it
/// was among the last half of the children made, makes the next window.
pub(crate) fn top_up(tx: &Connection, array: &str, child: TaskId, follow: &mut FollowUps) -> Result<(), StoreError> {
    let Some(row) = ArrayRow::read(tx, array)? else { return Ok(()) };
    if !row.growing() {
        return Ok(());
    }
    // The child's place among the children, from its id.
    let Some(first_id) =
        row.first.as_deref().map(str::parse::<TaskId>).transpose().map_err(|e| StoreError::Corrupt(format!("first child: {e}")))?
    else {
        return Ok(());
    };
    let Some(position) = child.position_after(first_id, row.count as u32) else { return Ok(()) };
    if i64::from(position) + i64::from(ARRAY_WINDOW / 2) < row.made {
        return Ok(());
    }
    row.make(tx, array, position.saturating_add(ARRAY_WINDOW), follow)
}

/// Makes every child of a running array not made yet, as the queue would
/// as it reached them (before a copy to a store that holds every child
/// as a row from the start).
pub(crate) fn make_rest(tx: &Connection, array: &str, follow: &mut FollowUps) -> Result<(), StoreError> {
    match ArrayRow::read(tx, array)? {
        Some(row) if row.growing() => row.make(tx, array, u32::MAX, follow),
        _ => Ok(()),
    }
}

/// Makes the children a stopped array never made, as `cancelled` rows (its
/// counts have them cancelled already).
pub(crate) fn make_cancelled(tx: &Connection, array: &str) -> Result<(), StoreError> {
    let Some(row) = ArrayRow::read(tx, array)? else { return Ok(()) };
    if row.made >= row.count || row.growing() {
        return Ok(());
    }
    let before: i64 = tx.query_row("SELECT COALESCE(MAX(rowid), 0) FROM tasks", [], |r| r.get(0))?;
    // Made as waiting children of an array that does not run, then ended.
    let stopped = ArrayRow { stopping: false, state: "waiting".into(), ..row };
    stopped.make(tx, array, u32::MAX, &mut FollowUps::new())?;
    tx.prepare_cached(
        "UPDATE tasks SET state = 'cancelled', waiting_on = 0, reason = 'its array stopped before it was made', \
         finished_at = COALESCE((SELECT finished_at FROM arrays WHERE id = ?1), updated_at) \
         WHERE array_id = ?1 AND rowid > ?2",
    )?
    .execute(params![array, before])?;
    Ok(())
}

/// An array's row, as making its children needs it.
struct ArrayRow {
    made: i64,
    count: i64,
    first: Option<String>,
    indices: Option<String>,
    stopping: bool,
    state: String,
    spec: String,
    admitted: i64,
    shape: Option<i64>,
    created_at: i64,
    payload_bytes: i64,
}

impl ArrayRow {
    fn read(tx: &Connection, array: &str) -> Result<Option<ArrayRow>, StoreError> {
        Ok(tx
            .prepare_cached(
                "SELECT made, children, first_child, indices, stopping, state, spec, admitted, shape, created_at, payload_bytes \
                 FROM arrays WHERE id = ?1",
            )?
            .query_row([array], |r| {
                Ok(ArrayRow {
                    made: r.get(0)?,
                    count: r.get(1)?,
                    first: r.get(2)?,
                    indices: r.get(3)?,
                    stopping: r.get::<_, i64>(4)? != 0,
                    state: r.get(5)?,
                    spec: r.get(6)?,
                    admitted: r.get(7)?,
                    shape: r.get(8)?,
                    created_at: r.get(9)?,
                    payload_bytes: r.get(10)?,
                })
            })
            .optional()?)
    }

    /// Whether it still makes children: some are not made, and it runs or waits.
    fn growing(&self) -> bool {
        self.made < self.count && !self.stopping && matches!(self.state.as_str(), "running" | "waiting")
    }

    /// Makes its children up to `upto`.
    fn make(&self, tx: &Connection, array: &str, upto: u32, follow: &mut FollowUps) -> Result<(), StoreError> {
        let Some(children) = Children::from_row(self.first.as_deref(), self.indices.as_deref(), self.count)? else { return Ok(()) };
        let spec: TaskSpec = serde_json::from_str(&self.spec).map_err(|e| StoreError::Corrupt(format!("array {array}: spec: {e}")))?;
        let each: Vec<String> = tx
            .prepare_cached("SELECT dep_id FROM task_deps WHERE task_id = ?1 AND cond = 'each' ORDER BY dep_id")?
            .query_map([array], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let shape = self.shape.ok_or_else(|| StoreError::Corrupt(format!("array {array} has no shape")))?;
        let maker = Maker {
            id: array,
            spec: &spec,
            children: &children,
            made: self.made as u32,
            running: self.state == "running",
            admitted: self.admitted,
            each: &each,
            shape,
            created_at: Timestamp(self.created_at),
            payload_bytes: self.payload_bytes,
        };
        make(tx, &maker, upto, follow)
    }
}

/// When an array stops: its children never made end `cancelled` in its
/// counts (and are never made), and the waiting children of the arrays
/// paired with it (`each`) whose pair is one of them end.
pub(crate) fn skip_unmade(tx: &Connection, array: &str, follow: &mut FollowUps) -> Result<(), StoreError> {
    let row = tx
        .prepare_cached("SELECT made, children, first_child, indices FROM arrays WHERE id = ?1")?
        .query_row([array], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?))
        })
        .optional()?;
    let Some((made, count, first, indices)) = row else { return Ok(()) };
    let unmade = count - made;
    if unmade <= 0 {
        return Ok(());
    }
    tx.prepare_cached("UPDATE arrays SET remaining = remaining - ?2, cancelled = cancelled + ?2 WHERE id = ?1")?
        .execute(params![array, unmade])?;
    let Some(children) = Children::from_row(first.as_deref(), indices.as_deref(), count)? else { return Ok(()) };
    let paired: Vec<String> = tx
        .prepare_cached("SELECT task_id FROM task_deps WHERE dep_id = ?1 AND cond = 'each'")?
        .query_map([array], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for other in paired {
        let waiting: Vec<(String, u32)> = tx
            .prepare_cached("SELECT id, array_index FROM tasks WHERE array_id = ?1 AND state = 'waiting' ORDER BY array_index")?
            .query_map([&other], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, index) in waiting {
            if children.position(index).is_some_and(|k| i64::from(k) >= made) {
                let why = format!("{array}[{index}] (never made: its array stopped)");
                follow.push_back((super::rows::parse_id(&id)?, Event::DependencyFailed { reason: dependency_failed(&why) }));
            }
        }
    }
    Ok(())
}

//! What the scheduler and the API count and read across tasks: the queue
//! (a share of each project's ready tasks), the active tasks, counts by
//! state, a task's place in the queue, and usage.

use super::connection::PgStore;
use super::rows::{active_from_row, ACTIVE_COLUMNS};
use super::sql::{error, parse_id, parse_state};
use crate::{ActiveTask, QueueCursor, QueuePage, QueueQuery, QueuedTask, StoreError, UsageQuery, UsageRow, QUEUE_COUNT_CAP, USAGE_SQL};
use shepherd_core::{TaskId, TaskState, Timestamp};

/// The [`Store`](crate::Store) methods on the queue, the active tasks and
/// the counts, as `pg_` methods its impl (in `mod.rs`) hands each call to;
/// the trait documents each.
impl PgStore {
    pub(super) async fn pg_queued_tasks(&self, now: Timestamp, query: QueueQuery) -> Result<QueuePage, StoreError> {
        let client = self.client().await?;
        let projects: Vec<(String, Option<QueueCursor>)> = match query.projects {
            Some(projects) => projects.into_iter().collect(),
            None => client
                // One index step per project (a loose index scan), not a
                // read of every queued task.
                .query(
                    "WITH RECURSIVE p(project) AS ( \
                       SELECT (SELECT project FROM tasks WHERE state = 'queued' ORDER BY project LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT project FROM tasks WHERE state = 'queued' AND project > p.project ORDER BY project LIMIT 1) \
                       FROM p WHERE p.project IS NOT NULL) \
                     SELECT project FROM p WHERE project IS NOT NULL AND EXISTS \
                       (SELECT 1 FROM tasks WHERE state = 'queued' AND project = p.project AND not_before <= $1)",
                    &[&now.millis()],
                )
                .await
                .map_err(error)?
                .iter()
                .map(|row| (row.get(0), None))
                .collect(),
        };
        let mut page = QueuePage::default();
        if projects.is_empty() {
            return Ok(page);
        }
        let per_project = (query.limit / projects.len()).max(16);
        let skip: Vec<i64> = query.skip_shapes;
        // A child of an array reads its array's spec (and has a payload
        // if its array has one).
        let base =
            "SELECT id, CASE WHEN tasks.spec = '' THEN (SELECT a.spec FROM arrays a WHERE a.id = tasks.array_id) ELSE tasks.spec END, \
             shape, payload IS NOT NULL OR (array_id IS NOT NULL AND payload_bytes > 0), array_index \
             FROM tasks WHERE state = 'queued' AND project = $1 AND not_before <= $2 AND shape <> ALL($3)";
        let order = "ORDER BY priority DESC, id LIMIT $4";
        let head = client.prepare_cached(&format!("{base} {order}")).await.map_err(error)?;
        let same = client.prepare_cached(&format!("{base} AND priority = $5 AND id > $6 {order}")).await.map_err(error)?;
        let lower = client.prepare_cached(&format!("{base} AND priority < $5 {order}")).await.map_err(error)?;
        for (project, cursor) in &projects {
            let mut left = per_project as i64;
            let mut rows = Vec::new();
            match cursor {
                None => rows.extend(client.query(&head, &[project, &now.millis(), &skip, &left]).await.map_err(error)?),
                Some(c) => {
                    let after = c.id.to_string();
                    rows.extend(client.query(&same, &[project, &now.millis(), &skip, &left, &c.priority, &after]).await.map_err(error)?);
                    left -= rows.len() as i64;
                    if left > 0 {
                        rows.extend(client.query(&lower, &[project, &now.millis(), &skip, &left, &c.priority]).await.map_err(error)?);
                    }
                }
            }
            let full = rows.len() >= per_project;
            for row in rows {
                page.tasks.push(QueuedTask {
                    id: parse_id(row.get::<_, &str>(0))?,
                    // A child's spec with its index (the scheduler may hand it to the agent as it is).
                    spec: crate::workflow::child_spec(row.get::<_, &str>(1), row.get::<_, Option<i64>>(4))?,
                    shape: row.get(2),
                    has_payload: row.get::<_, bool>(3),
                });
            }
            if full {
                if let Some(last) = page.tasks.last() {
                    page.more.insert(project.clone(), last.cursor());
                }
            }
        }
        Ok(page)
    }

    pub(super) async fn pg_active_tasks(&self) -> Result<Vec<ActiveTask>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("{ACTIVE_COLUMNS} WHERE state IN ('scheduled', 'running')")).await.map_err(error)?;
        client.query(&stmt, &[]).await.map_err(error)?.iter().map(active_from_row).collect()
    }

    pub(super) async fn pg_active_tasks_on(&self, node_id: &str) -> Result<Vec<ActiveTask>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{ACTIVE_COLUMNS} WHERE node_id = $1 AND state IN ('scheduled', 'running')"))
            .await
            .map_err(error)?;
        client.query(&stmt, &[&node_id]).await.map_err(error)?.iter().map(active_from_row).collect()
    }

    pub(super) async fn pg_count_by_state(&self, project: Option<String>) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = match project {
            None => client.query("SELECT state, COUNT(*) FROM tasks GROUP BY state", &[]).await,
            Some(p) => client.query("SELECT state, COUNT(*) FROM tasks WHERE project = $1 GROUP BY state", &[&p]).await,
        }
        .map_err(error)?;
        rows.iter().map(|row| Ok((parse_state(row.get::<_, &str>(0))?, row.get::<_, i64>(1) as u64))).collect()
    }

    pub(super) async fn pg_count_queued(&self, project: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // Waiting tasks count: they are in line for the queue.
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM tasks WHERE project = $1 AND state = 'queued') + \
                 (SELECT COUNT(*) FROM tasks WHERE state = 'waiting' AND project = $1)",
                &[&project],
            )
            .await
            .map_err(error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(super) async fn pg_queue_position(&self, id: TaskId) -> Result<Option<(u64, u64)>, StoreError> {
        let client = self.client().await?;
        let key = id.to_string();
        let row =
            client.query_opt("SELECT project, priority FROM tasks WHERE id = $1 AND state = 'queued'", &[&key]).await.map_err(error)?;
        let Some(row) = row else { return Ok(None) };
        let (project, priority): (String, i32) = (row.get(0), row.get(1));
        // Each walks a queue index up to the task, at most QUEUE_COUNT_CAP entries.
        let cap = QUEUE_COUNT_CAP as i64;
        let in_project = client
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' AND project = $4 \
                 AND (priority > $1 OR (priority = $1 AND id < $2)) LIMIT $3) AS ahead",
                &[&priority, &key, &cap, &project],
            )
            .await
            .map_err(error)?;
        let in_cluster = client
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE state = 'queued' \
                 AND (priority > $1 OR (priority = $1 AND id < $2)) LIMIT $3) AS ahead",
                &[&priority, &key, &cap],
            )
            .await
            .map_err(error)?;
        Ok(Some((in_project.get::<_, i64>(0) as u64 + 1, in_cluster.get::<_, i64>(0) as u64 + 1)))
    }

    pub(super) async fn pg_usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let client = self.client().await?;
        let sql = USAGE_SQL.replace("$4 IS NULL", "$4::text IS NULL");
        let rows = client
            .query(&sql, &[&query.from.millis(), &query.to.millis(), &query.bucket_ms.max(1), &query.project])
            .await
            .map_err(error)?;
        Ok(rows
            .iter()
            .map(|row| UsageRow {
                project: row.get(0),
                start: Timestamp(row.get(1)),
                tasks: row.get::<_, i64>(2).max(0) as u64,
                attempts: row.get::<_, i64>(3).max(0) as u64,
                cpu_ms: row.get::<_, i64>(4).max(0) as u64,
                memory_byte_ms: row.get::<_, f64>(5),
                wall_ms: row.get::<_, i64>(6).max(0) as u64,
            })
            .collect())
    }

    pub(super) async fn pg_history_tasks(
        &self,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> Result<Vec<(TaskId, shepherd_core::history::TaskRecord)>, StoreError> {
        let client = self.client().await?;
        let (after, until) = (after.to_string(), until.to_string());
        let rows = client.query(&crate::history::tasks_sql(), &[&after, &until, &(limit.clamp(1, 10_000) as i64)]).await.map_err(error)?;
        let mut out: Vec<(TaskId, shepherd_core::history::TaskRecord)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = super::sql::parse_id(row.get::<_, &str>(0))?;
            let record = crate::history::record(
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get::<_, Option<&str>>(6),
                row.get::<_, &str>(7),
            )?;
            out.push((id, record));
        }
        if let (Some((first, _)), Some((last, _))) = (out.first(), out.last()) {
            let (first, last) = (first.to_string(), last.to_string());
            let index: std::collections::HashMap<String, usize> = out.iter().enumerate().map(|(i, (id, _))| (id.to_string(), i)).collect();
            for row in client.query(crate::history::ATTEMPTS_SQL, &[&first, &last]).await.map_err(error)? {
                if let Some(i) = index.get(row.get::<_, &str>(0)) {
                    out[*i].1.attempts.push(crate::history::attempt(row.get(1), row.get(2), row.get(3), row.get(4)));
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn pg_active_counts(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT project, state, COUNT(*) FROM tasks WHERE state IN ('queued', 'scheduled', 'running') GROUP BY project, state",
                &[],
            )
            .await
            .map_err(error)?;
        rows.iter().map(|row| Ok((row.get::<_, String>(0), parse_state(row.get::<_, &str>(1))?, row.get::<_, i64>(2) as u64))).collect()
    }
}

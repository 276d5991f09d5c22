//! Tasks: their creation (a batch is one multi-row insert), reading them,
//! their lifecycle events (through the group commit of [`super::apply`]),
//! what an agent needs to launch one, and progress reports.

use super::connection::PgStore;
use super::events::reserve_audit_numbers;
use super::inserts::Create;
pub(super) use super::inserts::{duplicate, insert_tasks, insert_tasks_as};
use super::rows::{load_attempts, task_from_row, TASK_COLUMNS};
use super::sql::{error, parse_state};
use crate::{ApplyResult, AuditEntry, LaunchSpec, StoreError, TaskFilter, TaskPage};
use shepherd_core::{Event, NewTask, Task, TaskId, Timestamp};
use std::collections::BTreeMap;
use tokio_postgres::types::ToSql;

/// The [`Store`](crate::Store) methods on tasks, as `pg_` methods its impl
/// (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_create_tasks(&self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        self.pg_create_tasks_audited(tasks, Vec::new()).await
    }

    pub(super) async fn pg_create_tasks_audited(&self, tasks: Vec<NewTask>, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        let numbers = reserve_audit_numbers(&self.counters, &audit).await?;
        // Group-committed with the other creates waiting (`Create`).
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.creates.send(Create { tasks, audit, numbers, key: self.shape_key.clone(), reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn pg_get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).await.map_err(error)?;
        let Some(row) = client.query_opt(&stmt, &[&id.to_string()]).await.map_err(error)? else { return Ok(None) };
        let mut task = task_from_row(&row)?;
        load_attempts(&client, &mut task).await?;
        Ok(Some(task))
    }

    pub(super) async fn pg_list_tasks(&self, filter: TaskFilter) -> Result<TaskPage, StoreError> {
        let client = self.client().await?;
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if !filter.states.is_empty() {
            args.push(Box::new(filter.states.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>()));
            sql.push_str(&format!(" AND state = ANY(${})", args.len()));
        }
        if let Some(project) = &filter.project {
            args.push(Box::new(project.clone()));
            sql.push_str(&format!(" AND project = ${}", args.len()));
        }
        for (key, value) in &filter.labels {
            args.push(Box::new(key.clone()));
            args.push(Box::new(value.clone()));
            sql.push_str(&crate::workflow::label_condition(&format!("${}", args.len() - 1), &format!("${}", args.len())));
        }
        if let Some(before) = filter.before {
            args.push(Box::new(before.to_string()));
            sql.push_str(&format!(" AND id < ${}", args.len()));
        }
        if let Some(array) = &filter.array {
            args.push(Box::new(array.clone()));
            sql.push_str(&format!(" AND array_id = ${}", args.len()));
        }
        let limit = filter.limit.clamp(1, 10_000);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&sql, &params).await.map_err(error)?;
        let mut tasks = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if tasks.len() > limit {
            tasks.truncate(limit);
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        for task in &mut tasks {
            load_attempts(&client, task).await?;
        }
        Ok(TaskPage { tasks, next_cursor })
    }

    pub(super) async fn pg_apply(&self, events: Vec<(TaskId, Event)>, now: Timestamp) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.combiner.apply(events, now, None).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    pub(super) async fn pg_apply_reported(
        &self,
        node: String,
        events: Vec<(TaskId, Event)>,
        now: Timestamp,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.combiner.apply(events, now, Some(node)).await?;
        self.observer.applied(&results);
        Ok(results)
    }

    pub(super) async fn pg_launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT t.state, t.attempt, t.node_id, t.cancel_requested, COALESCE(NULLIF(t.spec, ''), r.spec), \
                 CASE WHEN t.array_id IS NULL THEN t.payload ELSE r.payload END, a.started_at, t.array_index FROM tasks t \
                 LEFT JOIN attempts a ON a.task_id = t.id AND a.number = t.attempt LEFT JOIN arrays r ON r.id = t.array_id \
                 WHERE t.id = $1",
            )
            .await
            .map_err(error)?;
        let Some(row) = client.query_opt(&stmt, &[&id.to_string()]).await.map_err(error)? else { return Ok(None) };
        let spec = crate::workflow::child_spec(row.get::<_, &str>(4), row.get(7))?;
        let mut secrets = BTreeMap::new();
        if !spec.secrets.is_empty() {
            let names: Vec<String> = spec.secrets.iter().map(|s| s.name.clone()).collect();
            for secret in client
                .query("SELECT name, value FROM secrets WHERE project = $1 AND name = ANY($2)", &[&spec.project, &names])
                .await
                .map_err(error)?
            {
                secrets.insert(secret.get::<_, String>(0), secret.get::<_, Vec<u8>>(1));
            }
        }
        let login = shepherd_core::registry::secret_name(&shepherd_core::registry::registry_of(&spec.image));
        let value = client
            .query_opt("SELECT value FROM secrets WHERE project = $1 AND name = $2", &[&spec.project, &login])
            .await
            .map_err(error)?
            .map(|row| row.get::<_, Vec<u8>>(0));
        let registry_auth = crate::registry_auth_from(&spec.image, value);
        // Its dependencies' results (tasks it depends on; an array's are read through the API).
        let deps: Vec<String> = spec
            .depends_on
            .iter()
            .filter(|d| d.on != shepherd_core::DependOn::Each)
            .filter_map(|d| match &d.task {
                shepherd_core::DependencyTarget::Id(id) => Some(id.clone()),
                shepherd_core::DependencyTarget::Position(_) => None,
            })
            .collect();
        let mut inputs = BTreeMap::new();
        if !deps.is_empty() {
            for row in client
                .query(
                    "SELECT DISTINCT ON (task_id) task_id, result FROM attempts WHERE task_id = ANY($1) AND result IS NOT NULL \
                     ORDER BY task_id, number DESC",
                    &[&deps],
                )
                .await
                .map_err(error)?
            {
                inputs.insert(row.get::<_, String>(0), row.get::<_, Vec<u8>>(1));
            }
        }
        drop(client);
        let mounts = if spec.volumes.is_empty() {
            Vec::new()
        } else {
            shepherd_core::launch::resolve_mounts(&spec, &self.pg_volumes(Some(spec.project.clone())).await?)
        };
        let networks = if spec.networks.is_empty() && spec.network != "bridge" {
            Vec::new()
        } else {
            let policy = self.pg_get_project(&spec.project).await?.map(|p| p.policy).unwrap_or_default();
            shepherd_core::launch::resolve_networks(&spec, &policy)
        };
        Ok(Some(LaunchSpec {
            id,
            state: parse_state(row.get::<_, &str>(0))?,
            attempt: row.get::<_, i64>(1) as u32,
            node_id: row.get(2),
            cancel_requested: row.get(3),
            spec,
            payload: row.get(5),
            attempt_started_at: row.get::<_, Option<i64>>(6).map(Timestamp),
            secrets,
            volumes: mounts,
            networks,
            registry_auth,
            inputs,
        }))
    }

    pub(super) async fn pg_task_result(&self, id: TaskId) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT result FROM attempts WHERE task_id = $1 AND result IS NOT NULL ORDER BY number DESC LIMIT 1",
                &[&id.to_string()],
            )
            .await
            .map_err(error)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn pg_set_progress(&self, id: shepherd_core::TaskId, progress: shepherd_core::Progress) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tasks SET progress_percent = $2, progress_message = $3 WHERE id = $1",
                &[&id.to_string(), &i64::from(progress.percent), &progress.message],
            )
            .await
            .map_err(error)?;
        Ok(n > 0)
    }

    pub(super) async fn pg_set_attempt_progress(
        &self,
        id: shepherd_core::TaskId,
        attempt: u32,
        node_id: Option<String>,
        progress: shepherd_core::Progress,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tasks SET progress_percent = $2, progress_message = $3 \
                 WHERE id = $1 AND attempt = $4 AND state = 'scheduled' AND ($5::text IS NULL OR node_id = $5)",
                &[&id.to_string(), &i64::from(progress.percent), &progress.message, &i64::from(attempt), &node_id],
            )
            .await
            .map_err(error)?;
        Ok(n > 0)
    }
}

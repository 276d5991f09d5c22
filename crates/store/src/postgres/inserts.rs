//! What creating tasks writes, apart from the store's methods (so that
//! [`PgStore`](super::PgStore)'s own parts may use it): tasks as one
//! multi-row insert, their audit lines, and [`Create`], a caller's create
//! waiting for a combined transaction ([`super::group`]).

use super::sql::{append_events, corrupt, error, parse_id};
use crate::{AuditEntry, StoreError};
use deadpool_postgres::GenericClient;
use shepherd_core::shape::ShapeKey;
use shepherd_core::{NewTask, TaskState};
use tokio_postgres::error::SqlState;

/// Most tasks one combined create takes.
pub(super) const MAX_CREATED: usize = 5_000;

/// One caller's new tasks with their audit lines (numbers reserved),
/// waiting for a combined transaction ([`super::group`]): a thousand single
/// creates cost a few commits.
pub(super) struct Create {
    pub tasks: Vec<NewTask>,
    pub audit: Vec<AuditEntry>,
    pub numbers: Vec<Option<i64>>,
    pub key: ShapeKey,
    pub reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl super::group::Request for Create {
    type Out = ();

    fn weight(&self) -> usize {
        self.tasks.len().max(1)
    }

    fn write<'a>(
        tx: &'a deadpool_postgres::Transaction<'a>,
        group: &'a [Self],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<()>, StoreError>> {
        Box::pin(async move {
            let Some(first) = group.first() else { return Ok(Vec::new()) };
            let tasks: Vec<&NewTask> = group.iter().flat_map(|c| c.tasks.iter()).collect();
            insert_tasks_as(tx, &tasks, &first.key, &vec![(TaskState::Queued, 0); tasks.len()]).await?;
            let created: Vec<shepherd_core::ClusterEvent> = group.iter().flat_map(|c| crate::created_events(&c.tasks)).collect();
            if let Some(task) = tasks.first() {
                append_events(tx, task.created_at, &created).await?;
            }
            let audit: Vec<AuditEntry> = group.iter().flat_map(|c| c.audit.iter().cloned()).collect();
            let numbers: Vec<Option<i64>> = group.iter().flat_map(|c| c.numbers.iter().copied()).collect();
            append_audit(tx, &audit, &numbers).await?;
            Ok(vec![(); group.len()])
        })
    }

    fn committed(&self, observer: &crate::ObserverSlot) {
        observer.created(&self.tasks);
    }

    fn reply(self, result: Result<(), StoreError>) {
        let _ = self.reply.send(result);
    }
}

/// Inserts new tasks, their labels and their webhooks, a batch in one
/// multi-row insert each; a task id already taken fails the whole batch.
pub(super) async fn insert_tasks(tx: &deadpool_postgres::Transaction<'_>, tasks: &[NewTask], key: &ShapeKey) -> Result<(), StoreError> {
    let tasks: Vec<&NewTask> = tasks.iter().collect();
    insert_tasks_as(tx, &tasks, key, &vec![(TaskState::Queued, 0); tasks.len()]).await
}

/// [`insert_tasks`], each task in its own state with its count of unmet
/// dependencies (`states`, one per task).
pub(super) async fn insert_tasks_as(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &[&NewTask],
    key: &ShapeKey,
    states: &[(TaskState, i64)],
) -> Result<(), StoreError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let state_names: Vec<&str> = states.iter().map(|(state, _)| state.as_str()).collect();
    let waiting_on: Vec<i64> = states.iter().map(|(_, n)| *n).collect();
    let mut ids = Vec::with_capacity(tasks.len());
    let (mut projects, mut priorities, mut images, mut cpus, mut memories) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut constraints, mut specs, mut payloads, mut payload_bytes, mut created) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut max_attempts, mut backoffs, mut shapes, mut not_before) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rules: Vec<Option<String>> = Vec::with_capacity(tasks.len());
    let (mut label_tasks, mut label_keys, mut label_values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hook_tasks, mut hook_projects, mut hook_urls, mut hook_at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        let spec = &task.spec;
        let id = task.id.to_string();
        if let Some(url) = &spec.webhook {
            hook_tasks.push(id.clone());
            hook_projects.push(spec.project.clone());
            hook_urls.push(url.clone());
            hook_at.push(task.created_at.millis());
        }
        for (key, value) in &spec.labels {
            label_tasks.push(id.clone());
            label_keys.push(key.clone());
            label_values.push(value.clone());
        }
        ids.push(id);
        projects.push(spec.project.clone());
        priorities.push(spec.priority);
        images.push(spec.image.clone());
        cpus.push(i64::from(spec.resources.cpu_millicores));
        memories.push(i64::from(spec.resources.memory_mib));
        constraints.push(if spec.constraints.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&spec.constraints).map_err(|e| corrupt("constraints", e))?)
        });
        specs.push(serde_json::to_string(spec).map_err(|e| corrupt("spec", e))?);
        payload_bytes.push(task.payload.as_ref().map_or(0, |p| p.len() as i64));
        payloads.push(task.payload.clone());
        created.push(task.created_at.millis());
        max_attempts.push(i64::from(spec.retry.max_attempts));
        backoffs.push(i64::from(spec.retry.backoff_seconds));
        shapes.push(spec.placement_shape(key));
        not_before.push(task.not_before().millis());
        rules.push(crate::workflow::rules_text(spec)?);
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO tasks (id, project, state, priority, image, cpu_millicores, memory_mib, constraints, spec, payload, payload_bytes, \
             created_at, attempt, charged_attempts, max_attempts, backoff_seconds, cancel_requested, not_before, updated_at, shape, \
             waiting_on, retry_rules) \
             SELECT id, project, state, priority, image, cpu, memory, constraints, spec, payload, payload_bytes, created, 0, 0, \
             max_attempts, backoff, false, not_before, created, shape, waiting_on, rules \
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bytea[], \
             $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::text[], $17::bigint[], $18::text[]) \
             AS t(id, project, priority, image, cpu, memory, constraints, spec, payload, payload_bytes, created, max_attempts, backoff, shape, \
             not_before, state, waiting_on, rules)",
        )
        .await
        .map_err(error)?;
    let inserted = tx
        .execute(
            &insert,
            &[
                &ids,
                &projects,
                &priorities,
                &images,
                &cpus,
                &memories,
                &constraints,
                &specs,
                &payloads,
                &payload_bytes,
                &created,
                &max_attempts,
                &backoffs,
                &shapes,
                &not_before,
                &state_names,
                &waiting_on,
                &rules,
            ],
        )
        .await;
    inserted.map_err(|e| duplicate(e, &ids[0]))?;
    if !label_tasks.is_empty() {
        let insert = tx
            .prepare_cached("INSERT INTO task_labels (task_id, key, value) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])")
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&label_tasks, &label_keys, &label_values]).await.map_err(error)?;
    }
    if !hook_tasks.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO webhook_deliveries (task_id, project, url, state, attempts, next_at, created_at) \
                 SELECT t, p, u, 'pending', 0, a, a FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(t, p, u, a)",
            )
            .await
            .map_err(error)?;
        tx.execute(&insert, &[&hook_tasks, &hook_projects, &hook_urls, &hook_at]).await.map_err(error)?;
    }
    Ok(())
}

/// A failed insert of tasks as the store's error: a task id already
/// taken (the one the server names, else `first`) is a duplicate.
pub(super) fn duplicate(e: tokio_postgres::Error, first: &str) -> StoreError {
    if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return error(e);
    }
    // Which one: the server says "Key (id)=(01…) already exists."
    let named = e.as_db_error().and_then(|db| db.detail()).and_then(|d| d.split("=(").nth(1)).and_then(|rest| rest.split(')').next());
    let id = match named.map(parse_id) {
        Some(Ok(id)) => Ok(id),
        _ => parse_id(first),
    };
    id.map_or_else(|e| e, StoreError::Duplicate)
}

/// Writes audit entries, with the numbers reserved for them, and their
/// events, in the transaction of the write they record.
pub(super) async fn append_audit(tx: &impl GenericClient, entries: &[AuditEntry], numbers: &[Option<i64>]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    append_events(tx, entries[0].at, &crate::audit_events(entries)).await?;
    // One statement for them all (a combined create carries one entry per
    // request), numbered in their order.
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (at, actor, project, action, target, detail, project_seq) \
             SELECT at, actor, project, action, target, detail, project_seq FROM UNNEST($1::bigint[], $2::text[], $3::text[], \
             $4::text[], $5::text[], $6::text[], $7::bigint[]) WITH ORDINALITY \
             AS e(at, actor, project, action, target, detail, project_seq, n) ORDER BY n",
        )
        .await
        .map_err(error)?;
    let at: Vec<i64> = entries.iter().map(|e| e.at.millis()).collect();
    let actor: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
    let project: Vec<Option<&str>> = entries.iter().map(|e| e.project.as_deref()).collect();
    let action: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    let target: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
    let detail: Vec<Option<&str>> = entries.iter().map(|e| e.detail.as_deref()).collect();
    let numbers: Vec<Option<i64>> = (0..entries.len()).map(|i| numbers.get(i).copied().flatten()).collect();
    tx.execute(&insert, &[&at, &actor, &project, &action, &target, &detail, &numbers]).await.map_err(error)?;
    Ok(())
}

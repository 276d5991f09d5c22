//! The agent inside the server process (`shepherd up`) reaches the cluster
//! through the store itself: the [`Backend`] here is the in-process twin
//! of the agent API in `agents.rs`. It lives in the server crate so that
//! the agent crate never depends on the store.

use async_trait::async_trait;
use shepherd_agent::{AssignedAttempt, Backend, BackendError, Captured};
use shepherd_core::{Event, LaunchSpec, LogChunk, LogStream, TaskId, Timestamp};
use shepherd_store::{ApplyError, Store, StoreError};
use std::sync::Arc;

/// The store as an in-process agent's backend.
pub struct StoreBackend {
    pub store: Arc<dyn Store>,
    /// Applied reports reach the scheduler's view through this.
    pub observer: crate::nodes::view::Observer,
}

/// Sums the stored output of one attempt per stream.
pub async fn captured_in(store: &dyn Store, id: TaskId, attempt: u32) -> Result<Captured, StoreError> {
    let mut captured = Captured::default();
    let mut after = 0;
    loop {
        let chunks = store.read_logs(id, after, 1000).await?;
        let Some(last) = chunks.last() else { return Ok(captured) };
        after = last.seq;
        for chunk in chunks.iter().filter(|c| c.attempt == attempt) {
            match chunk.stream {
                LogStream::Stdout => captured.stdout += chunk.data.len() as u64,
                LogStream::Stderr => captured.stderr += chunk.data.len() as u64,
                LogStream::System => {}
            }
        }
    }
}

/// The attempts the store has on a node (scheduled or running).
pub async fn assigned_to(store: &dyn Store, node_id: &str) -> Result<Vec<AssignedAttempt>, StoreError> {
    let active = store.active_tasks_on(node_id).await?;
    Ok(active
        .into_iter()
        .map(|t| AssignedAttempt { task_id: t.id, attempt: t.attempt, state: t.state, cancel_requested: t.cancel_requested })
        .collect())
}

fn failed(e: StoreError) -> BackendError {
    BackendError::Store(Box::new(e))
}

#[async_trait]
impl Backend for StoreBackend {
    async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError> {
        // A report must not be lost to a store that is restarting or
        // failing over: retry for about a minute, as the remote agent does.
        let mut wait = std::time::Duration::from_millis(100);
        let mut tries = 0;
        let results = loop {
            match self.store.apply(events.clone(), Timestamp::now()).await {
                Ok(results) => {
                    self.observer.observe(&results);
                    break results;
                }
                Err(e) if e.is_transient() && tries < 40 => {
                    tries += 1;
                    tracing::warn!(error = %e, "report not stored; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(failed(e)),
            }
        };
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(_) => true,
                // Stored by an earlier try whose answer was lost.
                Err(ApplyError::Illegal(shepherd_core::IllegalTransition::Repeated { .. })) => true,
                Err(ApplyError::Illegal(e)) => {
                    tracing::info!(reason = %e, "report refused by the state machine");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "report refused");
                    false
                }
            })
            .collect())
    }

    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, BackendError> {
        self.store.launch_spec(id).await.map_err(failed)
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError> {
        self.store.append_logs(chunks).await.map_err(failed)
    }

    async fn assigned(&self, node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError> {
        assigned_to(self.store.as_ref(), node_id).await.map_err(failed)
    }

    async fn captured(&self, id: TaskId, attempt: u32) -> Result<Captured, BackendError> {
        captured_in(self.store.as_ref(), id, attempt).await.map_err(failed)
    }

    async fn progress(&self, id: TaskId, attempt: u32, progress: shepherd_core::Progress) -> Result<(), BackendError> {
        attempt_progress(self.store.as_ref(), None, id, attempt, progress).await.map_err(failed)?;
        Ok(())
    }

    async fn package(&self, id: TaskId) -> Result<Vec<u8>, BackendError> {
        package_of(self.store.as_ref(), id).await.map_err(failed)?.ok_or(BackendError::Refused { status: 404, body: "no package".into() })
    }
}

/// Records how far an attempt got before its task runs (its image's pull),
/// if it is still the task's current attempt, waiting to start, on `node`
/// (any node for the in-process agent). False if not.
pub async fn attempt_progress(
    store: &dyn Store,
    node: Option<&str>,
    id: TaskId,
    attempt: u32,
    progress: shepherd_core::Progress,
) -> Result<bool, StoreError> {
    store.set_attempt_progress(id, attempt, node.map(str::to_string), progress).await
}

/// The package of a task, from its project's packages.
pub async fn package_of(store: &dyn Store, id: TaskId) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(launch) = store.launch_spec(id).await? else { return Ok(None) };
    let Some(package) = &launch.spec.package else { return Ok(None) };
    store.get_package(&launch.spec.project, &package.digest).await
}

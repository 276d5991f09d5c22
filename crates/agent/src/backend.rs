//! What the agent needs from the cluster, as one trait: the store itself
//! when the agent runs inside the server (`StoreBackend`), or the server's
//! agent API over the network (`crate::remote::HttpBackend`).

use async_trait::async_trait;
use shepherd_core::{Event, TaskId, TaskState, Timestamp};
use shepherd_store::{ApplyError, LaunchSpec, LogChunk, Store};
use std::sync::Arc;

/// An attempt the cluster has placed on this node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AssignedAttempt {
    pub task_id: TaskId,
    pub attempt: u32,
    pub state: TaskState,
    pub cancel_requested: bool,
}

/// The cluster could not be reached or refused the request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// The agent's view of the cluster.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reports lifecycle events; for each, whether the state machine took it.
    async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError>;
    /// What it takes to start a task's current attempt.
    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, BackendError>;
    /// Stores output.
    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError>;
    /// The attempts the cluster has on `node_id` (scheduled or running).
    async fn assigned(&self, node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError>;
    /// How much of an attempt's output is stored, per stream (an adopted
    /// attempt's output goes on from there).
    async fn captured(&self, id: TaskId, attempt: u32) -> Result<crate::driver::Captured, BackendError>;
}

/// Sums the stored output of one attempt per stream.
pub async fn captured_in(store: &dyn Store, id: TaskId, attempt: u32) -> Result<crate::driver::Captured, shepherd_store::StoreError> {
    let mut captured = crate::driver::Captured::default();
    let mut after = 0;
    loop {
        let chunks = store.read_logs(id, after, 1000).await?;
        let Some(last) = chunks.last() else { return Ok(captured) };
        after = last.seq;
        for chunk in chunks.iter().filter(|c| c.attempt == attempt) {
            match chunk.stream {
                shepherd_store::LogStream::Stdout => captured.stdout += chunk.data.len() as u64,
                shepherd_store::LogStream::Stderr => captured.stderr += chunk.data.len() as u64,
                shepherd_store::LogStream::System => {}
            }
        }
    }
}

/// The agent inside the server process: straight to the store.
pub struct StoreBackend(pub Arc<dyn Store>);

#[async_trait]
impl Backend for StoreBackend {
    async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError> {
        let results = self.0.apply(events, Timestamp::now()).await.map_err(|e| BackendError(e.to_string()))?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(_) => true,
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
        self.0.launch_spec(id).await.map_err(|e| BackendError(e.to_string()))
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError> {
        self.0.append_logs(chunks).await.map_err(|e| BackendError(e.to_string()))
    }

    async fn captured(&self, id: TaskId, attempt: u32) -> Result<crate::driver::Captured, BackendError> {
        captured_in(self.0.as_ref(), id, attempt).await.map_err(|e| BackendError(e.to_string()))
    }

    async fn assigned(&self, node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError> {
        let active = self.0.active_tasks().await.map_err(|e| BackendError(e.to_string()))?;
        Ok(active
            .into_iter()
            .filter(|t| t.node_id == node_id)
            .map(|t| AssignedAttempt { task_id: t.id, attempt: t.attempt, state: t.state, cancel_requested: t.cancel_requested })
            .collect())
    }
}

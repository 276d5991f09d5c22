//! Retention: on the leader, finished tasks older than their project's
//! retention (`retention_seconds` in its policy, else the cluster's
//! `--task-retention`) are removed in small batches, each exported first
//! (one JSON line per task, with its attempts and output) when the cluster
//! names a directory for it. Between batches the loop rests so that
//! removal takes at most its share of the time (`--retention-share`, a
//! tenth by default): the store's writer stays with the clients. Every
//! server measures the store's size and its oldest task.

use shepherd_core::{TaskId, Timestamp};
use shepherd_store::{AuditEntry, Store, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Tasks per batch: one short write each (about 10 ms of SQLite's writer).
pub const BATCH: usize = 200;

/// The cluster's retention settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How long finished tasks are kept where their project's policy says
    /// nothing; `None`: forever.
    pub default: Option<Duration>,
    /// Where removed tasks are written first, one file per project and
    /// day (`DIR/PROJECT/YYYY-MM-DD.jsonl`); `None`: not exported.
    pub export: Option<PathBuf>,
    /// How often the leader looks for expired tasks (and every server
    /// measures the store).
    pub every: Duration,
    /// The most of its time removal takes, in (0, 1]: after a batch that
    /// took t, it rests t × (1 / share − 1).
    pub share: f64,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig { default: None, export: None, every: Duration::from_secs(60), share: 0.1 }
    }
}

/// Why a batch was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("export to {path}: {source}")]
    Export { path: PathBuf, source: std::io::Error },
}

/// The retention loop.
pub struct Retention {
    pub store: Arc<dyn Store>,
    pub leadership: crate::loops::leader::Leadership,
    pub config: RetentionConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Retention {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.store.store_size().await {
                Ok(size) => self.metrics.store_size(size),
                Err(e) => tracing::debug!(error = %e, "could not measure the store"),
            }
            if self.leadership.is_leader() {
                if let Err(e) = self.round(&mut shutdown).await {
                    tracing::warn!(error = %e, "retention: removal stopped for this round");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// How long `policy`'s project keeps finished tasks.
    fn keep(&self, policy: &shepherd_core::ProjectPolicy) -> Option<Duration> {
        policy.retention_seconds.map(Duration::from_secs).or(self.config.default)
    }

    /// One pass over every project with a retention.
    pub async fn round(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), RetentionError> {
        for project in self.store.list_projects().await? {
            let Some(keep) = self.keep(&project.policy) else { continue };
            let now = Timestamp::now();
            let cut = Timestamp(now.millis().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)));
            let removed = self.project(&project.name, cut, shutdown).await?;
            if removed > 0 {
                let entry = AuditEntry {
                    seq: 0,
                    at: Timestamp::now(),
                    actor: "retention".into(),
                    project: Some(project.name.clone()),
                    action: "task.expire".into(),
                    target: project.name.clone(),
                    detail: Some(format!("{removed} finished tasks removed (finished before {})", cut.to_rfc3339())),
                };
                if let Err(e) = self.store.append_audit(vec![entry]).await {
                    tracing::error!(error = %e, "could not write the audit log");
                }
                tracing::info!(project = %project.name, removed, "retention removed finished tasks");
            }
        }
        Ok(())
    }

    /// Removes `project`'s tasks that finished before `cut`, batch by batch.
    async fn project(&self, project: &str, cut: Timestamp, shutdown: &mut watch::Receiver<bool>) -> Result<u64, RetentionError> {
        let mut after: Option<TaskId> = None;
        let mut removed = 0u64;
        loop {
            if !self.leadership.is_leader() || *shutdown.borrow() {
                return Ok(removed);
            }
            let ids = self.store.expired_tasks(project, cut, after, BATCH).await?;
            let Some(last) = ids.last().copied() else { return Ok(removed) };
            after = Some(last);
            let exported = match &self.config.export {
                Some(dir) => export(self.store.as_ref(), dir, project, &ids).await?,
                None => 0,
            };
            // The share is of the writer's time: the removal's write (the
            // export only reads, on the readers).
            let began = Instant::now();
            let gone = self.store.remove_tasks(ids, cut).await?.len() as u64;
            removed += gone;
            self.metrics.retention_removed(project, gone, exported);
            tokio::select! {
                _ = tokio::time::sleep(rest(began.elapsed(), self.config.share)) => {}
                _ = shutdown.changed() => return Ok(removed),
            }
        }
    }
}

/// How long to rest after a batch that took `took`, to take at most
/// `share` of the time.
pub fn rest(took: Duration, share: f64) -> Duration {
    let share = if share.is_finite() { share.clamp(0.01, 1.0) } else { 1.0 };
    took.mul_f64(1.0 / share - 1.0)
}

/// One exported task: the task as the API shows it (with its attempts),
/// its output, and when it was removed.
#[derive(serde::Serialize)]
struct Exported<'a> {
    task: &'a shepherd_core::Task,
    logs: Vec<ExportedChunk>,
    removed_at: Timestamp,
}

/// A chunk of output: UTF-8 text as it is, anything else in base64.
#[derive(serde::Serialize)]
struct ExportedChunk {
    attempt: u32,
    stream: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// The file a project's removals of `day` go to.
pub fn export_path(dir: &Path, project: &str, at: Timestamp) -> Option<PathBuf> {
    // Project names are a-z 0-9 - _ (checked again: this names a path).
    shepherd_core::is_project_name(project).then(|| dir.join(project).join(format!("{}.jsonl", &at.to_rfc3339()[..10])))
}

/// Appends `ids` (those still there) to the project's export file and
/// syncs it; returns how many were written. Nothing is removed unless
/// this succeeded, so an export may repeat a task after a crash, never
/// miss one.
async fn export(store: &dyn Store, dir: &Path, project: &str, ids: &[TaskId]) -> Result<u64, RetentionError> {
    let now = Timestamp::now();
    let Some(path) = export_path(dir, project, now) else {
        return Err(RetentionError::Export {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{project}` is not a project name")),
        });
    };
    let mut out = Vec::new();
    let mut written = 0u64;
    for (task, chunks) in store.export_tasks(ids.to_vec()).await? {
        let logs = chunks
            .into_iter()
            .map(|chunk| {
                let (text, base64) = match String::from_utf8(chunk.data) {
                    Ok(text) => (Some(text), None),
                    Err(e) => {
                        use base64::Engine;
                        (None, Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())))
                    }
                };
                ExportedChunk { attempt: chunk.attempt, stream: chunk.stream.as_str(), text, base64 }
            })
            .collect();
        let line = serde_json::to_vec(&Exported { task: &task, logs, removed_at: now })
            .map_err(|e| RetentionError::Export { path: path.clone(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })?;
        out.extend_from_slice(&line);
        out.push(b'\n');
        written += 1;
    }
    let target = path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // Tasks' environments and output: readable by this user only.
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&target)?;
        file.write_all(&out)?;
        file.sync_data()
    })
    .await
    .map_err(|e| RetentionError::Export { path: path.clone(), source: std::io::Error::other(e) })?
    .map_err(|source| RetentionError::Export { path, source })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_rests_to_keep_its_share() {
        let took = Duration::from_millis(10);
        assert_eq!(rest(took, 1.0), Duration::ZERO);
        assert_eq!(rest(took, 0.5), took);
        assert_eq!(rest(took, 0.1), Duration::from_millis(90));
        assert_eq!(rest(took, 0.0), Duration::from_millis(990), "at least 1%");
        assert_eq!(rest(took, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn export_files_are_per_project_and_day_and_only_for_project_names() {
        let at = Timestamp::parse_rfc3339("2026-12-08T01:02:03Z").unwrap();
        assert_eq!(export_path(Path::new("/x"), "acme", at), Some(PathBuf::from("/x/acme/2026-12-08.jsonl")));
        for bad in ["..", "../etc", "a/b", "", "A"] {
            assert_eq!(export_path(Path::new("/x"), bad, at), None, "{bad}");
        }
    }
}

//! Task logs: chunks appended in order, read back by sequence number.

use super::connection::PgStore;
use super::sql::error;
use crate::{LogChunk, LogStream, StoreError, StoredLogChunk};
use shepherd_core::TaskId;

/// The [`Store`](crate::Store) methods on task logs, as `pg_` methods its
/// impl (in `mod.rs`) hands each call to; the trait documents each.
impl PgStore {
    pub(super) async fn pg_append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let ids: Vec<String> = chunks.iter().map(|c| c.task_id.to_string()).collect();
        let attempts: Vec<i64> = chunks.iter().map(|c| i64::from(c.attempt)).collect();
        let streams: Vec<i16> = chunks.iter().map(|c| c.stream as i16).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        client
            .execute(
                "INSERT INTO task_logs (task_id, attempt, stream, data) SELECT task_id, attempt, stream, data \
                 FROM UNNEST($1::text[], $2::bigint[], $3::smallint[], $4::bytea[]) WITH ORDINALITY AS t(task_id, attempt, stream, data, n) \
                 ORDER BY n",
                &[&ids, &attempts, &streams, &data],
            )
            .await
            .map_err(error)?;
        Ok(())
    }

    pub(super) async fn pg_read_logs(&self, id: TaskId, after: i64, limit: usize) -> Result<Vec<StoredLogChunk>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT seq, attempt, stream, data FROM task_logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .await
            .map_err(error)?;
        Ok(client
            .query(&stmt, &[&id.to_string(), &after, &(limit as i64)])
            .await
            .map_err(error)?
            .iter()
            .map(|row| StoredLogChunk {
                seq: row.get(0),
                attempt: row.get::<_, i64>(1) as u32,
                stream: LogStream::from_code(i64::from(row.get::<_, i16>(2))),
                data: row.get(3),
            })
            .collect())
    }
}

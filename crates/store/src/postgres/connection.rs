//! The connection to PostgreSQL: [`PgStore`] itself, its pools, and the
//! connection that LISTENs for the messages servers send each other.

use super::apply;
use super::schema;
use super::sql::{error, pool_error};
use crate::{ObserverSlot, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use shepherd_core::shape::ShapeKey;
use tokio_postgres::NoTls;

/// The PostgreSQL implementation of [`Store`](crate::Store).
pub struct PgStore {
    pub(super) pool: Pool,
    /// Connections that commit without waiting for the disk, for audit
    /// number reservations only ([`reserve_audit_numbers`](super::events::reserve_audit_numbers)).
    pub(super) counters: Pool,
    /// Messages between servers (LISTEN/NOTIFY on [`CHANNEL`]).
    pub(super) messages: tokio::sync::broadcast::Sender<String>,
    pub(super) listener: tokio::task::JoinHandle<()>,
    /// Group commit for [`Store::apply`](crate::Store::apply).
    pub(super) combiner: apply::Combiner,
    /// Group commit for creates ([`Store::create_tasks_audited`](crate::Store::create_tasks_audited)).
    pub(super) creates: super::group::Combiner<super::inserts::Create>,
    pub(super) observer: ObserverSlot,
    /// Keys placement shapes (the cluster's secret, in `cluster_meta`).
    pub(super) shape_key: ShapeKey,
    /// Time callers waited for a connection of `pool`, in microseconds, and how many waited.
    pub(super) waited_micros: std::sync::atomic::AtomicU64,
    pub(super) waits: std::sync::atomic::AtomicU64,
    /// The database's clock less this server's, as last measured, and
    /// when ([`PgStore::clock_offset`]).
    pub(super) offset: std::sync::Mutex<Option<(std::time::Instant, i64)>>,
}

/// How a server uses its PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections in the pool (a request past it waits for one).
    pub max_connections: usize,
    /// Longest a statement may run before PostgreSQL cancels it (`None`:
    /// no limit). Schema migrations at start are not limited.
    pub statement_timeout: Option<std::time::Duration>,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions { max_connections: 16, statement_timeout: Some(std::time::Duration::from_secs(30)) }
    }
}

/// The NOTIFY channel servers talk on.
const CHANNEL: &str = "shepherd";

/// Handed to subscribers each time the listening connection (re)starts:
/// messages sent meanwhile may have been missed.
pub const RESYNC: &str = "__resync__";

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Holds a connection that LISTENs on [`CHANNEL`] and hands every
/// notification to `messages`; reconnects (after a pause) when it breaks.
async fn listen(config: tokio_postgres::Config, messages: tokio::sync::broadcast::Sender<String>) {
    use futures_util::StreamExt;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    // The connection must be driven while LISTEN runs.
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await
                };
                let mut listening = std::pin::pin!(listening);
                let mut ready = false;
                loop {
                    tokio::select! {
                        result = &mut listening, if !ready => {
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "LISTEN failed");
                                break;
                            }
                            ready = true;
                            let _ = messages.send(RESYNC.to_string());
                        }
                        message = stream.next() => match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                let _ = messages.send(n.payload().to_string());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "the listening connection broke; reconnecting");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the listening connection; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// How long PostgreSQL lets a session sit idle inside a transaction.
/// Our transactions send their statements back to back; a gap this long
/// means the server holding it has stalled.
pub const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(2);

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`),
    /// migrates the schema, and keeps a pool of up to `max_connections`.
    pub async fn connect(url: &str, max_connections: usize) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, PgOptions { max_connections, ..PgOptions::default() }).await
    }

    /// [`PgStore::connect`] with every setting: the pool's size and the
    /// statements' timeout (a URL's own `options=-c statement_timeout=…` wins).
    pub async fn connect_with(url: &str, settings: PgOptions) -> Result<PgStore, StoreError> {
        let max_connections = settings.max_connections;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Unavailable(format!("`{}` is not a PostgreSQL URL: {e}", redact(url))))?;
        // A server that stalls inside a transaction (frozen, swapped out,
        // partitioned) must not hold its row locks for ever: the lease row
        // it reads FOR SHARE would keep every other server from taking
        // over. PostgreSQL ends such a session, rolling its writes back.
        // A URL's own `options=-c idle_in_transaction_session_timeout=…` wins.
        let options = config.get_options().unwrap_or("").to_string();
        if !options.contains("idle_in_transaction_session_timeout") {
            config.options(format!("{options} -c idle_in_transaction_session_timeout={}", IDLE_IN_TRANSACTION.as_millis()).trim());
        }
        if let Some(timeout) = settings.statement_timeout {
            let options = config.get_options().unwrap_or("").to_string();
            if !options.contains("statement_timeout") {
                config.options(format!("{options} -c statement_timeout={}", timeout.as_millis().max(1)).trim());
            }
        }
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(max_connections.max(2)).build().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut counters_config = config.clone();
        let options = counters_config.get_options().unwrap_or("").to_string();
        counters_config.options(format!("{options} -c synchronous_commit=off"));
        let counters =
            Pool::builder(Manager::from_config(counters_config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast }))
                .max_size(4)
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL at {}: {}", redact(url), error_chain(&e)))
            }
            other => StoreError::Unavailable(other.to_string()),
        })?;
        // Migrations may rewrite large tables: no statement timeout for them.
        client.batch_execute("SET statement_timeout = 0").await.map_err(error)?;
        let version = schema::migrate(&mut client).await?;
        client.batch_execute("RESET statement_timeout").await.map_err(error)?;
        let row = client.query_one("SELECT value FROM cluster_meta WHERE key = $1", &[&crate::SHAPE_KEY]).await.map_err(error)?;
        let shape_key = crate::shape_key_from(row.get(0))?;
        drop(client);
        tracing::info!(url = %redact(url), schema_version = version, "connected to the PostgreSQL store");
        let (messages, _) = tokio::sync::broadcast::channel(4096);
        let listener = tokio::spawn(listen(config, messages.clone()));
        let observer = ObserverSlot::default();
        let combiner = apply::Combiner::start(pool.clone(), observer.clone());
        let creates = super::group::Combiner::start(pool.clone(), observer.clone(), super::inserts::MAX_CREATED);
        Ok(PgStore {
            pool,
            counters,
            messages,
            listener,
            combiner,
            creates,
            observer,
            shape_key,
            waited_micros: Default::default(),
            waits: Default::default(),
            offset: Default::default(),
        })
    }

    /// A connection from the pool.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        use std::sync::atomic::Ordering;
        // Only a caller that found no idle connection waited.
        if self.pool.status().available > 0 {
            return self.pool.get().await.map_err(pool_error);
        }
        let began = std::time::Instant::now();
        let client = self.pool.get().await.map_err(pool_error);
        self.waited_micros.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
        client
    }

    /// A setting of this store's sessions (`SHOW name`), as PostgreSQL says it.
    pub async fn setting(&self, name: &str) -> Result<String, StoreError> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StoreError::Invalid { field: "name".into(), message: "a setting's name is letters, digits and _".into() });
        }
        let client = self.client().await?;
        Ok(client.query_one(&format!("SHOW {name}"), &[]).await.map_err(error)?.get(0))
    }

    /// The pool now: connections open, idle, at most; callers waiting; and
    /// the time callers have waited for one so far.
    pub fn pool_status(&self) -> crate::PoolStatus {
        use std::sync::atomic::Ordering;
        let status = self.pool.status();
        crate::PoolStatus {
            max: status.max_size as u64,
            open: status.size as u64,
            idle: status.available as u64,
            waiting: status.waiting as u64,
            waits: self.waits.load(Ordering::Relaxed),
            waited_seconds: self.waited_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The [`Store`](crate::Store) methods on messages between servers, as
/// `pg_` methods its impl (in `mod.rs`) hands each call to; the trait
/// documents each.
impl PgStore {
    pub(super) async fn pg_publish(&self, message: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &message]).await.map_err(error)?;
        Ok(())
    }
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(super::redact("postgres://shep:secret@db:5432/shep"), "postgres://shep:***@db:5432/shep");
        assert_eq!(super::redact("postgres://db/shep"), "postgres://db/shep");
    }
}

//! Leadership among the servers sharing a store. Every server serves the
//! API; exactly one, the holder of the store's lease, runs the scheduler
//! loop and node failure detection. The lease is renewed every third of
//! its time to live; a server that cannot renew it in time stops acting as
//! leader by its own clock, and every leader-only write names the lease's
//! epoch, which the store checks in the same transaction (fencing): a
//! paused old leader that wakes up can never commit a placement after a
//! new one took over.

use shepherd_store::{Lease, ServerRecord, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// This server's view of the lease.
#[derive(Clone)]
pub struct Leadership {
    id: String,
    ttl: Duration,
    current: Arc<watch::Sender<Option<Held>>>,
}

/// A lease this server holds, and until when by its own clock.
#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    /// The lease's end by this process's monotonic clock, less a margin
    /// for the clocks of database and server drifting apart.
    valid_until: Instant,
}

impl Leadership {
    /// Leadership for the server `id`, with leases of `ttl`.
    pub fn new(id: String, ttl: Duration) -> Leadership {
        let (current, _) = watch::channel(None);
        Leadership { id, ttl, current: Arc::new(current) }
    }

    /// This server's id (the lease's holder when it leads).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease, if this server leads now.
    pub fn lease(&self) -> Option<Lease> {
        self.current.borrow().as_ref().filter(|held| Instant::now() < held.valid_until).map(|held| held.lease.clone())
    }

    /// Whether this server leads now.
    pub fn is_leader(&self) -> bool {
        self.lease().is_some()
    }

    /// Changes of leadership (`true`: this server leads).
    pub fn watch(&self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(self.is_leader());
        let mut changes = self.current.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let leads = changes.borrow().is_some();
                if tx.send(leads).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// A leader-only write was fenced: this server does not lead any more.
    pub fn step_down(&self) {
        if self.current.send_replace(None).is_some() {
            tracing::warn!(server = %self.id, "fenced by a newer leader: stepping down");
        }
    }

    /// One round: take or renew the lease.
    pub async fn round(&self, store: &dyn Store) {
        let asked = Instant::now();
        // A round that hangs (the database cut off, its packets dropped)
        // ends as a failed one within half a lease, so that leadership
        // lapses visibly (logged, and told to `watch`ers), not only by
        // `lease()`'s clock.
        let answer = match tokio::time::timeout(self.ttl / 2, store.acquire_lease(&self.id, self.ttl)).await {
            Ok(answer) => answer,
            Err(_) => Err(shepherd_store::StoreError::Unavailable(format!("no answer within {:?}", self.ttl / 2))),
        };
        match answer {
            Ok(Some(lease)) => {
                // The lease counts from before the request: margin for the round trip and clock drift.
                let valid_until = asked + self.ttl.mul_f64(0.8);
                let was = self.current.send_replace(Some(Held { lease: lease.clone(), valid_until }));
                if was.is_none() {
                    tracing::info!(server = %self.id, epoch = lease.epoch, "leading");
                }
                if was.is_none_or(|was| was.lease.epoch != lease.epoch) {
                    // The previous leader may have died between committing
                    // placements and telling the servers that hold the
                    // agents: every agent looks at what it owns.
                    crate::nodes::dispatch::reconcile_everywhere(store).await;
                }
            }
            Ok(None) => {
                if self.current.send_replace(None).is_some() {
                    tracing::warn!(server = %self.id, "another server holds the lease: following");
                }
            }
            Err(e) => {
                tracing::warn!(server = %self.id, error = %e, "cannot renew the lease");
                // Still leading until the lease runs out by our own clock.
                let expired = self.current.borrow().as_ref().is_some_and(|held| Instant::now() >= held.valid_until);
                if expired {
                    self.step_down();
                }
            }
        }
    }

    /// Takes and renews the lease until `shutdown`; then gives it up. Also
    /// records this server (its URL and role) for `shepherd servers`.
    pub async fn run(self, store: Arc<dyn Store>, url: String, mut shutdown: watch::Receiver<bool>) {
        let started_at = shepherd_core::Timestamp::now();
        loop {
            self.round(store.as_ref()).await;
            let role = if self.is_leader() { "leader" } else { "follower" };
            let record = ServerRecord {
                id: self.id.clone(),
                url: url.clone(),
                role: role.into(),
                started_at,
                last_seen_at: shepherd_core::Timestamp::now(),
            };
            if let Err(e) = store.touch_server(record).await {
                tracing::debug!(error = %e, "server heartbeat not stored");
            }
            // The leader renews every third of the lease; the others look
            // more often (a tenth, at least 100 ms), so that one takes over
            // soon after a dead leader's lease runs out.
            let pause = if self.is_leader() { self.ttl / 3 } else { (self.ttl / 10).max(Duration::from_millis(100)).min(self.ttl / 3) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => break,
            }
        }
        if self.is_leader() {
            // Stopping, not fenced: said as it is.
            if self.current.send_replace(None).is_some() {
                tracing::info!(server = %self.id, "stopping: giving the lease up");
            }
            if let Err(e) = store.release_lease(&self.id).await {
                tracing::warn!(error = %e, "could not give the lease up");
            }
        }
    }
}

/// Whether an error means this server lost the lease.
pub fn fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Fenced { .. })
}

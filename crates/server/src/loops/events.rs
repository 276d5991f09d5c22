//! The event stream's live side: one poller per server reads new events
//! from the store (where every write recorded them, in its transaction) and
//! hands them to every follower on this server; the leader prunes what is
//! older than the retention window.
//!
//! A follower first reads the store from its own cursor (`Last-Event-ID`),
//! then takes the poller's batches. Each batch says where its read began,
//! so a follower that finds a gap between what it has and a batch (it
//! lagged, or the poller started after it) reads the gap from the store:
//! nothing is missed, and cursors (totally ordered) drop what it already has.

use shepherd_core::{EventCursor, StoredEvent};
use shepherd_store::{Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often the poller looks for new events while anyone follows.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Stored rows per read.
pub const PAGE_ROWS: usize = 256;

/// Events read by the poller in one go.
#[derive(Debug)]
pub struct Batch {
    /// The cursor the read began after (`None`: from the oldest kept).
    pub after: Option<EventCursor>,
    pub events: Vec<StoredEvent>,
}

/// The poller and its followers.
pub struct EventHub {
    store: Arc<dyn Store>,
    batches: broadcast::Sender<Arc<Batch>>,
    /// Where the poller has read up to (`None`: not polling: nobody follows).
    position: Mutex<Option<EventCursor>>,
    /// Seals the cursors a project's stream hands out.
    seal: CursorSeal,
}

/// A project's stream gets its cursors sealed (ChaCha20-Poly1305 under the
/// cluster's key): the store's cursors count every project's events, and a
/// tenant must learn nothing of the others' work from its own ids. The
/// nonce is an HMAC of the cursor, so one event always has one id (a
/// client deduplicates by it) and ids say nothing of order or distance. A
/// sealed cursor resumes the stream on any server of the cluster, and one
/// the cluster did not seal is refused.
pub struct CursorSeal {
    key: ring::aead::LessSafeKey,
    nonces: ring::hmac::Key,
}

impl CursorSeal {
    /// A seal under `secret` (32 bytes are used: shorter secrets are padded
    /// by hashing).
    pub fn new(secret: &[u8]) -> CursorSeal {
        let derive = |label: &[u8]| {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            context.update(label);
            context.update(secret);
            context.finish()
        };
        let digest = derive(b"event cursor key\n");
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, digest.as_ref()).unwrap_or_else(|_| {
            // SHA-256 is exactly the key's length: never reached.
            unreachable!("a ChaCha20-Poly1305 key is 32 bytes")
        });
        let nonces = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"event cursor nonce\n").as_ref());
        CursorSeal { key: ring::aead::LessSafeKey::new(unbound), nonces }
    }

    /// A seal under a key of this process alone (tests, embedders).
    pub fn random() -> CursorSeal {
        let mut secret = [0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
        CursorSeal::new(&secret)
    }

    /// `cursor`, sealed: URL-safe base64 of nonce, ciphertext and tag.
    pub fn seal(&self, cursor: EventCursor) -> String {
        use base64::Engine as _;
        let mut data = cursor.to_string().into_bytes();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&ring::hmac::sign(&self.nonces, &data).as_ref()[..12]);
        if self.key.seal_in_place_append_tag(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::empty(), &mut data).is_err()
        {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The cursor sealed in `text`; `None` if this cluster did not seal it.
    pub fn open(&self, text: &str) -> Option<EventCursor> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, ring::aead::Aad::empty(), &mut sealed).ok()?;
        std::str::from_utf8(plain).ok()?.parse().ok()
    }
}

impl EventHub {
    /// A hub over `store`, its project cursors sealed with a key of this
    /// process; [`EventHub::run`] polls.
    pub fn new(store: Arc<dyn Store>) -> Arc<EventHub> {
        EventHub::with_seal(store, CursorSeal::random())
    }

    /// A hub whose project cursors are sealed with `seal` (the cluster's
    /// key, so that any server resumes them).
    pub fn with_seal(store: Arc<dyn Store>, seal: CursorSeal) -> Arc<EventHub> {
        let (batches, _) = broadcast::channel(256);
        Arc::new(EventHub { store, batches, position: Mutex::new(None), seal })
    }

    /// Seals and opens project cursors.
    pub fn seal(&self) -> &CursorSeal {
        &self.seal
    }

    /// The store the events are read from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Batches from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.batches.subscribe()
    }

    /// Polls while anyone follows, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.poll().await {
                tracing::debug!(error = %e, "could not read the event stream");
            }
        }
    }

    /// One look for new events.
    async fn poll(&self) -> Result<(), StoreError> {
        if self.batches.receiver_count() == 0 {
            // Nobody follows: read nothing (followers find their own way
            // back to the present), and start from the newest next time.
            self.set_position(None);
            return Ok(());
        }
        let position = self.position.lock().map(|p| *p).unwrap_or(None);
        let mut after = match position {
            Some(cursor) => Some(cursor),
            None => match self.store.latest_event().await? {
                Some(latest) => {
                    // Followers that have less read the gap from the store.
                    self.set_position(Some(latest));
                    let _ = self.batches.send(Arc::new(Batch { after: Some(latest), events: Vec::new() }));
                    return Ok(());
                }
                None => None,
            },
        };
        loop {
            let events = self.store.read_events(after, PAGE_ROWS).await?;
            let Some(last) = events.last().map(|e| e.cursor) else { return Ok(()) };
            let full = events.len() >= PAGE_ROWS;
            self.set_position(Some(last));
            let _ = self.batches.send(Arc::new(Batch { after, events }));
            if !full {
                return Ok(());
            }
            // More waiting: the next page at once.
            after = Some(last);
        }
    }

    fn set_position(&self, cursor: Option<EventCursor>) {
        if let Ok(mut p) = self.position.lock() {
            *p = cursor;
        }
    }
}

/// Prunes events older than `retention`, on the leader, every minute.
pub async fn prune(
    store: Arc<dyn Store>,
    leadership: crate::loops::leader::Leadership,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        if !leadership.is_leader() {
            continue;
        }
        let before = shepherd_core::Timestamp(shepherd_core::Timestamp::now().millis() - retention.as_millis() as i64);
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "could not prune old events"),
        }
        // Idempotency keys live 24 hours.
        let expired = shepherd_core::Timestamp(shepherd_core::Timestamp::now().millis() - shepherd_store::workflow::IDEMPOTENCY_TTL_MS);
        match store.prune_idempotency(expired).await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "pruned expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "could not prune expired idempotency keys"),
        }
    }
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn sealed_cursors_open_under_their_key_only_and_say_nothing() {
        let seal = CursorSeal::new(b"the cluster's key");
        let cursor = EventCursor { major: 1234, minor: 5, index: 6 };
        let (a, b) = (seal.seal(cursor), seal.seal(cursor));
        assert_eq!(a, b, "one event, one id");
        assert_ne!(a, seal.seal(EventCursor { major: 1234, minor: 5, index: 7 }));
        assert!(!a.contains("1234"));
        assert_eq!(seal.open(&a), Some(cursor));
        assert_eq!(CursorSeal::new(b"the cluster's key").open(&b), Some(cursor), "another server of the cluster opens it");
        assert_eq!(CursorSeal::new(b"another cluster").open(&a), None);
        assert_eq!(seal.open("1234-5-6"), None, "a plain cursor is not a project's");
        let mut forged = a.into_bytes();
        forged[20] ^= 1;
        assert_eq!(seal.open(&String::from_utf8(forged).unwrap_or_default()), None);
    }
}

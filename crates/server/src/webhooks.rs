//! Webhooks: when a task that names a URL ends, the leader POSTs the task's
//! JSON there, signed, and tries again with backoff until the endpoint
//! answers 2xx or a day has passed.
//!
//! - Every task that names a webhook gets a delivery row when it is stored
//!   (the same transaction); a delivery is due once its task has ended.
//! - Each try is recorded (status, latency, error) before the next is
//!   planned: `GET /v1/tasks/{id}/webhook` shows them.
//! - Delivery is at least once: a server that dies between the endpoint's
//!   answer and the record sends it again. `X-Shepherd-Delivery` (the task
//!   id) is the idempotency key receivers dedupe on.
//! - Signed: `X-Shepherd-Signature: sha256=HEX(HMAC-SHA256(secret,
//!   TIMESTAMP + "." + BODY))` with `X-Shepherd-Timestamp: TIMESTAMP` (Unix
//!   seconds), so a receiver refuses replays older than it allows. The
//!   secret is the project's (`GET /v1/projects/{p}/webhook-secret`).
//! - A slow or dead endpoint costs a bounded number of connections (at most
//!   [`MAX_IN_FLIGHT`], each with a 10 s timeout) in this loop of its own:
//!   never the scheduler's or the API's time.

use crate::leader::Leadership;
use ring::hmac;
use shepherd_core::{TaskId, Timestamp};
use shepherd_store::{Store, StoreError, WebhookAttempt, WebhookDelivery, WebhookNext};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// The project secret holding the webhook signing key (a name no user
/// secret can have).
pub const SECRET_NAME: &str = ".webhook";
/// Tries stop this long after the task ended.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// At most this many deliveries at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// One try's limit.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before try `next` (2 for the first retry): 1 s, doubling, at most 5 min.
pub fn backoff(next: u32) -> Duration {
    Duration::from_secs((1u64 << next.saturating_sub(2).min(16)).min(300))
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A project's signing secret, made (32 random bytes, hex) on first use.
pub async fn project_secret(store: &dyn Store, project: &str) -> Result<String, StoreError> {
    let fresh = random_hex()?;
    let value = store.ensure_secret(project, SECRET_NAME, fresh.into_bytes(), Timestamp::now()).await?;
    Ok(String::from_utf8_lossy(&value).into_owned())
}

/// Replaces a project's signing secret.
pub async fn rotate_secret(store: &dyn Store, project: &str) -> Result<String, StoreError> {
    let fresh = random_hex()?;
    store.put_secret(project, SECRET_NAME, fresh.clone().into_bytes(), Timestamp::now()).await?;
    Ok(fresh)
}

fn random_hex() -> Result<String, StoreError> {
    crate::auth::random_hex().map_err(|_| StoreError::Corrupt("no randomness for a webhook secret".into()))
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast or
/// documentation space (IPv4, IPv6, and IPv4 mapped into IPv6).
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves webhook hosts, keeping only public addresses (so a name that
/// resolves to an internal address, now or later, is refused as well).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("`{host}` resolves to no public address (the admin allows others with --webhook-allow-private)").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The delivery loop (leader only).
pub struct Dispatcher {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    allow_private: bool,
    slots: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashSet<TaskId>>>,
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(store: Arc<dyn Store>, allow_private: bool) -> Result<Dispatcher, reqwest::Error> {
        // https endpoints: the binary installs ring's provider; an embedder may not have.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        let http = builder
            .timeout(TRY_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("shepherd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Dispatcher { store, http, allow_private, slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), in_flight: Arc::default() })
    }

    /// Runs until shutdown: while leading, starts the due deliveries.
    pub async fn run(self, leadership: Leadership, mut shutdown: watch::Receiver<bool>) {
        loop {
            if leadership.is_leader() {
                if let Err(e) = self.start_due().await {
                    tracing::warn!(error = %e, "reading due webhooks failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn start_due(&self) -> Result<(), StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        for delivery in self.store.due_webhooks(Timestamp::now(), free + MAX_IN_FLIGHT).await? {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else { break };
            if !self.in_flight.lock().map(|mut set| set.insert(delivery.task_id)).unwrap_or(false) {
                continue;
            }
            let (store, http, in_flight, allow_private) =
                (self.store.clone(), self.http.clone(), self.in_flight.clone(), self.allow_private);
            tokio::spawn(async move {
                let id = delivery.task_id;
                if let Err(e) = deliver(store.as_ref(), &http, delivery, allow_private).await {
                    tracing::warn!(task = %id, error = %e, "webhook try not recorded");
                }
                if let Ok(mut set) = in_flight.lock() {
                    set.remove(&id);
                }
                drop(permit);
            });
        }
        Ok(())
    }
}

/// One try: POST, record, plan the next.
async fn deliver(store: &dyn Store, http: &reqwest::Client, delivery: WebhookDelivery, allow_private: bool) -> Result<(), StoreError> {
    let Some(task) = store.get_task(delivery.task_id).await? else { return Ok(()) };
    let number = delivery.attempts + 1;
    // An address in the URL itself is never resolved: check it here.
    if !allow_private {
        if let Some(ip) = literal_ip(&delivery.url).filter(|ip| !is_public(*ip)) {
            let error = Some(format!("{ip} is not a public address (the admin allows others with --webhook-allow-private)"));
            let attempt = WebhookAttempt { number, at: Timestamp::now(), status: None, latency_ms: 0, error };
            return store.record_webhook(delivery.task_id, attempt, WebhookNext::GiveUp).await;
        }
    }
    let body = serde_json::to_vec(&task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let secret = project_secret(store, &delivery.project).await?;
    let timestamp = Timestamp::now().millis() / 1000;
    let began = Instant::now();
    let sent = http
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("x-shepherd-event", "task.finished")
        .header("x-shepherd-delivery", delivery.task_id.to_string())
        .header("x-shepherd-attempt", number.to_string())
        .header("x-shepherd-timestamp", timestamp.to_string())
        .header("x-shepherd-signature", signature(secret.as_bytes(), timestamp, &body))
        .body(body)
        .send()
        .await;
    let latency_ms = began.elapsed().as_millis() as u64;
    let (status, error) = match sent {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => (Some(response.status().as_u16()), Some(format!("answered {}", response.status()))),
        Err(e) => (None, Some(error_text(&e))),
    };
    let now = Timestamp::now();
    let next = if error.is_none() {
        WebhookNext::Delivered
    } else {
        let ended = task.finished_at.unwrap_or(now);
        let at = now.plus(backoff(number + 1));
        if at.millis() - ended.millis() > GIVE_UP_AFTER.as_millis() as i64 {
            WebhookNext::GiveUp
        } else {
            WebhookNext::RetryAt(at)
        }
    };
    tracing::debug!(task = %delivery.task_id, number, ?status, latency_ms, ?next, "webhook try");
    store.record_webhook(delivery.task_id, WebhookAttempt { number, at: now, status, latency_ms, error }, next).await
}

/// The IP address a URL names directly, if it does.
fn literal_ip(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h).parse().ok()
}

/// A reqwest error with its causes (the connection's reason is in a source).
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_called_unless_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert_eq!(literal_ip("http://127.0.0.1:8080/x"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(literal_ip("https://user@[::1]:443/x"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("https://hooks.example.com/x"), None);
    }

    #[test]
    fn backoff_doubles_from_a_second_up_to_five_minutes() {
        let waits: Vec<u64> = (2..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let a = signature(b"secret", 1700000000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature(b"secret", 1700000001, b"{}"));
        assert_ne!(a, signature(b"secret", 1700000000, b"{ }"));
        assert_ne!(a, signature(b"other", 1700000000, b"{}"));
        // The HMAC-SHA256 of "1700000000.{}" under "secret", as Python's hmac computes it.
        assert_eq!(a, "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163");
    }
}

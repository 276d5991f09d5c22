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
//!   never the scheduler's or the API's time. One project holds at most
//!   [`MAX_PER_PROJECT`] of them, and due deliveries are read a few per
//!   project, so one project's hanging endpoints never delay another's.
//! - Only public addresses are called (unless the admin allows others):
//!   the address is checked where it is used. The URL is parsed as the
//!   HTTP client parses it (stored that way at submission), so an IP in it
//!   is the address connected to and is checked before the try; a name is
//!   resolved by [`PublicOnly`], the client's own resolver, whose answer is
//!   the only set of addresses the client connects to. A refused address
//!   ends the delivery at once, by name or by number alike.

use crate::loops::leader::Leadership;
use ring::hmac;
use shepherd_core::{TaskId, Timestamp};
use shepherd_store::{Store, StoreError, WebhookAttempt, WebhookDelivery, WebhookNext};
use std::collections::{HashMap, HashSet};
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
/// At most this many of one project's deliveries at once.
pub const MAX_PER_PROJECT: usize = 4;
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
    crate::service::auth::random_hex().map_err(|_| StoreError::Corrupt("no randomness for a webhook secret".into()))
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// reserved, benchmarking or documentation space; IPv6 forms that carry an
/// IPv4 address (mapped, compatible, NAT64, 6to4) are judged by it.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0; 6] {
                return false; // ::/96: unspecified, loopback, IPv4-compatible
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(IpAddr::V4(embedded(s[6], s[7]))); // NAT64
            }
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(s[1], s[2]))); // 6to4
            }
            !(v6.is_multicast() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

/// Why a delivery was not even tried: its address is not public.
#[derive(Debug)]
pub struct NotPublic(pub String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (the admin allows others with --webhook-allow-private)", self.0)
    }
}

impl std::error::Error for NotPublic {}

/// Checks the address a URL names itself, parsed as the client parses it
/// (names are checked by [`PublicOnly`] when the client resolves them).
pub fn check_url(text: &str) -> Result<(), NotPublic> {
    let url = url::Url::parse(text).map_err(|e| NotPublic(format!("`{text}` is not a URL the client can call: {e}")))?;
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(NotPublic(format!("`{text}` names no host"))),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(NotPublic(format!("{ip} is not a public address")))
    }
}

/// Whether a client error came from refusing an address ([`NotPublic`]).
fn refused(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(not_public) = cause.downcast_ref::<NotPublic>() {
            return Some(not_public.to_string());
        }
        source = cause.source();
    }
    None
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
                return Err(
                    Box::new(NotPublic(format!("`{host}` resolves to no public address"))) as Box<dyn std::error::Error + Send + Sync>
                );
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
    in_flight: Arc<Mutex<InFlight>>,
}

/// The deliveries being tried, and how many per project.
#[derive(Default)]
struct InFlight {
    tasks: HashSet<TaskId>,
    per_project: HashMap<String, usize>,
}

impl InFlight {
    /// Takes a place for `delivery` if it is not being tried already and
    /// its project has room.
    fn take(&mut self, delivery: &WebhookDelivery) -> bool {
        let count = self.per_project.get(&delivery.project).copied().unwrap_or(0);
        if count >= MAX_PER_PROJECT || self.tasks.contains(&delivery.task_id) {
            return false;
        }
        self.tasks.insert(delivery.task_id);
        self.per_project.insert(delivery.project.clone(), count + 1);
        true
    }

    fn give_back(&mut self, task: TaskId, project: &str) {
        self.tasks.remove(&task);
        if let Some(count) = self.per_project.get_mut(project) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_project.remove(project);
            }
        }
    }
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
        // A few per project (in order of when each is due), so that one
        // project's backlog never fills the list.
        let due = self.store.due_webhooks(Timestamp::now(), free + MAX_IN_FLIGHT, MAX_PER_PROJECT).await?;
        for delivery in due {
            if !self.in_flight.lock().map(|mut f| f.take(&delivery)).unwrap_or(false) {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                if let Ok(mut f) = self.in_flight.lock() {
                    f.give_back(delivery.task_id, &delivery.project);
                }
                break;
            };
            let (store, http, in_flight, allow_private) =
                (self.store.clone(), self.http.clone(), self.in_flight.clone(), self.allow_private);
            tokio::spawn(async move {
                let (id, project) = (delivery.task_id, delivery.project.clone());
                if let Err(e) = deliver(store.as_ref(), &http, delivery, allow_private).await {
                    tracing::warn!(task = %id, error = %e, "webhook try not recorded");
                }
                if let Ok(mut f) = in_flight.lock() {
                    f.give_back(id, &project);
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
    // An address in the URL itself is never resolved: check it here, as
    // the client parses it.
    if !allow_private {
        if let Err(refused) = check_url(&delivery.url) {
            let attempt = WebhookAttempt { number, at: Timestamp::now(), status: None, latency_ms: 0, error: Some(refused.to_string()) };
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
    let (status, error, not_public) = match sent {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None, false),
        Ok(response) => (Some(response.status().as_u16()), Some(format!("answered {}", response.status())), false),
        Err(e) => match refused(&e) {
            // The resolver refused every address of the name: as for a number, no more tries.
            Some(why) => (None, Some(why), true),
            None => (None, Some(error_text(&e)), false),
        },
    };
    let now = Timestamp::now();
    let next = if not_public {
        WebhookNext::GiveUp
    } else if error.is_none() {
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
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "64:ff9b::101:101"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        // Literal addresses are checked as the client parses them: every
        // spelling of loopback or the metadata address is one address.
        for refused in [
            "http://127.0.0.1:8080/x",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://0/",
            "http://127.0.0.1./",
            "http://0177.0.0.1/",
            "http://127.000.000.001/",
            "http://%31%32%37.0.0.1/",
            "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/",
            "http://127\u{3002}0\u{3002}0\u{3002}1/",
            "http://127.0.0.1:80\\@example.com/",
            "http://169.254.169.254/latest/meta-data",
            "http://2852039166/",
            "http://[::ffff:a9fe:a9fe]/",
            "https://user@[::1]:443/x",
        ] {
            assert!(check_url(refused).is_err(), "{refused}");
        }
        assert!(check_url("https://hooks.example.com/x").is_ok(), "names are checked when resolved");
        assert!(check_url("https://1.1.1.1/x").is_ok());
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

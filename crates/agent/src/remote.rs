//! An agent on another host: registers with the server using the join
//! token, keeps a streaming connection open on which the server pushes
//! assignments and cancels (newline-delimited JSON, no polling), reports
//! transitions and output over HTTP, heartbeats, and on every (re)connect
//! reconciles its attempts with what the server says it owns.
//!
//! Protocol v1, all under `/v1/agent/`: the messages are `shepherd-proto`'s
//! (re-exported here), the calls are documented in ARCHITECTURE.md.

use crate::backend::{Backend, BackendError};
use crate::runner::Agent;
use async_trait::async_trait;
use serde::Deserialize;
use shepherd_core::{Event, LaunchSpec, LogChunk, TaskId};
pub use shepherd_proto::{
    AgentMessage, AssignedAttempt, Captured, EventsRequest, EventsResponse, Heartbeat, HeartbeatAnswer, LogsRequest, Registered,
    Registration, WireChunk, WireLaunch, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The server's agent API as the agent's [`Backend`].
pub struct HttpBackend {
    /// The server of the current session (one of the join list).
    server: RwLock<String>,
    http: reqwest::Client,
    token: RwLock<String>,
}

impl HttpBackend {
    fn url(&self, path: &str) -> String {
        let server = self.server.read().map(|s| s.clone()).unwrap_or_default();
        format!("{server}{path}")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let token = self.token.read().map(|t| t.clone()).unwrap_or_default();
        self.http.request(method, self.url(path)).bearer_auth(token).header(PROTOCOL_HEADER, PROTOCOL_VERSION)
    }

    async fn send<T: for<'de> Deserialize<'de>>(&self, builder: reqwest::RequestBuilder) -> Result<T, BackendError> {
        let response = builder.send().await.map_err(|e| BackendError::Unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(BackendError::Refused { status: status.as_u16(), body });
        }
        response.json().await.map_err(|e| BackendError::BadAnswer(e.to_string()))
    }
}

#[async_trait]
impl Backend for HttpBackend {
    async fn report(&self, events: Vec<(TaskId, Event)>) -> Result<Vec<bool>, BackendError> {
        // A report must not be lost to a short outage or a server restart: retry for a while.
        let body = EventsRequest { events };
        let mut wait = Duration::from_millis(100);
        for _ in 0..40 {
            match self.send::<EventsResponse>(self.request(reqwest::Method::POST, "/v1/agent/events").json(&body)).await {
                Ok(response) => return Ok(response.accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "report not delivered; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(BackendError::Undeliverable)
    }

    async fn launch_spec(&self, id: TaskId) -> Result<Option<LaunchSpec>, BackendError> {
        let wire: Option<WireLaunch> = self.send(self.request(reqwest::Method::GET, &format!("/v1/agent/tasks/{id}/launch"))).await?;
        Ok(wire.map(WireLaunch::decode))
    }

    async fn append_logs(&self, chunks: Vec<LogChunk>) -> Result<(), BackendError> {
        let body = LogsRequest { chunks: chunks.iter().map(WireChunk::from).collect() };
        let _: serde_json::Value = self.send(self.request(reqwest::Method::POST, "/v1/agent/logs").json(&body)).await?;
        Ok(())
    }

    async fn captured(&self, id: TaskId, attempt: u32) -> Result<Captured, BackendError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/agent/tasks/{id}/captured?attempt={attempt}"))).await
    }

    async fn assigned(&self, _node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError> {
        self.send(self.request(reqwest::Method::GET, "/v1/agent/assigned")).await
    }

    async fn progress(&self, id: TaskId, attempt: u32, progress: shepherd_core::Progress) -> Result<(), BackendError> {
        let body = shepherd_proto::ProgressReport { attempt, progress };
        let _: serde_json::Value =
            self.send(self.request(reqwest::Method::POST, &format!("/v1/agent/tasks/{id}/progress")).json(&body)).await?;
        Ok(())
    }

    async fn package(&self, id: TaskId) -> Result<Vec<u8>, BackendError> {
        let response = self
            .request(reqwest::Method::GET, &format!("/v1/agent/tasks/{id}/package"))
            .send()
            .await
            .map_err(|e| BackendError::Unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(BackendError::Refused { status: status.as_u16(), body });
        }
        Ok(response.bytes().await.map_err(|e| BackendError::BadAnswer(e.to_string()))?.to_vec())
    }
}

/// How a remote agent joins.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The servers to join, tried in turn (servers sharing a store: any of them).
    pub servers: Vec<String>,
    pub join_token: String,
    pub registration: Registration,
    /// A CA certificate (PEM) to trust for an https:// server, besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

/// Makes rustls use ring for every client in this process. Call once at start.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP(S) client trusting the system's roots plus `ca_pem`. On a host
/// (or a minimal container) without system roots it trusts `ca_pem` alone,
/// which is all plain `http://` and a private CA need.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, ClientError> {
    install_crypto_provider();
    let extra = match ca_pem {
        Some(pem) => vec![reqwest::Certificate::from_pem(pem).map_err(ClientError::BadCa)?],
        None => Vec::new(),
    };
    let mut builder = reqwest::Client::builder();
    for cert in &extra {
        builder = builder.add_root_certificate(cert.clone());
    }
    match builder.build() {
        Ok(client) => Ok(client),
        Err(_) => reqwest::Client::builder().tls_certs_only(extra).build().map_err(ClientError::Build),
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Why an HTTP client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--tls-ca: not a PEM certificate")]
    BadCa(#[source] reqwest::Error),
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// Runs a remote agent until `shutdown` resolves: (re)registers, follows the
/// stream, heartbeats. `make_agent` builds the agent once around the backend.
/// Returns how many attempts the stop left running for adoption.
pub async fn run(
    join: JoinConfig,
    make_agent: impl FnOnce(Arc<dyn Backend>) -> Agent,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<usize, BackendError> {
    let http = http_client(join.ca_pem.as_deref()).map_err(|e| BackendError::Client(error_chain(&e)))?;
    let servers: Vec<String> = join.servers.iter().map(|s| s.trim_end_matches('/').to_string()).collect();
    let first = servers.first().cloned().ok_or_else(|| BackendError::Client("no server to join".into()))?;
    let backend = Arc::new(HttpBackend { server: RwLock::new(first), http, token: RwLock::new(String::new()) });
    let agent = make_agent(backend.clone());
    tokio::pin!(shutdown);
    let mut wait = Duration::from_millis(200);
    let mut next = 0;
    loop {
        let server = servers[next % servers.len()].clone();
        if let Ok(mut current) = backend.server.write() {
            *current = server.clone();
        }
        let started = std::time::Instant::now();
        tokio::select! {
            _ = &mut shutdown => break,
            result = session(&backend, &agent, &join) => {
                match result {
                    Ok(()) => tracing::info!(%server, "stream closed by the server; reconnecting"),
                    Err(e) => tracing::warn!(%server, error = %e, "disconnected from the server; reconnecting"),
                }
            }
        }
        // The next server in the list (the same one when there is one): a
        // server that is gone does not hold the agent back.
        next += 1;
        if started.elapsed() > Duration::from_secs(30) {
            wait = Duration::from_millis(200);
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if next % servers.len() == 0 {
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
    Ok(agent.shutdown().await)
}

/// One connection: register, open the stream, heartbeat, handle messages.
async fn session(backend: &Arc<HttpBackend>, agent: &Agent, join: &JoinConfig) -> Result<(), BackendError> {
    let mut registration = join.registration.clone();
    registration.join_token = join.join_token.clone();
    let registered: Registered = backend
        .send(backend.http.post(backend.url("/v1/agent/register")).header(PROTOCOL_HEADER, PROTOCOL_VERSION).json(&registration))
        .await?;
    if let Ok(mut token) = backend.token.write() {
        *token = registered.node_token;
    }
    // The server says how often (it spaces heartbeats out as the fleet grows).
    let mut every = registered.heartbeat_ms.map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
    let mut response =
        backend.request(reqwest::Method::GET, "/v1/agent/stream").send().await.map_err(|e| BackendError::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(BackendError::Refused { status: response.status().as_u16(), body: "the stream was refused".into() });
    }
    tracing::info!(server = %backend.url(""), node = %registration.node_id, "connected");
    // The engine's image list is refreshed on its own, so a slow engine
    // (busy starting containers) never delays a heartbeat: every 10 s, and
    // at once when a prefetch landed.
    let images = Arc::new(RwLock::new(registration.images.clone()));
    let refresh_images = {
        let (agent, images) = (agent.clone(), images.clone());
        let changed = agent.images_changed();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = changed.notified() => {}
                }
                let fresh = agent.images().await;
                if let Ok(mut images) = images.write() {
                    *images = fresh;
                }
            }
        })
    };
    let _stop_refresh = AbortOnDrop(refresh_images);
    // Declared down by the server: end this session, so the agent registers
    // again and reconciles (fencing what was given away) before new work.
    let (told_down, mut down) = tokio::sync::oneshot::channel::<()>();
    let heartbeat = {
        let backend = backend.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut told_down = Some(told_down);
            loop {
                tokio::time::sleep(every).await;
                let images = images.read().map(|i| i.clone()).unwrap_or_default();
                let body = Heartbeat { images, running: agent.running_count() };
                let timeout = every.clamp(Duration::from_secs(1), Duration::from_secs(5));
                let request = backend.request(reqwest::Method::POST, "/v1/agent/heartbeat").timeout(timeout).json(&body);
                match backend.send::<HeartbeatAnswer>(request).await {
                    Ok(answer) => {
                        if let Some(ms) = answer.heartbeat_ms {
                            every = Duration::from_millis(ms.max(100));
                        }
                    }
                    Err(e) if e.is_status(409) => {
                        tracing::warn!("the server declared this node down; reconnecting");
                        if let Some(tx) = told_down.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        })
    };
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    let mut buffer: Vec<u8> = Vec::new();
    // Now and then the agent reconciles on its own: an assignment or a
    // cancel lost between servers (one died after committing it) is found.
    let mut anti_entropy = tokio::time::interval_at(tokio::time::Instant::now() + RECONCILE_EVERY, RECONCILE_EVERY);
    // The server pings every few seconds: silence means the link is gone.
    loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(Duration::from_secs(15), response.chunk()) => match chunk {
                Ok(chunk) => chunk,
                Err(_) => break,
            },
            _ = &mut down => return Err(BackendError::DeclaredDown),
            _ = anti_entropy.tick() => {
                agent.reconcile().await?;
                continue;
            }
        };
        let Some(chunk) = chunk.map_err(|e| BackendError::Stream(format!("broke: {e}")))? else { return Ok(()) };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            match serde_json::from_slice::<AgentMessage>(&line) {
                Ok(AgentMessage::Assign { task_id, attempt, launch }) => match launch {
                    Some(launch) if launch.id == task_id && launch.attempt == attempt => agent.assign_launch(launch.decode()),
                    _ => agent.assign(task_id, attempt),
                },
                Ok(AgentMessage::Cancel { task_id }) => agent.cancel(task_id),
                Ok(AgentMessage::Reconcile) => agent.reconcile().await?,
                Ok(AgentMessage::Drain) => agent.drain(),
                Ok(AgentMessage::RemoveVolume { engine_name, project }) => agent.remove_volume(engine_name, project),
                Ok(AgentMessage::Prefetch { image, auth, project, pull_timeout_seconds }) => {
                    agent.prefetch(image, project, auth, Duration::from_secs(u64::from(pull_timeout_seconds)))
                }
                Ok(AgentMessage::Ping) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable message from the server"),
            }
        }
    }
    Err(BackendError::Stream("no word from the server for 15 s".into()))
}

/// How often an agent heartbeats when the server does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// How often a connected agent reconciles with the cluster unasked.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

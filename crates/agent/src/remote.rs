//! An agent on another host: registers with the server using the join
//! token, keeps a streaming connection open on which the server pushes
//! assignments and cancels (newline-delimited JSON, no polling), reports
//! transitions and output over HTTP, heartbeats, and on every (re)connect
//! reconciles its attempts with what the server says it owns.
//!
//! Protocol v1, all under `/v1/agent/` (documented in ARCHITECTURE.md).

use crate::backend::{AssignedAttempt, Backend, BackendError};
use crate::runner::Agent;
use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shepherd_core::{Event, Resources, TaskId, TaskSpec, TaskState, Timestamp};
use shepherd_store::{LaunchSpec, LogChunk, LogStream};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The protocol version an agent speaks; the server refuses others.
pub const PROTOCOL_VERSION: &str = "1";
/// Header carrying it.
pub const PROTOCOL_HEADER: &str = "x-shepherd-agent-protocol";

/// `POST /v1/agent/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub join_token: String,
    pub node_id: String,
    pub hostname: String,
    pub driver: String,
    pub capacity: Resources,
    pub max_tasks: u32,
    pub labels: BTreeMap<String, String>,
    pub images: Vec<String>,
}

/// The server's answer: the credential for everything else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub node_token: String,
}

/// What the server pushes on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Start this attempt. `launch` carries what the agent needs to start
    /// it, saving a round trip; without it the agent fetches the launch spec.
    Assign {
        task_id: TaskId,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        launch: Option<Box<WireLaunch>>,
    },
    /// Stop this task's attempt: it was cancelled.
    Cancel { task_id: TaskId },
    /// Compare your attempts with the server's (sent on every connect).
    Reconcile,
    /// Keep-alive.
    Ping,
}

/// A launch spec on the wire (payload in base64). Its `Debug` leaves out
/// the secrets' values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WireLaunch {
    pub id: TaskId,
    pub state: TaskState,
    pub attempt: u32,
    pub node_id: Option<String>,
    pub cancel_requested: bool,
    pub spec: TaskSpec,
    pub payload: Option<String>,
    pub attempt_started_at: Option<Timestamp>,
    /// Secret values by name (base64).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for WireLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireLaunch")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("spec", &self.spec)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl From<LaunchSpec> for WireLaunch {
    fn from(l: LaunchSpec) -> WireLaunch {
        WireLaunch {
            id: l.id,
            state: l.state,
            attempt: l.attempt,
            node_id: l.node_id,
            cancel_requested: l.cancel_requested,
            spec: l.spec,
            payload: l.payload.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            attempt_started_at: l.attempt_started_at,
            secrets: l.secrets.into_iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))).collect(),
        }
    }
}

impl WireLaunch {
    /// Back to a launch spec (a payload that is not base64 is dropped).
    pub fn decode(self) -> LaunchSpec {
        LaunchSpec {
            id: self.id,
            state: self.state,
            attempt: self.attempt,
            node_id: self.node_id,
            cancel_requested: self.cancel_requested,
            spec: self.spec,
            payload: self.payload.and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok()),
            attempt_started_at: self.attempt_started_at,
            secrets: self
                .secrets
                .into_iter()
                .filter_map(|(k, v)| base64::engine::general_purpose::STANDARD.decode(v).ok().map(|v| (k, v)))
                .collect(),
        }
    }
}

/// A log chunk on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireChunk {
    pub task_id: TaskId,
    pub attempt: u32,
    /// 1 stdout, 2 stderr, 3 system.
    pub stream: u8,
    pub data: String,
}

impl From<&LogChunk> for WireChunk {
    fn from(c: &LogChunk) -> WireChunk {
        WireChunk {
            task_id: c.task_id,
            attempt: c.attempt,
            stream: c.stream as u8,
            data: base64::engine::general_purpose::STANDARD.encode(&c.data),
        }
    }
}

impl WireChunk {
    /// Back to a chunk; `None` if the data is not base64.
    pub fn decode(self) -> Option<LogChunk> {
        let data = base64::engine::general_purpose::STANDARD.decode(self.data).ok()?;
        Some(LogChunk { task_id: self.task_id, attempt: self.attempt, stream: LogStream::from_code(i64::from(self.stream)), data })
    }
}

/// The server's agent API as the agent's [`Backend`].
pub struct HttpBackend {
    server: String,
    http: reqwest::Client,
    token: RwLock<String>,
}

impl HttpBackend {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let token = self.token.read().map(|t| t.clone()).unwrap_or_default();
        self.http.request(method, self.url(path)).bearer_auth(token).header(PROTOCOL_HEADER, PROTOCOL_VERSION)
    }

    async fn send<T: for<'de> Deserialize<'de>>(&self, builder: reqwest::RequestBuilder) -> Result<T, BackendError> {
        let response = builder.send().await.map_err(|e| BackendError(format!("server unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(BackendError(format!("server answered {status}: {body}")));
        }
        response.json().await.map_err(|e| BackendError(format!("bad answer from server: {e}")))
    }
}

#[derive(Serialize, Deserialize)]
pub struct EventsRequest {
    pub events: Vec<(TaskId, Event)>,
}

#[derive(Serialize, Deserialize)]
pub struct EventsResponse {
    pub accepted: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
pub struct LogsRequest {
    pub chunks: Vec<WireChunk>,
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
        Err(BackendError("reports undeliverable for over a minute".into()))
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

    async fn captured(&self, id: TaskId, attempt: u32) -> Result<crate::driver::Captured, BackendError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/agent/tasks/{id}/captured?attempt={attempt}"))).await
    }

    async fn assigned(&self, _node_id: &str) -> Result<Vec<AssignedAttempt>, BackendError> {
        self.send(self.request(reqwest::Method::GET, "/v1/agent/assigned")).await
    }
}

/// How a remote agent joins.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub server: String,
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
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let extra = match ca_pem {
        Some(pem) => vec![reqwest::Certificate::from_pem(pem).map_err(|e| format!("--tls-ca: {e}"))?],
        None => Vec::new(),
    };
    let mut builder = reqwest::Client::builder();
    for cert in &extra {
        builder = builder.add_root_certificate(cert.clone());
    }
    match builder.build() {
        Ok(client) => Ok(client),
        Err(_) => reqwest::Client::builder().tls_certs_only(extra).build().map_err(|e| format!("cannot build the HTTP client: {e}")),
    }
}

/// Runs a remote agent until `shutdown` resolves: (re)registers, follows the
/// stream, heartbeats. `make_agent` builds the agent once around the backend.
/// Returns how many attempts the stop left running for adoption.
pub async fn run(
    join: JoinConfig,
    make_agent: impl FnOnce(Arc<dyn Backend>) -> Agent,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<usize, BackendError> {
    let http = http_client(join.ca_pem.as_deref()).map_err(BackendError)?;
    let backend = Arc::new(HttpBackend { server: join.server.trim_end_matches('/').to_string(), http, token: RwLock::new(String::new()) });
    let agent = make_agent(backend.clone());
    tokio::pin!(shutdown);
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            result = session(&backend, &agent, &join) => {
                match result {
                    Ok(()) => tracing::info!("stream closed by the server; reconnecting"),
                    Err(e) => tracing::warn!(error = %e, "disconnected from the server; reconnecting"),
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
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
    let mut response = backend
        .request(reqwest::Method::GET, "/v1/agent/stream")
        .send()
        .await
        .map_err(|e| BackendError(format!("server unreachable: {e}")))?;
    if !response.status().is_success() {
        return Err(BackendError(format!("stream refused: {}", response.status())));
    }
    tracing::info!(server = %backend.server, node = %registration.node_id, "connected");
    // The engine's image list is refreshed on its own, so a slow engine
    // (busy starting containers) never delays a heartbeat.
    let images = Arc::new(RwLock::new(registration.images.clone()));
    let refresh_images = {
        let (agent, images) = (agent.clone(), images.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
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
                tokio::time::sleep(Duration::from_secs(2)).await;
                let images = images.read().map(|i| i.clone()).unwrap_or_default();
                let body = serde_json::json!({ "images": images, "running": agent.running_count() });
                let request = backend.request(reqwest::Method::POST, "/v1/agent/heartbeat").timeout(Duration::from_secs(5)).json(&body);
                match backend.send::<serde_json::Value>(request).await {
                    Ok(_) => {}
                    Err(e) if e.0.contains("409") => {
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
    // The server pings every few seconds: silence means the link is gone.
    loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(Duration::from_secs(15), response.chunk()) => match chunk {
                Ok(chunk) => chunk,
                Err(_) => break,
            },
            _ = &mut down => return Err(BackendError("declared down by the server".into())),
        };
        let Some(chunk) = chunk.map_err(|e| BackendError(format!("stream broke: {e}")))? else { return Ok(()) };
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
                Ok(AgentMessage::Ping) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable message from the server"),
            }
        }
    }
    Err(BackendError("no word from the server for 15 s".into()))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

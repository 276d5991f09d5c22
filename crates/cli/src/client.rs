//! A small client of the REST API: JSON in, JSON out, API errors turned
//! into messages that name the field.

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where `shepherd up` listens by default, and where the CLI looks.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The server could not be reached or answered 5xx: worth trying again
/// (a restart, an overload).
#[derive(Debug)]
pub struct Transient(pub String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transient {}

/// An error the API answered: its status, code, field and message.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {} ({}, HTTP {})", self.message, self.code, self.status),
            None => write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status),
        }
    }
}

impl std::error::Error for ApiFailure {}

/// Whether an error is worth trying again after a pause.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Transient>().is_some()
}

/// A client of one server, with the token it sends.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    admin_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: String,
    field: Option<String>,
    message: String,
}

impl Client {
    /// A client of `server` sending `token`; [`Client::admin`] sends
    /// `admin_token` instead where one is known.
    pub fn new(server: &str, tls_ca: Option<&std::path::Path>, token: Option<String>, admin_token: Option<String>) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--server `{server}`: use a URL such as {DEFAULT_SERVER}"));
        }
        let pem = match tls_ca {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?),
            None => None,
        };
        let http = shepherd_agent::remote::http_client(pem.as_deref())?;
        Ok(Client { base, http, token, admin_token })
    }

    /// The same client with the admin token, for cluster-wide commands
    /// (nodes, projects, tokens); unchanged if no admin token is known.
    pub fn admin(&self) -> Client {
        let mut client = self.clone();
        if let Some(admin) = &self.admin_token {
            client.token = Some(admin.clone());
        }
        client
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // reqwest's message hides the cause (refused, TLS, DNS): show the chain.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            cause.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        anyhow::Error::new(Transient(format!(
            "cannot reach the Shepherd server at {}: {cause}\nIs `shepherd up` running? Point at another server with --server or SHEPHERD_SERVER (and --tls-ca for a private CA).",
            self.base
        )))
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if status.as_u16() == 401 => Err(anyhow!(
                "{} (HTTP 401)\nGive a token with --token or SHEPHERD_TOKEN, or run `shepherd up` once to write the CLI config.",
                body.error.message
            )),
            Ok(body) if status.is_server_error() => {
                Err(anyhow::Error::new(Transient(format!("{} ({}, HTTP {})", body.error.message, body.error.code, status.as_u16()))))
            }
            Ok(body) => Err(anyhow::Error::new(ApiFailure {
                status: status.as_u16(),
                code: body.error.code,
                field: body.error.field,
                message: body.error.message,
            })),
            Err(_) if status.is_server_error() => {
                Err(anyhow::Error::new(Transient(format!("server answered HTTP {}: {text}", status.as_u16()))))
            }
            Err(_) => Err(anyhow!("server answered HTTP {}: {text}", status.as_u16())),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.request(reqwest::Method::GET, path).send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await?.json().await.context("bad response from server")
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// A request with a JSON body and a JSON answer.
    pub async fn send<B: Serialize, T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: &B) -> Result<T> {
        let response = self.request(method, path).json(body).send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await?.json().await.context("bad response from server")
    }

    /// A POST with a JSON body and an `Idempotency-Key` (if given): a
    /// retry of the same request answers the same and stores nothing twice.
    pub async fn post_idempotent<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B, key: Option<&str>) -> Result<T> {
        let mut request = self.request(reqwest::Method::POST, path).json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await?.json().await.context("bad response from server")
    }

    /// A POST of raw bytes (a zip) with a JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(&self, path: &str, bytes: Vec<u8>, content_type: &str) -> Result<T> {
        let request = self.request(reqwest::Method::POST, path).header("content-type", content_type).body(bytes);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await?.json().await.context("bad response from server")
    }

    /// A request whose answer has no body (204).
    pub async fn send_empty<B: Serialize>(&self, method: reqwest::Method, path: &str, body: Option<&B>) -> Result<()> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await.map(|_| ())
    }

    /// A streaming GET: the caller reads chunks as they come.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        let response = self.request(reqwest::Method::GET, path).send().await.map_err(|e| self.unreachable(e))?;
        Self::check(response).await
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

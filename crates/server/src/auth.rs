//! Who is calling: every API request but health and the OpenAPI document
//! carries `Authorization: Bearer TOKEN`, either the cluster's admin token
//! or one of a project's API tokens. Tokens are random; only their SHA-256
//! is stored. Each project token is rate limited by its project's
//! `requests_per_second`.

use crate::api::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shepherd_core::ProjectLimits;
use shepherd_store::{Store, StoreError, TokenRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up token is trusted before the store is asked again
/// (a revocation on another server takes effect within this; on this
/// server at once).
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);

/// Prefix of every token Shepherd makes, so that leaked ones are easy to find.
pub const TOKEN_PREFIX: &str = "shp_";

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster's admin: every project, nodes, projects and tokens.
    Admin,
    /// A project's token: that project's tasks, logs, secrets and audit log only.
    Project { project: String, token_id: String },
    /// A schedule firing: creates its project's tasks as itself.
    Schedule { project: String, id: String },
}

impl Caller {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Project { token_id, .. } => format!("token:{token_id}"),
            Caller::Schedule { id, .. } => format!("schedule:{id}"),
        }
    }

    /// The project a project token is bound to; `None` for the admin.
    pub fn project(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Project { project, .. } | Caller::Schedule { project, .. } => Some(project),
        }
    }

    /// Whether the caller may see and change `project`'s things.
    pub fn can_access(&self, project: &str) -> bool {
        self.project().is_none_or(|own| own == project)
    }

    /// Refuses anyone but the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project { .. } | Caller::Schedule { .. } => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs the admin token; a project token cannot do it"))
            }
        }
    }

    /// The admin, or a token of `project`; others get the answer a missing
    /// project gets, so that names of other projects do not leak.
    pub fn require_project(&self, project: &str) -> Result<(), ApiError> {
        if self.can_access(project) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("no project {project}")))
        }
    }
}

/// A token's SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    shepherd_agent::package::sha256_hex(token.as_bytes())
}

/// 32 random bytes, hex: the secret part of tokens and webhook secrets.
pub fn random_hex() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new random token: the prefix and 32 random bytes, hex.
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    Ok(format!("{TOKEN_PREFIX}{}", random_hex()?))
}

/// Makes a token for a project and stores its hash; returns the record and
/// the token itself (to be shown once).
pub async fn mint_token(store: &dyn Store, project: &str, name: &str) -> Result<(TokenRecord, String), StoreError> {
    let token = new_token().map_err(|_| StoreError::Corrupt("no randomness for a token".into()))?;
    let record = TokenRecord {
        id: format!("tok_{}", ulid::Ulid::new().to_string().to_lowercase()),
        project: project.to_string(),
        name: name.to_string(),
        created_at: shepherd_core::Timestamp::now(),
        revoked_at: None,
    };
    store.create_token(record.clone(), hash_token(&token)).await?;
    Ok((record, token))
}

struct Cached {
    token: Option<TokenRecord>,
    limits: ProjectLimits,
    at: Instant,
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token checks, their cache, the per-token rate limiter, and a cache of
/// projects' limits (read on every create).
pub struct Auth {
    admin_hash: String,
    cache: Mutex<HashMap<String, Cached>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    limits: Mutex<HashMap<String, (Option<ProjectLimits>, Instant)>>,
}

impl Auth {
    /// Checks for this admin token.
    pub fn new(admin_token: &str) -> Auth {
        Auth {
            admin_hash: hash_token(admin_token),
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets cached lookups, e.g. after a revocation or a limits change.
    pub fn forget(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
        if let Ok(mut limits) = self.limits.lock() {
            limits.clear();
        }
    }

    /// A project's limits (`None`: no such project), cached like tokens.
    pub async fn project_limits(&self, store: &dyn Store, project: &str) -> Result<Option<ProjectLimits>, StoreError> {
        let cached = self.limits.lock().ok().and_then(|l| l.get(project).filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL).map(|(v, _)| *v));
        if let Some(limits) = cached {
            return Ok(limits);
        }
        let limits = store.get_project(project).await?.map(|p| p.limits);
        if let Ok(mut cache) = self.limits.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(project.to_string(), (limits, Instant::now()));
        }
        Ok(limits)
    }

    /// The caller a bearer token belongs to (and its project's limits), or
    /// `None` if the token is unknown or revoked.
    async fn identify(&self, store: &dyn Store, token: &str) -> Result<Option<(Caller, ProjectLimits)>, StoreError> {
        let hash = hash_token(token);
        // Comparing hashes, not tokens: timing tells nothing about the token.
        if hash == self.admin_hash {
            return Ok(Some((Caller::Admin, ProjectLimits::default())));
        }
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(&hash).filter(|c| c.at.elapsed() < TOKEN_CACHE_TTL).map(|c| (c.token.clone(), c.limits)));
        let (token, limits) = match cached {
            Some(hit) => hit,
            None => {
                let token = store.token_by_hash(&hash).await?;
                let limits = match &token {
                    Some(t) => self.project_limits(store, &t.project).await?.unwrap_or_default(),
                    None => ProjectLimits::default(),
                };
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(hash, Cached { token: token.clone(), limits, at: Instant::now() });
                }
                (token, limits)
            }
        };
        Ok(token.map(|t| (Caller::Project { project: t.project, token_id: t.id }, limits)))
    }

    /// Takes one request from a token's bucket; `Err(wait)` when it is empty.
    fn take(&self, token_id: &str, per_second: u32) -> Result<(), Duration> {
        let rate = f64::from(per_second.max(1));
        let burst = rate * 2.0;
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let now = Instant::now();
        let bucket = buckets.entry(token_id.to_string()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The caller of a request on a route that works without a token too;
/// `None` without a valid token.
pub async fn caller_of(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Option<Caller>, ApiError> {
    match bearer(headers) {
        Some(token) => Ok(state.auth.identify(state.store.as_ref(), token).await?.map(|(caller, _)| caller)),
        None => Ok(None),
    }
}

/// The token a request came with (a request extension beside its
/// [`Caller`]): what a long-lived response checks again while it lasts.
#[derive(Clone)]
pub struct BearerToken(pub String);

/// How often a long-lived response (an event stream, a followed log)
/// checks that its token is still live.
const STREAM_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Resolves once `token` no longer admits anyone (revoked, or its project
/// removed): a stream it opened ends then. Revoked through this server it
/// is seen within [`STREAM_CHECK_EVERY`]; through another, within the
/// token cache's 2 s more.
pub async fn revoked(state: AppState, token: String) {
    loop {
        tokio::time::sleep(STREAM_CHECK_EVERY).await;
        if let Ok(None) = state.auth.identify(state.store.as_ref(), &token).await {
            return;
        }
    }
}

/// Middleware: authenticates the request, applies the token's rate limit,
/// and hands the [`Caller`] (and the [`BearerToken`]) to the handler as
/// request extensions.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(token) = bearer(request.headers()).map(str::to_string) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer TOKEN` header").into_response();
    };
    match admit(&state, &token).await {
        Ok(caller) => {
            request.extensions_mut().insert(BearerToken(token));
            run_as(caller, request, next).await
        }
        Err(response) => *response,
    }
}

/// Runs the rest of a request as `caller`.
pub async fn run_as(caller: Caller, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The caller a token stands for, after its rate limit; the answer to give
/// instead (401, 429) if it may not go on.
pub async fn admit(state: &AppState, token: &str) -> Result<Caller, Box<Response>> {
    let (caller, limits) = match state.auth.identify(state.store.as_ref(), token).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(Box::new(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown or revoked token").into_response()));
        }
        Err(e) => return Err(Box::new(ApiError::from(e).into_response())),
    };
    if let (Caller::Project { token_id, project, .. }, Some(rate)) = (&caller, limits.requests_per_second) {
        if let Err(wait) = state.auth.take(token_id, rate) {
            state.metrics.rate_limited(project);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this token may make {rate} requests per second; retry in {} ms", wait.as_millis().max(1)),
            )
            .into_response();
            let seconds = wait.as_secs() + 1;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
            return Err(Box::new(response));
        }
    }
    Ok(caller)
}

/// How long an ordinary request may take by default, from its headers to
/// the answer (a client trickling its body in holds nothing for longer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Middleware: answers 503 to a request that takes longer than the
/// server's request timeout (long polls and log follows are routed around it).
pub async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; try again").into_response(),
    }
}

/// Middleware: refuses at once (413) a request whose `Content-Length`
/// says its body is over [`crate::api::MAX_BODY_BYTES`], before reading any
/// of it. (Bodies without a length are cut off at the limit as they arrive.)
pub async fn refuse_oversized(request: Request, next: Next) -> Response {
    let announced =
        request.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(length) if length > crate::api::MAX_BODY_BYTES as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is {length} bytes; the limit is {} bytes", crate::api::MAX_BODY_BYTES),
        )
        .with_field("body")
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Shared handle, as the API state holds it.
pub type SharedAuth = Arc<Auth>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let auth = Auth::new("admin");
        let allowed = (0..10).filter(|_| auth.take("t", 2).is_ok()).count();
        assert_eq!(allowed, 4, "burst is twice the rate");
        assert!(auth.take("other", 2).is_ok(), "buckets are per token");
    }

    #[test]
    fn callers_see_only_their_project() {
        let caller = Caller::Project { project: "a".into(), token_id: "t".into() };
        assert!(caller.can_access("a"));
        assert!(!caller.can_access("b"));
        assert!(caller.require_admin().is_err());
        assert!(Caller::Admin.can_access("b"));
    }
}

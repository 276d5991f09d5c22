//! Who is calling: the cluster's admin token or one of a project's API
//! tokens ([`Caller`]), what each may do, and the checks behind it
//! ([`Auth`]: token lookups and their cache, per-token rate limits,
//! projects' limits). Tokens are random; only their SHA-256 is stored.
//! The HTTP edges read the bearer token and ask here (`http::auth`).

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
    pub fn require_admin(&self) -> Result<(), Denied> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project { .. } | Caller::Schedule { .. } => Err(Denied::AdminOnly),
        }
    }

    /// The admin, or a token of `project`; others get the answer a missing
    /// project gets, so that names of other projects do not leak.
    pub fn require_project(&self, project: &str) -> Result<(), Denied> {
        if self.can_access(project) {
            Ok(())
        } else {
            Err(Denied::NoProject(project.to_string()))
        }
    }
}

/// Why a caller may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Only the admin token may.
    #[error("this needs the admin token; a project token cannot do it")]
    AdminOnly,
    /// Another project's (answered as a missing one, so that names do not leak).
    #[error("no project {0}")]
    NoProject(String),
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
    pub async fn identify(&self, store: &dyn Store, token: &str) -> Result<Option<(Caller, ProjectLimits)>, StoreError> {
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
    pub fn take(&self, token_id: &str, per_second: u32) -> Result<(), Duration> {
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

//! Flag values that other commands parse the same way: durations, times
//! and `KEY=VALUE` pairs.

/// Seconds, or a duration such as 30s, 5m or 1h, as whole seconds.
pub(crate) fn parse_timeout(text: &str) -> Result<u32, String> {
    let seconds = match text.parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (use 30s, 5m, 1h)"))?.as_secs(),
    };
    u32::try_from(seconds).map_err(|_| format!("`{text}` is too long"))
}

/// An RFC 3339 time.
pub(crate) fn parse_time(text: &str) -> Result<shepherd_core::Timestamp, String> {
    shepherd_core::Timestamp::parse_rfc3339(text).map_err(|e| format!("`{text}`: {e} (use e.g. 2026-12-01T09:00:00Z)"))
}

/// `KEY=VALUE`, split at the first `=`.
pub(crate) fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{text}`: use KEY=VALUE"))
}

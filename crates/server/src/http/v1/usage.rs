//! `GET /v1/usage`: what projects' attempts used, per hour or day, as JSON
//! or CSV (for billing).

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use axum::extract::{Extension, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shepherd_core::Timestamp;
use shepherd_store::UsageQuery;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    project: Option<String>,
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
    format: Option<String>,
}

/// What one project used in one hour or day.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageView {
    pub project: String,
    /// The hour's or day's start (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    /// Tasks with an attempt that ended in it.
    pub tasks: u64,
    pub attempts: u64,
    /// CPU time of the attempts whose node measured it.
    pub cpu_seconds: f64,
    /// Peak memory (MiB) times run time (s), over the measured attempts.
    pub memory_mib_seconds: f64,
    /// Run time, start to end, of every attempt that started.
    pub wall_seconds: f64,
}

/// Usage over a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// `hour` or `day`.
    pub by: String,
    pub usage: Vec<UsageView>,
}

const HOUR_MS: i64 = 3_600_000;

/// What attempts used, per project and hour or day: CPU seconds,
/// memory-MiB-seconds, run time, task and attempt counts.
#[utoipa::path(get, path = "/v1/usage", tag = "projects",
    params(
        ("project" = Option<String>, Query, description = "One project (a project token: its own, the default)"),
        ("from" = Option<String>, Query, description = "RFC 3339 start (default: `to` minus a day)"),
        ("to" = Option<String>, Query, description = "RFC 3339 end (default: now)"),
        ("by" = Option<String>, Query, description = "`hour` (default) or `day`"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
    ),
    responses((status = 200, body = UsageReport), (status = 400, body = crate::http::error::ErrorBody), (status = 403, body = crate::http::error::ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query: Query = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::field("query", format!("bad query: {e}; use project=, from=, to=, by=hour|day and format=json|csv")))?;
    let project = match (caller.project(), query.project) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "forbidden", format!("this token sees project `{own}` only"))
                .with_field("project"))
        }
        (Some(own), _) => Some(own.to_string()),
        (None, asked) => asked,
    };
    let time = |field: &str, text: Option<String>| -> Result<Option<Timestamp>, ApiError> {
        text.map(|t| Timestamp::parse_rfc3339(&t).map_err(|e| ApiError::field(field, format!("`{t}`: {e}")))).transpose()
    };
    let to = time("to", query.to)?.unwrap_or_else(Timestamp::now);
    let from = time("from", query.from)?.unwrap_or(Timestamp(to.millis() - 24 * HOUR_MS));
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    let (by, bucket_ms) = match query.by.as_deref() {
        None | Some("hour") => ("hour", HOUR_MS),
        Some("day") => ("day", 24 * HOUR_MS),
        Some(other) => return Err(ApiError::field("by", format!("`{other}`: use hour or day"))),
    };
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::field("format", format!("`{other}`: use json or csv"))),
    };
    let rows = state.store.usage(UsageQuery { project, from, to, bucket_ms }).await?;
    let usage: Vec<UsageView> = rows
        .into_iter()
        .map(|r| UsageView {
            project: r.project,
            start: r.start,
            tasks: r.tasks,
            attempts: r.attempts,
            cpu_seconds: r.cpu_ms as f64 / 1000.0,
            memory_mib_seconds: r.memory_byte_ms / (1024.0 * 1024.0 * 1000.0),
            wall_seconds: r.wall_ms as f64 / 1000.0,
        })
        .collect();
    if csv {
        let mut out = String::from("project,start,tasks,attempts,cpu_seconds,memory_mib_seconds,wall_seconds\n");
        for u in &usage {
            out.push_str(&format!(
                "{},{},{},{},{:.3},{:.3},{:.3}\n",
                csv_field(&u.project),
                u.start.to_rfc3339(),
                u.tasks,
                u.attempts,
                u.cpu_seconds,
                u.memory_mib_seconds,
                u.wall_seconds
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(Json(UsageReport { from, to, by: by.into(), usage }).into_response())
}

/// A CSV field, quoted when it must be (project names never need it, but
/// a report must not break if one ever did).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

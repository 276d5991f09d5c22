//! The IronWorker API v2, on top of Shepherd's own services, so that
//! IronWorker's clients (`iron_worker` for Python, the CLI, the other
//! languages' libraries) work unmodified. See `docs/ironworker.md` for what
//! maps to what and what is left out.
//!
//! - `/2/projects/{project_id}/…`: the project is a Shepherd project; a
//!   token of another project gets what a missing project gets (404).
//! - `Authorization: OAuth TOKEN` (or `Bearer`), or `?oauth=TOKEN`: a
//!   Shepherd token.
//! - Codes are Shepherd codes whose package is the uploaded zip, run on the
//!   image the admin maps its runtime to (`--stack sh=busybox`); a code's id
//!   is its name.
//! - Tasks are Shepherd tasks made from the code; IronWorker's statuses,
//!   priorities (0 to 2) and clusters (node pools) map onto Shepherd's.
//! - Schedules are Shepherd schedules (`run_every`, `start_at`, `end_at`,
//!   `run_times`).
//!
//! Errors are `{"msg": "…"}` with IronWorker's status codes.

use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::error::{Refusal, ServiceError};
use crate::service::workflows::{Answer, Created, Idempotency};
use axum::extract::{Multipart, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use shepherd_core::{Code, CodeSpec, PackageRef, Schedule, ScheduleState, Task, TaskSpec, TaskState, Timestamp};
use shepherd_store::TaskFilter;

use crate::service::codes::MAX_PACKAGE_BYTES;

/// The label holding a task's IronWorker `label`.
pub const LABEL_KEY: &str = "ironworker.label";

/// An IronWorker error: a status and `{"msg": …}`.
#[derive(Debug)]
pub struct IronError(StatusCode, String);

impl IntoResponse for IronError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "msg": self.1 }))).into_response()
    }
}

impl IronError {
    fn bad(message: impl Into<String>) -> IronError {
        IronError(StatusCode::BAD_REQUEST, message.into())
    }
    fn missing(message: impl Into<String>) -> IronError {
        IronError(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<ServiceError> for IronError {
    fn from(e: ServiceError) -> IronError {
        let status = match &e {
            ServiceError::NotFound(_) | ServiceError::Missing(_) => StatusCode::NOT_FOUND,
            ServiceError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::NotCancellable(_) | ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Refused { kind: Refusal::Forbidden, .. } => StatusCode::FORBIDDEN,
            ServiceError::Refused { kind: Refusal::Conflict, .. } => StatusCode::CONFLICT,
            ServiceError::Refused { kind: Refusal::Quota, .. } => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Denied(crate::service::auth::Denied::AdminOnly) => StatusCode::FORBIDDEN,
            ServiceError::Denied(crate::service::auth::Denied::NoProject(_)) => StatusCode::NOT_FOUND,
            ServiceError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        IronError(status, e.to_string())
    }
}

impl From<shepherd_store::StoreError> for IronError {
    fn from(e: shepherd_store::StoreError) -> IronError {
        ServiceError::Store(e).into()
    }
}

type IronResult<T> = Result<T, IronError>;

/// The IronWorker routes, authenticated by their own middleware.
pub fn routes(state: AppState) -> Router<AppState> {
    let project = Router::new()
        .route("/2/projects/{project}/codes", get(list_codes).post(upload_code))
        .route("/2/projects/{project}/codes/{code}", get(get_code).delete(delete_code))
        .route("/2/projects/{project}/codes/{code}/revisions", get(code_revisions))
        .route("/2/projects/{project}/codes/{code}/download", get(download_code))
        .route("/2/projects/{project}/tasks", get(list_tasks).post(queue_tasks))
        .route("/2/projects/{project}/tasks/{id}", get(get_task))
        .route("/2/projects/{project}/tasks/{id}/log", get(task_log))
        .route("/2/projects/{project}/tasks/{id}/outlog", get(task_outlog))
        .route("/2/projects/{project}/tasks/{id}/cancel", post(cancel_task))
        .route("/2/projects/{project}/tasks/{id}/retry", post(retry_task))
        .route("/2/projects/{project}/tasks/{id}/progress", post(task_progress))
        .route("/2/projects/{project}/schedules", get(list_schedules).post(create_schedules))
        .route("/2/projects/{project}/schedules/{id}", get(get_schedule))
        .route("/2/projects/{project}/schedules/{id}/cancel", post(cancel_schedule));
    project
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::http::auth::request_timeout))
        .layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// `Authorization: OAuth TOKEN` (or `Bearer TOKEN`), or `?oauth=TOKEN`.
fn token_of(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        for scheme in ["OAuth ", "Bearer ", "oauth "] {
            if let Some(token) = value.strip_prefix(scheme) {
                return Some(token.trim().to_string());
            }
        }
    }
    let query = request.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).ok()?.into_iter().find(|(k, _)| k == "oauth").map(|(_, v)| v)
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = token_of(&request) else {
        return IronError(StatusCode::UNAUTHORIZED, "missing `Authorization: OAuth TOKEN` header or `oauth` parameter".into())
            .into_response();
    };
    let caller = match crate::http::auth::admit(&state, &token).await {
        Ok(caller) => caller,
        Err(response) => {
            let status = response.status();
            return IronError(status, status.canonical_reason().unwrap_or("refused").to_lowercase()).into_response();
        }
    };
    // The project in the path: another project's answers as a missing one.
    let project = request.uri().path().split('/').nth(3).unwrap_or_default().to_string();
    if !shepherd_core::is_project_name(&project) {
        return IronError::missing("Project not found").into_response();
    }
    match state.projects.visible(&caller, &project).await {
        Ok(_) => {}
        Err(ServiceError::Missing(_) | ServiceError::Denied(_)) => return IronError::missing("Project not found").into_response(),
        Err(e) => return IronError::from(e).into_response(),
    }
    crate::http::auth::run_as(caller, request, next).await
}

fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339()
}

/// A code as IronWorker shows it.
fn code_json(code: &Code) -> Value {
    let package = code.spec.package.as_ref();
    json!({
        "id": code.spec.name,
        "project_id": code.spec.project,
        "name": code.spec.name,
        "runtime": package.map(|p| p.runtime.clone()),
        "latest_checksum": package.map(|p| p.digest.clone()),
        "rev": code.revision,
        "latest_history_id": format!("{}@{}", code.spec.name, code.revision),
        "latest_change": rfc3339(code.created_at),
        "created_at": rfc3339(code.created_at),
        "file_name": package.map(|p| p.executable.clone()),
        "image": code.spec.image,
        "max_concurrency": code.spec.max_concurrency.map_or(-1, i64::from),
        "retries": code.spec.retry.as_ref().map_or(0, |r| r.max_attempts.saturating_sub(1)),
        "retries_delay": code.spec.retry.as_ref().map_or(0, |r| r.backoff_seconds),
    })
}

async fn list_codes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> IronResult<Json<Value>> {
    let paging = Paging::from_query(raw)?;
    let codes = state.codes.list(&caller, Some(&project)).await?;
    Ok(Json(json!({ "codes": paging.page(&codes).iter().map(code_json).collect::<Vec<_>>() })))
}

async fn get_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, code)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    Ok(Json(code_json(&state.codes.get(&caller, Some(&project), &code, None).await?)))
}

async fn delete_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, code)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    state.codes.delete(&caller, Some(&project), &code).await?;
    Ok(Json(json!({ "msg": "Deleted" })))
}

async fn code_revisions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, code)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    let revisions = state.codes.revisions(&caller, Some(&project), &code).await?;
    Ok(Json(json!({ "revisions": revisions.iter().map(code_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize, Default)]
struct RevisionQuery {
    revision: Option<u32>,
    #[allow(dead_code)]
    oauth: Option<String>,
}

async fn download_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> IronResult<Response> {
    let query: RevisionQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| IronError::bad(e.to_string()))?;
    let (code, zip) = state.codes.package_zip(&caller, Some(&project), &name, query.revision).await?;
    let disposition = format!("filename={}_{}.zip", code.spec.name, code.revision);
    Ok(([(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)], zip).into_response())
}

/// The `data` part of a code upload.
#[derive(Deserialize)]
struct UploadData {
    name: String,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    max_concurrency: Option<i64>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    retries_delay: Option<u32>,
    #[serde(default)]
    stack: Option<String>,
    /// Given to the worker as the file at `-config` (a JSON string, or JSON).
    #[serde(default)]
    config: Option<Value>,
    /// Environment variables of the code's tasks.
    #[serde(default)]
    env_vars: Option<std::collections::BTreeMap<String, String>>,
}

/// The file part as sent. Python 3's `iron_worker` client writes the zip's
/// bytes into the form as `str(bytes)`, i.e. the text `b'PK\x03…'`: that
/// is decoded back into the bytes, so the client works unmodified.
pub fn package_bytes(raw: Vec<u8>) -> Vec<u8> {
    if raw.starts_with(b"PK") {
        return raw;
    }
    let (Some(quote @ (b'\'' | b'"')), true) = (raw.get(1).copied(), raw.first() == Some(&b'b')) else { return raw };
    if raw.last() != Some(&quote) || raw.len() < 3 {
        return raw;
    }
    let text = &raw[2..raw.len() - 1];
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' || i + 1 >= text.len() {
            out.push(text[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match text[i + 1] {
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'0' => (0, 2),
            b'\\' => (b'\\', 2),
            b'\'' => (b'\'', 2),
            b'"' => (b'"', 2),
            b'x' if i + 3 < text.len() => match u8::from_str_radix(&String::from_utf8_lossy(&text[i + 2..i + 4]), 16) {
                Ok(byte) => (byte, 4),
                Err(_) => return raw,
            },
            _ => return raw,
        };
        out.push(byte);
        i += used;
    }
    out
}

async fn upload_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    mut form: Multipart,
) -> IronResult<Json<Value>> {
    let (mut data, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| IronError::bad(format!("bad multipart body: {e}")))? {
        match field.name() {
            Some("data") => data = Some(field.text().await.map_err(|e| IronError::bad(format!("bad `data` part: {e}")))?),
            Some("file") => {
                let bytes = field.bytes().await.map_err(|e| IronError::bad(format!("bad `file` part: {e}")))?;
                if bytes.len() > MAX_PACKAGE_BYTES * 4 + 16 {
                    return Err(IronError(StatusCode::PAYLOAD_TOO_LARGE, format!("a code package is at most {MAX_PACKAGE_BYTES} bytes")));
                }
                file = Some(bytes.to_vec());
            }
            _ => {}
        }
    }
    let data: UploadData = serde_json::from_str(data.as_deref().ok_or_else(|| IronError::bad("missing the `data` part"))?)
        .map_err(|e| IronError::bad(format!("bad `data`: {e}")))?;
    let zip = package_bytes(file.ok_or_else(|| IronError::bad("missing the `file` part (the zip)"))?);
    // Everything is checked before the zip is stored.
    if !shepherd_core::code::is_code_name(&data.name) {
        return Err(IronError::bad(format!("`{}` is not a code name (letters, digits, _ - .)", data.name)));
    }
    let executable = data.file_name.clone().ok_or_else(|| IronError::bad("`file_name` (the executable) is required"))?;
    let executable = executable.trim_start_matches("./").to_string();
    let runtime = data.runtime.clone().unwrap_or_else(|| "sh".into());
    let image = state.codes.stack_image(data.stack.as_deref().unwrap_or(&runtime))?;
    if zip.len() <= MAX_PACKAGE_BYTES {
        let files = shepherd_agent::package::files(&zip).map_err(|e| IronError::bad(e.to_string()))?;
        if !files.contains(&executable) {
            return Err(IronError::bad(format!("the package has no file `{executable}`; it holds: {}", files.join(", "))));
        }
    }
    let stored = state.codes.put_package(&caller, Some(&project), zip).await?;
    let package = PackageRef { digest: stored.digest, size: stored.size, runtime, executable };
    let mut spec: CodeSpec = serde_json::from_value(json!({ "name": data.name, "image": image, "project": project }))
        .map_err(|e| IronError::bad(e.to_string()))?;
    spec.package = Some(package);
    spec.env = data.env_vars.clone().unwrap_or_default();
    match &data.config {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            spec.env.insert(shepherd_core::code::CONFIG_ENV.into(), text.clone());
        }
        Some(other) => {
            spec.env.insert(shepherd_core::code::CONFIG_ENV.into(), other.to_string());
        }
    }
    spec.max_concurrency = data.max_concurrency.filter(|m| *m > 0).and_then(|m| u32::try_from(m).ok());
    if data.retries.is_some() || data.retries_delay.is_some() {
        spec.retry = Some(shepherd_core::RetryPolicy {
            max_attempts: data.retries.unwrap_or(0).saturating_add(1),
            backoff_seconds: data.retries_delay.unwrap_or(60),
            on: Vec::new(),
        });
    }
    let code = state.codes.push(&caller, spec).await?;
    let mut body = code_json(&code);
    if let Value::Object(fields) = &mut body {
        fields.insert("msg".into(), "Upload successful.".into());
    }
    Ok(Json(body))
}

/// IronWorker's status of a task.
pub fn status_of(task: &Task) -> &'static str {
    match task.state {
        TaskState::Waiting | TaskState::Queued => "queued",
        TaskState::Scheduled => "preparing",
        TaskState::Running => "running",
        TaskState::Succeeded => "complete",
        TaskState::Failed if task.reason.as_deref().is_some_and(|r| r.contains("oom")) => "killed",
        TaskState::Failed => "error",
        TaskState::TimedOut => "timeout",
        TaskState::Cancelled => "cancelled",
    }
}

/// The Shepherd states behind IronWorker's status filters.
fn states_of(status: &str) -> &'static [TaskState] {
    match status {
        "queued" => &[TaskState::Waiting, TaskState::Queued, TaskState::Scheduled],
        "running" => &[TaskState::Running],
        "complete" => &[TaskState::Succeeded],
        "error" | "killed" => &[TaskState::Failed],
        "cancelled" => &[TaskState::Cancelled],
        "timeout" => &[TaskState::TimedOut],
        _ => &[],
    }
}

fn task_json(task: &Task, payload: Option<&[u8]>) -> Value {
    let duration = match (task.started_at, task.finished_at) {
        (Some(start), Some(end)) => Some(end.millis() - start.millis()),
        _ => None,
    };
    let updated = [task.finished_at, task.started_at, task.scheduled_at].into_iter().flatten().next().unwrap_or(task.created_at);
    json!({
        "id": task.id.to_string(),
        "project_id": task.project,
        "code_id": task.code.as_ref().map(|c| c.name.clone()),
        "code_name": task.code.as_ref().map(|c| c.name.clone()),
        "code_rev": task.code.as_ref().map(|c| c.revision),
        "code_history_id": task.code.as_ref().map(|c| format!("{}@{}", c.name, c.revision)),
        "schedule_id": task.labels.get(crate::service::schedules::SCHEDULE_LABEL),
        "status": status_of(task),
        "msg": task.reason,
        "created_at": rfc3339(task.created_at),
        "updated_at": rfc3339(updated),
        "start_time": task.started_at.map(rfc3339),
        "end_time": task.finished_at.map(rfc3339),
        "duration": duration,
        "timeout": task.timeout_seconds,
        "priority": task.priority,
        "label": task.labels.get(LABEL_KEY),
        "cluster": task.pool,
        "payload": payload.map(|p| String::from_utf8_lossy(p).into_owned()),
        "percent": task.progress.as_ref().map(|p| p.percent),
        "progress_msg": task.progress.as_ref().map(|p| p.message.clone()),
        "exit_code": task.exit_code,
        "retry_count": task.attempts.len().saturating_sub(1),
    })
}

/// One task of `POST …/tasks` (or of a schedule).
#[derive(Deserialize)]
struct QueuedTask {
    code_name: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    timeout: Option<u32>,
    #[serde(default)]
    delay: Option<u32>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    // Schedules only.
    #[serde(default)]
    run_every: Option<u32>,
    #[serde(default)]
    run_times: Option<u32>,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    end_at: Option<String>,
}

/// A Shepherd task request (a JSON object naming the code) for one
/// IronWorker task.
fn task_object(project: &str, t: &QueuedTask) -> IronResult<Map<String, Value>> {
    let mut object = Map::new();
    object.insert("code".into(), t.code_name.clone().into());
    object.insert("project".into(), project.into());
    if let Some(payload) = &t.payload {
        object.insert("payload".into(), base64::Engine::encode(&base64::engine::general_purpose::STANDARD, payload.as_bytes()).into());
    }
    if let Some(priority) = t.priority {
        if !(0..=2).contains(&priority) {
            return Err(IronError::bad("priority must be 0, 1 or 2"));
        }
        object.insert("priority".into(), priority.into());
    }
    if let Some(timeout) = t.timeout.filter(|t| *t > 0) {
        object.insert("timeout_seconds".into(), timeout.into());
    }
    if let Some(delay) = t.delay.filter(|d| *d > 0) {
        object.insert("delay_seconds".into(), delay.into());
    }
    if let Some(label) = t.label.as_ref().filter(|l| !l.is_empty()) {
        object.insert("labels".into(), json!({ LABEL_KEY: label }));
    }
    if let Some(cluster) = t.cluster.as_ref().filter(|c| !c.is_empty() && c.as_str() != "default") {
        object.insert("pool".into(), cluster.clone().into());
    }
    Ok(object)
}

fn decode_spec(object: &Map<String, Value>) -> IronResult<TaskSpec> {
    let bytes = serde_json::to_vec(object).map_err(|e| IronError::bad(e.to_string()))?;
    shepherd_core::decode_json(&bytes).map_err(|e| IronError::bad(e.to_string()))
}

#[derive(Deserialize)]
struct QueueBody {
    tasks: Vec<QueuedTask>,
}

/// Queues tasks. With an `Idempotency-Key` header, the same request in
/// the project within 24 hours answers the same again and queues nothing
/// (as Shepherd's own `POST /v1/tasks/batch`).
async fn queue_tasks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    headers: axum::http::HeaderMap,
    raw: axum::body::Bytes,
) -> IronResult<Response> {
    let body: QueueBody = serde_json::from_slice(&raw).map_err(|e| IronError::bad(format!("bad body: {e}")))?;
    if body.tasks.is_empty() {
        return Err(IronError::bad("no tasks"));
    }
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| IronError::bad("Idempotency-Key: 1 to 255 visible ASCII characters"))?;
            let route = format!("POST /2/projects/{project}/tasks");
            Some(Idempotency::new(text, &route, &raw).map_err(|e| IronError::bad(e.to_string()))?)
        }
    };
    let replay = |status: u16, text: String| {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response();
        response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
        response
    };
    if let Some(key) = &idempotency {
        if let Some((status, text)) = state.tasks.replay(&caller, &project, key).await? {
            return Ok(replay(status, text));
        }
    }
    let objects = body.tasks.iter().map(|t| task_object(&project, t)).collect::<IronResult<Vec<_>>>()?;
    let specs = objects.iter().map(decode_spec).collect::<IronResult<Vec<_>>>()?;
    let specs = state.tasks.expand_codes(&caller, specs, &|i| objects.get(i).cloned(), &|i| format!("tasks[{i}]")).await?;
    let answer = |created: &[Created]| -> Result<(u16, String), crate::service::ServiceError> {
        let ids: Vec<Value> = created.iter().map(|c| json!({ "id": c.id() })).collect();
        Ok((200, json!({ "msg": "Queued up", "tasks": ids }).to_string()))
    };
    if idempotency.is_none() {
        let created = state.tasks.create_batch(&caller, specs).await?;
        let ids: Vec<Value> = created.iter().map(|t| json!({ "id": t.id.to_string() })).collect();
        return Ok((StatusCode::OK, Json(json!({ "msg": "Queued up", "tasks": ids }))).into_response());
    }
    match state.tasks.submit(&caller, specs, true, idempotency, &answer).await? {
        Answer::Created(created) => {
            let (status, text) = answer(&created)?;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response())
        }
        Answer::Replayed { status, body } => Ok(replay(status, body)),
    }
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    per_page: Option<usize>,
    #[serde(default)]
    code_name: Option<String>,
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, String>,
}

async fn list_tasks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> IronResult<Json<Value>> {
    let query: ListQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| IronError::bad(e.to_string()))?;
    let per_page = query.per_page.unwrap_or(30).clamp(1, 100);
    let page = query.page.unwrap_or(0);
    if page.saturating_mul(per_page) > 10_000 {
        return Err(IronError::bad(
            "page × per_page goes back at most 10,000 tasks; use Shepherd's cursor paging (GET /v1/tasks) for more",
        ));
    }
    let mut filter = TaskFilter { limit: per_page, project: Some(project), ..Default::default() };
    for status in ["queued", "running", "complete", "error", "cancelled", "killed", "timeout"] {
        if query.rest.get(status).is_some_and(|v| v == "1" || v == "true") {
            for state in states_of(status) {
                if !filter.states.contains(state) {
                    filter.states.push(*state);
                }
            }
        }
    }
    if let Some(code) = &query.code_name {
        filter.labels.push((shepherd_core::code::CODE_LABEL.to_string(), code.clone()));
    }
    // Pages by number: walk the cursor to the page asked for.
    let mut result = state.tasks.list(&caller, filter.clone()).await?;
    for _ in 0..page {
        let Some(cursor) = result.next_cursor else {
            result.tasks.clear();
            break;
        };
        result = state.tasks.list(&caller, TaskFilter { before: Some(cursor), ..filter.clone() }).await?;
    }
    Ok(Json(json!({ "tasks": result.tasks.iter().map(|t| task_json(t, None)).collect::<Vec<_>>() })))
}

async fn get_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    let (task, payload) = state.tasks.with_payload(&caller, &id).await?;
    Ok(Json(task_json(&task, payload.as_deref())))
}

async fn log_text(state: &AppState, caller: &Caller, id: &str, stdout_only: bool) -> IronResult<Response> {
    let mut text = Vec::new();
    let mut after = 0;
    loop {
        let chunks = state.tasks.output(caller, id, after, 1000).await?;
        let Some(last) = chunks.last() else { break };
        after = last.seq;
        for chunk in chunks {
            let keep = match chunk.stream {
                shepherd_core::LogStream::Stdout => true,
                shepherd_core::LogStream::Stderr => !stdout_only,
                shepherd_core::LogStream::System => false,
            };
            if keep {
                text.extend_from_slice(&chunk.data);
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn task_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
) -> IronResult<Response> {
    log_text(&state, &caller, &id, false).await
}

async fn task_outlog(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
) -> IronResult<Response> {
    log_text(&state, &caller, &id, true).await
}

async fn cancel_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    state.tasks.cancel(&caller, &id).await?;
    Ok(Json(json!({ "msg": "Cancelled" })))
}

#[derive(Deserialize, Default)]
struct RetryBody {
    #[serde(default)]
    delay: Option<u32>,
}

/// A new task like the old one (same code revision, payload and settings).
async fn retry_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> IronResult<Json<Value>> {
    let retry: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| IronError::bad(format!("bad body: {e}")))?
    };
    let created = state.tasks.retry(&caller, &id, retry.delay).await?;
    Ok(Json(json!({ "msg": "Queued up", "tasks": [{ "id": created.id.to_string() }] })))
}

#[derive(Deserialize)]
struct ProgressBody {
    percent: f64,
    #[serde(default)]
    msg: Option<String>,
}

async fn task_progress(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> IronResult<Json<Value>> {
    let body: ProgressBody = serde_json::from_slice(&body).map_err(|e| IronError::bad(format!("bad body: {e}")))?;
    state.tasks.set_progress(&caller, &id, body.percent, body.msg.unwrap_or_default()).await?;
    Ok(Json(json!({ "msg": "Progress set" })))
}

/// RFC 3339 with any offset, as IronWorker's clients send it.
fn parse_time(text: &str, field: &str) -> IronResult<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|e| IronError::bad(format!("{field}: `{text}` is not an RFC 3339 time: {e}")))
}

fn schedule_json(s: &Schedule) -> Value {
    let task = &s.spec.task;
    let payload = task.get("payload").and_then(Value::as_str).and_then(|p| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(p).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    });
    json!({
        "id": s.id,
        "project_id": s.spec.project,
        "code_name": task.get("code"),
        "status": match s.state {
            ScheduleState::Active | ScheduleState::Paused => "scheduled",
            ScheduleState::Done => "complete",
            ScheduleState::Cancelled => "cancelled",
        },
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.last_fired_at.unwrap_or(s.created_at)),
        "start_at": s.spec.start_at.map(rfc3339),
        "end_at": s.spec.end_at.map(rfc3339),
        "next_start": s.next_at.map(rfc3339),
        "last_run_time": s.last_fired_at.map(rfc3339),
        "run_every": s.spec.run_every,
        "run_times": s.spec.run_times,
        "run_count": s.fired,
        "payload": payload,
        "timeout": task.get("timeout_seconds"),
        "priority": task.get("priority"),
        "label": task.get("labels").and_then(|l| l.get(LABEL_KEY)),
        "cluster": task.get("pool"),
        "msg": s.spec.name,
    })
}

#[derive(Deserialize)]
struct ScheduleBody {
    schedules: Vec<QueuedTask>,
}

async fn create_schedules(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> IronResult<Json<Value>> {
    let body: ScheduleBody = serde_json::from_slice(&body).map_err(|e| IronError::bad(format!("bad body: {e}")))?;
    if body.schedules.is_empty() {
        return Err(IronError::bad("no schedules"));
    }
    let mut ids = Vec::new();
    for s in &body.schedules {
        let mut object = task_object(&project, s)?;
        object.remove("delay_seconds");
        let mut start_at = s.start_at.as_deref().map(|t| parse_time(t, "start_at")).transpose()?;
        if let (None, Some(delay)) = (start_at, s.delay.filter(|d| *d > 0)) {
            start_at = Some(Timestamp::now().plus(std::time::Duration::from_secs(u64::from(delay))));
        }
        // Without run_every: once, at start_at (or now).
        let (run_every, run_times) = match s.run_every {
            Some(every) => (every, s.run_times),
            None => (60, Some(1)),
        };
        let spec = json!({
            "project": project,
            "run_every": run_every,
            "run_times": run_times,
            "start_at": start_at.map(rfc3339),
            "end_at": s.end_at.as_deref().map(|t| parse_time(t, "end_at")).transpose()?.map(rfc3339),
            "name": format!("ironworker {}", s.code_name),
            "task": Value::Object(object),
        });
        let mut spec = spec;
        if let Value::Object(fields) = &mut spec {
            fields.retain(|_, v| !v.is_null());
        }
        let spec = serde_json::from_value(spec).map_err(|e| IronError::bad(e.to_string()))?;
        let created = state.schedules.create(&caller, spec).await?;
        ids.push(json!({ "id": created.id }));
    }
    Ok(Json(json!({ "msg": "Scheduled", "schedules": ids })))
}

async fn list_schedules(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> IronResult<Json<Value>> {
    let paging = Paging::from_query(raw)?;
    let schedules = state.schedules.list(&caller, Some(&project)).await?;
    Ok(Json(json!({ "schedules": paging.page(&schedules).iter().map(schedule_json).collect::<Vec<_>>() })))
}

/// IronWorker's paging of lists: `page` (from 0) of `per_page` (default 30, at most 100).
#[derive(Debug, Default, Deserialize)]
struct Paging {
    page: Option<usize>,
    per_page: Option<usize>,
}

impl Paging {
    fn from_query(raw: Option<String>) -> Result<Paging, IronError> {
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| IronError::bad(format!("bad query: {e}")))
    }

    fn page<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        let per_page = self.per_page.unwrap_or(30).clamp(1, 100);
        let start = self.page.unwrap_or(0).saturating_mul(per_page).min(all.len());
        &all[start..(start + per_page).min(all.len())]
    }
}

async fn get_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, id)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    let schedule = state.schedules.get(&caller, &id).await?;
    if schedule.spec.project != project {
        return Err(IronError::missing("Schedule not found"));
    }
    Ok(Json(schedule_json(&schedule)))
}

async fn cancel_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((_project, id)): Path<(String, String)>,
) -> IronResult<Json<Value>> {
    state.schedules.cancel(&caller, &id).await?;
    Ok(Json(json!({ "msg": "Cancelled" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python3_s_bytes_repr_is_decoded_back_into_the_zip() {
        let zip = b"PK\x03\x04\x00\n\r\t\\'\"\xff end".to_vec();
        let repr = b"b'PK\\x03\\x04\\x00\\n\\r\\t\\\\\\'\"\\xff end'".to_vec();
        assert_eq!(package_bytes(repr), zip);
        assert_eq!(package_bytes(zip.clone()), zip, "real bytes pass as they are");
        assert_eq!(package_bytes(b"b'\\q'".to_vec()), b"b'\\q'".to_vec(), "not a repr: as it is");
    }
}

//! The web dashboard: `/ui`, a page of plain HTML, CSS and JavaScript
//! compiled into the binary (no Node toolchain: no npm registry is
//! reachable where Shepherd is built), talking to the same REST API with
//! the token its user logs in with. The server keeps a one-hour timeline
//! (queued and running tasks, tasks that succeeded and failed, per
//! project, every 5 s) and draws its plots as SVG (`GET /v1/overview`).

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::auth::Caller;
use crate::service::overview::Overview;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// The dashboard's content security policy: its own script, style and
/// API only, nothing inline, never in a frame (no clickjacking), no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One of the dashboard's files, never cached (a new binary serves new
/// ones), with headers that keep it from being framed or sniffed.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// The dashboard's own files (no token needed to load them; the page asks for one).
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
}

/// The page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// Its script.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its style sheet.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// The dashboard's overview: counts now, and the last hour as numbers and plots.
#[utoipa::path(get, path = "/v1/overview", tag = "cluster", responses((status = 200, body = Overview)))]
pub async fn overview(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<Overview>, ApiError> {
    Ok(Json(crate::service::overview::overview(state.store.as_ref(), &state.timeline, &caller).await?))
}

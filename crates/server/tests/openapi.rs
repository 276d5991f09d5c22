//! The OpenAPI document checked in at `docs/openapi.json` is the one the
//! server generates. After changing the API, regenerate it with
//! `SHEPHERD_UPDATE_OPENAPI=1 cargo nextest run -p shepherd-server openapi`.

use shepherd_server::http::openapi::ApiDoc;
use utoipa::OpenApi;

#[test]
fn checked_in_openapi_document_matches_the_server() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = ApiDoc::openapi().to_pretty_json().expect("document serializes") + "\n";
    if std::env::var_os("SHEPHERD_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is out of date; run SHEPHERD_UPDATE_OPENAPI=1 cargo nextest run -p shepherd-server openapi"
    );
}

#[test]
fn every_route_is_documented() {
    let doc = ApiDoc::openapi();
    let documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    for path in [
        "/v1/health",
        "/v1/tasks",
        "/v1/tasks/batch",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/cancel",
        "/v1/tasks/{id}/wait",
        "/v1/tasks/{id}/placement",
        "/v1/tasks/{id}/logs",
        "/v1/nodes",
        "/v1/servers",
        "/v1/nodes/{id}/drain",
        "/v1/openapi.json",
        "/v1/projects",
        "/v1/projects/{project}",
        "/v1/projects/{project}/tokens",
        "/v1/projects/{project}/tokens/{id}",
        "/v1/projects/{project}/secrets",
        "/v1/projects/{project}/secrets/{name}",
        "/v1/audit",
        "/v1/codes",
        "/v1/codes/{name}",
        "/v1/codes/{name}/revisions",
        "/v1/codes/{name}/rollback",
        "/v1/schedules",
        "/v1/schedules/{id}",
        "/v1/schedules/{id}/pause",
        "/v1/schedules/{id}/resume",
        "/v1/tasks/{id}/progress",
        "/v1/tasks/{id}/webhook",
        "/v1/packages",
        "/v1/packages/{digest}",
        "/v1/projects/{project}/webhook-secret",
        "/v1/machines",
        "/v1/autoscale",
        "/v1/plugins",
        "/v1/plugins/reload",
        "/v1/arrays",
        "/v1/arrays/{id}",
        "/v1/arrays/{id}/cancel",
        "/v1/arrays/{id}/retry",
        "/v1/tasks/{id}/dependencies",
        "/v1/tasks/{id}/result",
    ] {
        assert!(documented.contains(&path), "{path} is routed but not documented");
    }
    assert_eq!(documented.len(), 54, "documented paths: {documented:?}");
}

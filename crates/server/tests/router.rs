//! The API router in-process, request by request with
//! `tower::ServiceExt::oneshot`: no socket, no binary. Authentication,
//! errors that name the field, pagination and tenant isolation, fast.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shepherd_server::http::router;
use shepherd_server::http::state::AppState;
use shepherd_store::{SqliteOptions, SqliteStore};
use std::sync::Arc;
use tower::ServiceExt;

const ADMIN: &str = "router-test-admin-token";

struct Api {
    app: axum::Router,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("db"), SqliteOptions::default()).unwrap();
        Api { app: router(AppState::standalone(Arc::new(store), ADMIN)), _dir: dir }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self.app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn authentication_is_required_and_admin_routes_refuse_project_tokens() {
    let api = Api::new();
    let (status, body) = api.call("GET", "/v1/tasks", None, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{body}");
    let (status, _) = api.call("GET", "/v1/tasks", Some("shp_forged"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, health) = api.call("GET", "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let (status, created) = api.call("POST", "/v1/projects", Some(ADMIN), Some(json!({"name": "acme"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"]["token"].as_str().unwrap().to_string();
    let (status, _) = api.call("GET", "/v1/nodes", Some(&token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("POST", "/v1/projects", Some(&token), Some(json!({"name": "other"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn errors_name_the_field_and_unknown_routes_say_so() {
    let api = Api::new();
    let (status, body) = api.call("POST", "/v1/tasks", Some(ADMIN), Some(json!({"image": "busybox", "timeout_seconds": 0}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("timeout_seconds")), "{body}");
    let (status, body) =
        api.call("POST", "/v1/tasks/batch", Some(ADMIN), Some(json!({"tasks": [{"image": "busybox"}, {"image": "BAD"}]}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("tasks[1].image")), "{body}");
    let (status, body) = api.call("GET", "/v1/nowhere", Some(ADMIN), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("route_not_found")));
    let (status, body) = api.call("GET", "/v1/tasks/not-an-id", Some(ADMIN), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn lists_page_with_cursors_and_a_project_sees_only_its_own() {
    let api = Api::new();
    let tasks: Vec<Value> = (0..5).map(|_| json!({"image": "busybox"})).collect();
    let (status, _) = api.call("POST", "/v1/tasks/batch", Some(ADMIN), Some(json!({ "tasks": tasks }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, first) = api.call("GET", "/v1/tasks?limit=3", Some(ADMIN), None).await;
    assert_eq!(first["tasks"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = api.call("GET", &format!("/v1/tasks?limit=3&cursor={cursor}"), Some(ADMIN), None).await;
    assert_eq!(second["tasks"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());
    let (_, created) = api.call("POST", "/v1/projects", Some(ADMIN), Some(json!({"name": "acme"}))).await;
    let token = created["token"]["token"].as_str().unwrap().to_string();
    let (_, own) = api.call("GET", "/v1/tasks", Some(&token), None).await;
    assert_eq!(own["tasks"].as_array().unwrap().len(), 0, "the default project's tasks are not acme's");
    let other = first["tasks"][0]["id"].as_str().unwrap();
    let (status, _) = api.call("GET", &format!("/v1/tasks/{other}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another project's task answers as a missing one");
    let (status, body) = api.call("GET", "/v1/tasks?project=default", Some(&token), None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::FORBIDDEN, Some("project")));
}

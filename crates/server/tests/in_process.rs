//! A whole all-in-one cluster in this process, on a free port, with the
//! fake driver: the server, scheduler and agent end to end, in milliseconds.
//! `Cluster::start` hands back the address (no stdout to scrape).

use serde_json::{json, Value};
use shepherd_agent::driver::fake::{FakeDriver, Script};
use shepherd_server::{Cluster, ClusterConfig};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "in-process-admin-token";

async fn start(driver: FakeDriver) -> (Cluster, String, reqwest::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterConfig::local(dir.path().join("data"), ADMIN), Arc::new(driver)).await.unwrap();
    let url = format!("http://{}", cluster.addr());
    let http = shepherd_agent::remote::http_client(None).unwrap();
    (cluster, url, http, dir)
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut request = http.request(method, url).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_task_goes_from_the_api_through_the_scheduler_to_the_agent_and_back() {
    let driver = FakeDriver::new();
    let (cluster, url, http, _dir) = start(driver.clone()).await;
    let created =
        call(&http, reqwest::Method::POST, format!("{url}/v1/tasks"), Some(json!({"image": "busybox", "command": ["true"]}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    let done = call(&http, reqwest::Method::GET, format!("{url}/v1/tasks/{id}/wait?timeout_seconds=10"), None).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(driver.record(id.parse().unwrap(), 1).started);
    // A task the fake keeps running is cancelled through the same path.
    driver.script_all(Script { runs_for: None, ..Script::default() });
    let created = call(&http, reqwest::Method::POST, format!("{url}/v1/tasks"), Some(json!({"image": "busybox"}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        if call(&http, reqwest::Method::GET, format!("{url}/v1/tasks/{id}"), None).await["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call(&http, reqwest::Method::POST, format!("{url}/v1/tasks/{id}/cancel"), Some(json!({}))).await;
    let done = call(&http, reqwest::Method::GET, format!("{url}/v1/tasks/{id}/wait?timeout_seconds=10"), None).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(driver.record(id.parse().unwrap(), 1).terminated >= 1);
    let placement = call(&http, reqwest::Method::GET, format!("{url}/v1/tasks/{id}/placement"), None).await;
    assert_eq!(placement["candidates"][0]["node_id"], placement["node_id"], "the chosen node scored best: {placement}");
    cluster.shutdown().await;
}

//! SIGKILL the server in the middle of a 10,000-task workload, restart it,
//! and check that every acknowledged task is there and ends exactly once.

mod common;

use common::{free_port, Server};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOTAL: usize = 10_000;
const BATCH: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_10k_task_workload_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let extra = ["--max-tasks", "32", "--cpu", "4000"];
    let mut server = Server::start_on(&data, &listen, &extra);
    let http = Arc::new(server.http());
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();

    let submitter = {
        let http = http.clone();
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            let body = json!({"tasks": vec![json!({
                "image": "busybox", "command": ["true"],
                "resources": {"cpu_millicores": 10, "memory_mib": 4},
                "retry": {"max_attempts": 3, "backoff_seconds": 0},
            }); BATCH]})
            .to_string();
            let mut failures = 0;
            while acknowledged.lock().unwrap().len() < TOTAL {
                let sent = http
                    .client
                    .post(format!("{}/v1/tasks/batch", http.base))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let ids: Option<Vec<String>> = match sent {
                    Ok(r) if r.status().as_u16() == 201 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .map(|v| v["ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect()),
                    _ => None,
                };
                match ids {
                    Some(ids) => acknowledged.lock().unwrap().extend(ids),
                    None => {
                        // Not acknowledged (the server is down): such a batch may or may not exist.
                        failures += 1;
                        assert!(failures < 600, "server unreachable for too long");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };

    // Kill while submissions, placements and task exits are all in flight.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let acked = acknowledged.lock().unwrap().len();
        let (_, counts) = http.get("/v1/health").await;
        let finished = counts["tasks"]["succeeded"].as_u64().unwrap_or(0);
        if acked >= 4_000 && finished >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "workload did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let killed_at = acknowledged.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = Server::start_on(&data, &listen, &extra);
    submitter.await.unwrap();

    // Everything drains.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, health) = http.get("/v1/health").await;
        let active: u64 = ["queued", "scheduled", "running"].iter().map(|s| health["tasks"][s].as_u64().unwrap_or(0)).sum();
        if active == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "tasks still active: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut stored: HashMap<String, serde_json::Value> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?limit=1000&cursor={c}"),
            None => "/v1/tasks?limit=1000".into(),
        };
        let (status, page) = http.get(&path).await;
        assert_eq!(status, 200);
        for task in page["tasks"].as_array().unwrap() {
            stored.insert(task["id"].as_str().unwrap().to_string(), task.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= TOTAL);
    assert!(killed_at < TOTAL, "the kill happened before the workload was fully submitted");
    let mut retried = 0;
    for id in &acknowledged {
        let task = stored.get(id).unwrap_or_else(|| panic!("acknowledged task {id} is missing after the crash"));
        let state = task["state"].as_str().unwrap();
        assert!(["succeeded", "failed"].contains(&state), "task {id} ended {state}: {task}");
        let attempts = task["attempts"].as_array().unwrap();
        let successes = attempts.iter().filter(|a| a["outcome"] == "succeeded").count();
        assert_eq!(successes, usize::from(state == "succeeded"), "task {id} succeeded {successes} times: {task}");
        assert!(attempts.iter().all(|a| !a["outcome"].is_null()), "task {id} has an open attempt: {task}");
        for earlier in &attempts[..attempts.len().saturating_sub(1)] {
            assert!(["lost", "interrupted"].contains(&earlier["outcome"].as_str().unwrap()), "task {id}: {task}");
        }
        retried += usize::from(attempts.len() > 1);
    }
    let succeeded = acknowledged.iter().filter(|id| stored[*id]["state"] == "succeeded").count();
    eprintln!(
        "{} acknowledged ({killed_at} before the kill), {succeeded} succeeded, {retried} retried after the crash",
        acknowledged.len()
    );
}

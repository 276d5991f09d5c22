//! Stopping and starting the all-in-one cluster: Ctrl-C puts running tasks
//! back in the queue, and they run again after the restart; after SIGKILL
//! the attempts that were running are lost and retried per their policy.

mod common;

use common::{sh, Server};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn ctrl_c_requeues_running_tasks_and_restart_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let http = server.http();
    let (_, running) = http.post("/v1/tasks", &sh("sleep 1; echo finished")).await;
    let running = running["id"].as_str().unwrap().to_string();
    common::wait_running(&http, &running).await;
    let (_, queued) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "constraints": ["node.labels.later==yes"]})).await;
    let queued = queued["id"].as_str().unwrap().to_string();
    server.stop();

    let server = Server::start(&data, &["--node-label", "later=yes"]);
    let http = server.http();
    let task = http.wait_terminal(&running, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "succeeded");
    let outcomes: Vec<_> = task["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap().to_string()).collect();
    assert_eq!(outcomes, ["interrupted", "succeeded"]);
    let (_, logs) = http.text(&format!("/v1/tasks/{running}/logs")).await;
    assert!(logs.ends_with("finished\n"), "{logs}");
    assert_eq!(http.wait_terminal(&queued, Duration::from_secs(30)).await["state"], "succeeded");
}

#[tokio::test]
async fn after_sigkill_running_attempts_are_lost_then_retried_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let http = server.http();
    let mut retried = sh("sleep 60");
    retried["retry"] = json!({"max_attempts": 2, "backoff_seconds": 0});
    retried["timeout_seconds"] = json!(2);
    let (_, retried) = http.post("/v1/tasks", &retried).await;
    let retried = retried["id"].as_str().unwrap().to_string();
    let (_, single) = http.post("/v1/tasks", &sh("sleep 60")).await;
    let single = single["id"].as_str().unwrap().to_string();
    common::wait_running(&http, &retried).await;
    common::wait_running(&http, &single).await;
    server.kill();

    let server = Server::start(&data, &[]);
    let http = server.http();
    let task = http.wait_terminal(&single, Duration::from_secs(30)).await;
    assert_eq!((task["state"].as_str(), task["reason"].as_str()), (Some("failed"), Some("lost")));
    let task = http.wait_terminal(&retried, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "timed_out", "the retry ran (and hit its timeout): {task}");
    assert_eq!(task["attempts"][0]["outcome"], "lost");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 2);
}

//! The REST API of a real server process, over HTTP.

mod common;

use common::{sh, Server};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn create_get_list_filter_paginate_and_cancel_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let http = server.http();

    let (status, task) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "labels": {"team": "a"}, "project": "p1"})).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["state"], "queued");
    let id = task["id"].as_str().unwrap().to_string();
    let (status, got) = http.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["labels"]["team"], "a");

    let batch: Vec<_> = (0..30).map(|i| json!({"image": "busybox", "command": ["true"], "labels": {"n": (i % 3).to_string()}})).collect();
    let (status, created) = http.post("/v1/tasks/batch", &json!({"tasks": batch})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["ids"].as_array().unwrap().len(), 30);

    let (_, page) = http.get("/v1/tasks?label=n%3D1&limit=100").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 10);
    let (_, page) = http.get("/v1/tasks?project=p1").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);

    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?limit=7&cursor={c}"),
            None => "/v1/tasks?limit=7".into(),
        };
        let (status, page) = http.get(&path).await;
        assert_eq!(status, 200);
        seen += page["tasks"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 31);

    let (status, cancelled) = http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["state"], "cancelled");
    let (status, again) = http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "{again}");
    let (_, queued) = http.get("/v1/tasks?state=queued&limit=1000").await;
    assert_eq!(queued["tasks"].as_array().unwrap().len(), 30);
    let (_, reason) = http.get(&format!("/v1/tasks/{}", created["ids"][0].as_str().unwrap())).await;
    assert_eq!(reason["reason"], "no nodes in the cluster");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_field_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let http = server.http();
    let payload = base64_of(&vec![b'x'; 1024 * 1024 + 1]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"image\": ".to_vec(), 400, "body"),
        ("empty body", Vec::new(), 400, "body"),
        ("unknown field", br#"{"image":"a","gpu":1}"#.to_vec(), 400, "gpu"),
        ("missing image", br#"{"command":["true"]}"#.to_vec(), 400, "image"),
        ("empty image", br#"{"image":""}"#.to_vec(), 400, "image"),
        ("negative cpu", br#"{"image":"a","resources":{"cpu_millicores":-1}}"#.to_vec(), 400, "resources.cpu_millicores"),
        ("absurd memory", br#"{"image":"a","resources":{"memory_mib":4000000000}}"#.to_vec(), 400, "resources.memory_mib"),
        ("zero timeout", br#"{"image":"a","timeout_seconds":0}"#.to_vec(), 400, "timeout_seconds"),
        ("oversize payload", format!(r#"{{"image":"a","payload":"{payload}"}}"#).into_bytes(), 400, "payload"),
        ("bad constraint", br#"{"image":"a","constraints":["node.labels.x ~ y"]}"#.to_vec(), 400, "constraints[0]"),
        ("wrong type", br#"{"image":"a","command":"true"}"#.to_vec(), 400, "command"),
    ];
    for (name, body, status, field) in cases {
        let (got, error) = http.post_raw("/v1/tasks", body).await;
        assert_eq!(got, status, "{name}: {error}");
        assert_eq!(error["error"]["field"], field, "{name}: {error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {error}");
    }

    let too_many: Vec<_> = (0..10_001).map(|_| json!({"image": "a"})).collect();
    let (status, error) = http.post("/v1/tasks/batch", &json!({"tasks": too_many})).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "tasks");
    let (status, error) = http.post("/v1/tasks/batch", &json!({"tasks": [{"image": "a"}, {"image": "b", "priority": 99999}]})).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "tasks[1].priority");
    let (_, all) = http.get("/v1/tasks").await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 0, "a rejected batch stores nothing");

    for path in ["/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/v1/tasks/not-an-id", "/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/logs"] {
        let (status, error) = http.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(error["error"]["code"], "not_found");
    }
    let (status, _) = http.post("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", &json!({})).await;
    assert_eq!(status, 404);
    for path in ["/v1/tasks?state=done", "/v1/tasks?limit=0", "/v1/tasks?label=novalue", "/v1/tasks?cursor=zz", "/v1/tasks?colour=red"] {
        let (status, error) = http.get(path).await;
        assert_eq!(status, 400, "{path}: {error}");
        assert!(error["error"]["field"].is_string(), "{path}: {error}");
    }
    let (status, error) = http.get("/v1/nope").await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("route_not_found")));

    let (status, health) = http.get("/v1/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn lifecycle_exit_codes_timeout_retries_payload_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    let submit = |body: serde_json::Value| {
        let http = &http;
        async move {
            let (status, task) = http.post("/v1/tasks", &body).await;
            assert_eq!(status, 201, "{task}");
            task["id"].as_str().unwrap().to_string()
        }
    };
    let ok = submit(sh("echo out; echo err >&2")).await;
    let fail = submit(sh("exit 7")).await;
    let mut slow = sh("sleep 30");
    slow["timeout_seconds"] = json!(1);
    let slow = submit(slow).await;
    let mut retried = sh("exit 3");
    retried["retry"] = json!({"max_attempts": 3, "backoff_seconds": 0});
    let retried = submit(retried).await;
    let mut with_payload = sh("cat \"$SHEPHERD_PAYLOAD_FILE\"; echo; echo \"$GREETING\"");
    with_payload["payload"] = json!(base64_of(b"the payload"));
    with_payload["env"] = json!({"GREETING": "hi"});
    let with_payload = submit(with_payload).await;
    let to_cancel = submit(sh("echo started; sleep 30")).await;

    let task = http.wait_terminal(&ok, Duration::from_secs(30)).await;
    assert_eq!((task["state"].as_str(), task["exit_code"].as_i64()), (Some("succeeded"), Some(0)));
    let (_, logs) = http.text(&format!("/v1/tasks/{ok}/logs")).await;
    assert!(logs.contains("out") && logs.contains("err"), "{logs}");
    let (_, stderr) = http.text(&format!("/v1/tasks/{ok}/logs?stream=stderr")).await;
    assert_eq!(stderr, "err\n");

    let task = http.wait_terminal(&fail, Duration::from_secs(30)).await;
    assert_eq!((task["state"].as_str(), task["exit_code"].as_i64()), (Some("failed"), Some(7)));
    assert_eq!(task["reason"], "exited with code 7");

    let task = http.wait_terminal(&slow, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "timed_out");

    let task = http.wait_terminal(&retried, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "failed");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 3);

    http.wait_terminal(&with_payload, Duration::from_secs(30)).await;
    let (_, logs) = http.text(&format!("/v1/tasks/{with_payload}/logs")).await;
    assert_eq!(logs, "the payload\nhi\n");

    // Cancel once it is running.
    for _ in 0..200 {
        let (_, task) = http.get(&format!("/v1/tasks/{to_cancel}")).await;
        if task["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = http.post(&format!("/v1/tasks/{to_cancel}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let task = http.wait_terminal(&to_cancel, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "cancelled");
    assert_eq!(task["attempts"][0]["outcome"], "cancelled");
}

#[tokio::test]
async fn logs_follow_live_and_big_output_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--log-head-bytes", "1000", "--log-tail-bytes", "1000"]);
    let http = server.http();
    let (_, task) = http.post("/v1/tasks", &sh("for i in 1 2 3; do echo line $i; sleep 0.3; done")).await;
    let id = task["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let mut response = http.client.get(format!("{}/v1/tasks/{id}/logs?follow=true", http.base)).send().await.unwrap();
    let mut body = Vec::new();
    let mut first_chunk_at = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        first_chunk_at.get_or_insert(started.elapsed());
        body.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&body), "line 1\nline 2\nline 3\n");
    let first = first_chunk_at.unwrap();
    let total = started.elapsed();
    assert!(first + Duration::from_millis(300) < total, "output arrived only at the end: first {first:?}, total {total:?}");

    let (_, task) = http.post("/v1/tasks", &sh("yes 0123456789 | head -c 5000000; echo; echo THE-END")).await;
    let id = task["id"].as_str().unwrap();
    let task = http.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(task["state"], "succeeded");
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    assert!(logs.len() < 3000, "kept {} bytes", logs.len());
    assert!(logs.starts_with("0123456789\n"));
    assert!(logs.trim_end().ends_with("THE-END"), "{logs}");
    assert!(logs.contains("bytes of output truncated"));
}

#[tokio::test]
async fn many_tasks_run_concurrently_up_to_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--cpu", "2000", "--max-tasks", "8"]);
    let http = server.http();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut t = sh("sleep 0.5");
            t["resources"] = json!({"cpu_millicores": 10});
            t
        })
        .collect();
    let (_, created) = http.post("/v1/tasks/batch", &json!({"tasks": tasks})).await;
    let started = std::time::Instant::now();
    let mut max_running = 0;
    loop {
        let (_, nodes) = http.get("/v1/nodes").await;
        let running = nodes["nodes"][0]["tasks"].as_u64().unwrap();
        assert!(running <= 8, "node over its task limit: {running}");
        max_running = max_running.max(running);
        let (_, done) = http.get("/v1/tasks?state=succeeded&limit=100").await;
        if done["tasks"].as_array().unwrap().len() == 16 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(max_running >= 4, "tasks ran one at a time (max {max_running})");
    assert_eq!(created["ids"].as_array().unwrap().len(), 16);
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let http = server.http();
    let (status, doc) = http.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    let checked_in: serde_json::Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    assert_eq!(doc, checked_in, "served document differs from docs/openapi.json");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV").replace("{project}", "nope").replace("{name}", "x");
        for method in item.as_object().unwrap().keys() {
            let url = format!("{}{concrete}", http.base);
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response =
                http.client.request(method.clone(), url).header("content-type", "application/json").body("{}").send().await.unwrap();
            let status = response.status().as_u16();
            // A stream (the event stream) never ends: its status says enough.
            let streams = response.headers().get("content-type").is_some_and(|t| t == "text/event-stream");
            let body: serde_json::Value = if streams { serde_json::Value::Null } else { response.json().await.unwrap_or_default() };
            assert_ne!(status, 405, "{method} {path}");
            assert_ne!(body["error"]["code"], "route_not_found", "{method} {path}");
            operations += 1;
        }
    }
    assert_eq!(operations, 70);
}

#[tokio::test]
async fn a_delayed_task_waits_queued_with_its_reason_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();

    let mut delayed = sh("echo late");
    delayed["delay_seconds"] = json!(3);
    let (status, task) = http.post("/v1/tasks", &delayed).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    assert!(task["start_at"].is_string(), "{task}");
    // Meanwhile an ordinary task runs at once.
    let (_, now) = http.post("/v1/tasks", &sh("true")).await;
    let done = http.wait_terminal(now["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    let (_, waiting) = http.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(waiting["state"], "queued", "{waiting}");
    let reason = waiting["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("delayed until ") && reason.ends_with(task["start_at"].as_str().unwrap()), "{waiting}");

    let done = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let started = done["started_at"].as_str().unwrap();
    assert!(started >= task["start_at"].as_str().unwrap(), "started {started}, due {}", task["start_at"]);

    // A start time in the past runs at once; both forms at once, or too far
    // ahead, are refused naming the field.
    let mut past = sh("true");
    past["start_at"] = json!("2020-01-01T00:00:00Z");
    let (status, task) = http.post("/v1/tasks", &past).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(http.wait_terminal(task["id"].as_str().unwrap(), Duration::from_secs(30)).await["state"], "succeeded");
    for (body, field) in [
        (json!({"delay_seconds": 5, "start_at": "2030-01-01T00:00:00Z"}), "start_at"),
        (json!({"delay_seconds": 40_000_000}), "delay_seconds"),
        (json!({"start_at": "2999-01-01T00:00:00Z"}), "start_at"),
    ] {
        let mut task = sh("true");
        for (k, v) in body.as_object().unwrap() {
            task[k] = v.clone();
        }
        let (status, error) = http.post("/v1/tasks", &task).await;
        assert_eq!((status, error["error"]["field"].as_str()), (400, Some(field)), "{error}");
    }

    // The CLI: --delay, shown by inspect.
    let out = server.cli(&["run", "--delay", "1h", "busybox", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let shown = server.cli(&["inspect", &id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("Start at:") && text.contains("Reason:      delayed until"), "{text}");
}

#[tokio::test]
async fn the_process_driver_gives_a_scratch_directory_removed_with_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    let mut task = sh("echo hi > \"$SHEPHERD_SCRATCH_DIR/f\" && cat \"$SHEPHERD_SCRATCH_DIR/f\" && echo \"$SHEPHERD_SCRATCH_DIR\"");
    task["scratch"] = json!({"target": "/work", "size_mib": 8});
    let (done, logs) = common::run_to_end(&http, task).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let mut lines = logs.lines();
    assert_eq!(lines.next(), Some("hi"));
    let scratch = std::path::PathBuf::from(lines.next().unwrap());
    assert!(scratch.starts_with(dir.path()), "inside the attempt's directory: {}", scratch.display());
    assert!(!scratch.exists(), "removed with the attempt");
}

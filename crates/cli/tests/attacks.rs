//! Defects found by the second round of attacks (issue 27) that need only
//! the process driver, each with the test that failed before its fix.

mod common;

use common::Server;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// Unmounts what a test mounted however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Item 21: a node whose disk is full sends the attempt back to the queue
/// (an infrastructure failure, no retry used) instead of failing the task
/// with "No space left on device"; once there is room, it runs.
#[tokio::test]
async fn a_full_disk_returns_the_attempt_to_the_queue_without_using_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let attempts = data.join("attempts");
    std::fs::create_dir_all(&attempts).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"]).arg(&attempts).status().unwrap();
    assert!(mounted.success(), "this test mounts a small tmpfs (it needs root)");
    let _mount = Mounted(attempts.clone());
    let server = Server::start(&data, &[]);
    let http = server.http();
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![b'p'; 200 * 1024]);
    let (status, task) = http
        .post("/v1/tasks", &json!({"image": "busybox", "command": ["sh", "-c", "wc -c < $SHEPHERD_PAYLOAD_FILE"], "payload": payload, "retry": {"max_attempts": 1}}))
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    // Back to the queue, the attempt interrupted, the task not failed.
    let began = Instant::now();
    loop {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_ne!(task["state"], "failed", "a full disk failed the task: {task}");
        if task["attempts"].as_array().is_some_and(|a| a.iter().any(|a| a["outcome"] == "interrupted")) {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{task}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Room again: the next attempt runs, although the task allows one.
    let grown = Command::new("mount").args(["-o", "remount,size=8m"]).arg(&attempts).status().unwrap();
    assert!(grown.success());
    let done = http.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

/// A zip whose entry `name` holds `bytes` repeated `times` (deflated: a
/// small zip that unpacks large).
fn zip_bomb(name: &str, bytes: &[u8], times: usize) -> Vec<u8> {
    use std::io::Write;
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755).compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("worker.sh", options).unwrap();
        writer.write_all(b"echo ran\n").unwrap();
        writer.start_file(name, options).unwrap();
        for _ in 0..times {
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
    }
    buffer.into_inner()
}

/// Items 10, 11 and 23: packages have a quota (count and bytes), are
/// listed and removed (and go with the last code that ran them), a zip
/// whose names clash or whose header lies is refused at upload, and four
/// tasks of one package that start together unpack it once on the node.
#[tokio::test]
async fn packages_have_a_quota_are_removed_and_unpack_once_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--stack", "sh=busybox"]);
    let admin = server.http();
    let (status, made) = admin.post("/v1/projects", &json!({"name": "zips", "limits": {"max_packages": 2, "max_package_mib": 1}})).await;
    assert_eq!(status, 201, "{made}");
    let http = server.http_as(made["token"]["token"].as_str());
    let zip = |text: &str| common::zip_of(&[("worker.sh", text)]);

    // Clashing names and lying headers: refused at upload, naming the body.
    let clash = common::zip_of(&[("a", "file"), ("a/b", "under a file")]);
    let (status, error) = http.post_raw("/v1/packages", clash).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("body")), "{error}");
    let mut lying = zip_bomb("data", b"z", 4096);
    let central = lying.windows(4).rposition(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
    lying[central + 24..central + 28].copy_from_slice(&1u32.to_le_bytes());
    let (status, error) = http.post_raw("/v1/packages", lying).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("body")), "{error}");

    // A quota of two packages: the same bytes again are the one it has.
    for text in ["echo one", "echo two", "echo one"] {
        let (status, body) = http.post_raw("/v1/packages", zip(text)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, error) = http.post_raw("/v1/packages", zip("echo three")).await;
    assert_eq!((status, error["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{error}");
    let out = server.cli_as(made["token"]["token"].as_str().unwrap(), &["package", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains("2 of 2 packages"), "{listed}");

    // A package a code runs stays; removing the code removes it.
    let (_, first) = http.post_raw("/v1/packages", zip("echo one")).await;
    let digest = first["digest"].as_str().unwrap().to_string();
    let code = json!({"name": "runs", "package": {"digest": digest, "size": 1, "runtime": "sh", "executable": "worker.sh"}});
    assert_eq!(http.post("/v1/codes?project=zips", &code).await.0, 201);
    let (status, error) = http.delete(&format!("/v1/packages/{digest}")).await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(http.delete("/v1/codes/runs").await.0, 204);
    let (_, list) = http.get("/v1/packages").await;
    assert_eq!(list["packages"].as_array().unwrap().len(), 1, "the code's package went with it: {list}");
    let other = list["packages"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(http.delete(&format!("/v1/packages/{other}")).await.0, 204);
    assert_eq!(http.delete(&format!("/v1/packages/{other}")).await.0, 404);

    // 1 MiB of bytes per project: a zip that is larger is refused.
    let big: Vec<u8> = (0..1_200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut raw = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(&mut raw);
        writer.start_file("noise", zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
        writer.write_all(&big).unwrap();
        writer.finish().unwrap();
    }
    let (status, error) = http.post_raw("/v1/packages", raw.into_inner()).await;
    assert_eq!((status, error["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{error}");

    // A small zip that unpacks to 96 MiB, four tasks at once: one unpack.
    let bomb = zip_bomb("fill", &[0u8; 1024 * 1024], 96);
    assert!(bomb.len() < 512 * 1024, "{} bytes", bomb.len());
    let (status, stored) = admin.post_raw("/v1/packages", bomb).await;
    assert_eq!(status, 201, "{stored}");
    let code = json!({"name": "bomb", "package": {"digest": stored["digest"], "size": 1, "runtime": "sh", "executable": "worker.sh"}});
    assert_eq!(admin.post("/v1/codes", &code).await.0, 201);
    let (status, batch) =
        admin.post("/v1/tasks/batch", &json!({"tasks": [{"code": "bomb"}, {"code": "bomb"}, {"code": "bomb"}, {"code": "bomb"}]})).await;
    assert_eq!(status, 201, "{batch}");
    for id in batch["ids"].as_array().unwrap() {
        let done = admin.wait_terminal(id.as_str().unwrap(), Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("unpacked a code package")).count(), 1, "one unpack for four attempts");
}

/// Item 12: a revoked token's open event stream and followed log end
/// (before, both went on for as long as the client kept them).
#[tokio::test]
async fn a_revoked_token_loses_its_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.http();
    let (status, made) = admin.post("/v1/projects", &json!({"name": "streams"})).await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"]["token"].as_str().unwrap().to_string();
    let token_id = made["token"]["id"].as_str().unwrap().to_string();
    let http = server.http_as(Some(&token));
    let (status, task) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]})).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let open = |path: String| {
        let (client, token, base) = (client.clone(), token.clone(), server.url.clone());
        async move {
            let mut response = client.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
            assert_eq!(response.status(), 200);
            // Read until the server ends the response; how long that took.
            let began = Instant::now();
            while let Ok(Some(_)) = response.chunk().await {}
            began.elapsed()
        }
    };
    let events = tokio::spawn(open("/v1/events".into()));
    let logs = tokio::spawn(open(format!("/v1/tasks/{id}/logs?follow=true")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!events.is_finished() && !logs.is_finished(), "both streams stay open while the token lives");
    let revoked_at = Instant::now();
    let (status, body) = admin.delete(&format!("/v1/projects/streams/tokens/{token_id}")).await;
    assert_eq!(status, 204, "{body}");
    for (what, stream) in [("events", events), ("logs", logs)] {
        let ended = tokio::time::timeout(Duration::from_secs(10), stream).await;
        assert!(ended.is_ok(), "the {what} stream went on after its token was revoked");
    }
    eprintln!("streams ended {:?} after the revocation", revoked_at.elapsed());
    assert_eq!(http.get("/v1/tasks").await.0, 401, "and the token is refused");
    let (status, _) = admin.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
}

/// Items 14, 15, 16: a schedule blocked by its project's quota ends after
/// its `run_times` runs with the reason on it and a single log line; a
/// project has a bounded number of schedules, listed a page at a time; a
/// cron pattern that never matches is refused.
#[tokio::test]
async fn a_blocked_schedule_ends_with_its_reason_and_schedules_are_bounded_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let admin = server.http();
    let (status, made) = admin.post("/v1/projects", &json!({"name": "cron", "limits": {"max_queued": 0, "max_schedules": 3}})).await;
    assert_eq!(status, 201, "{made}");
    let http = server.http_as(made["token"]["token"].as_str());
    let task = json!({"image": "busybox", "command": ["true"]});
    let (status, blocked) = http.post("/v1/schedules", &json!({"run_every": 1, "run_times": 3, "task": task})).await;
    assert_eq!(status, 201, "{blocked}");
    let id = blocked["id"].as_str().unwrap().to_string();
    let began = Instant::now();
    let done = loop {
        let (_, s) = http.get(&format!("/v1/schedules/{id}")).await;
        if s["state"] == "done" {
            break s;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "a blocked schedule never ended: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((done["fired"].as_u64(), done["failed"].as_u64()), (Some(0), Some(3)), "{done}");
    assert!(done["reason"].as_str().unwrap_or_default().contains("queued"), "{done}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("schedule slots failed")).count(), 1, "one line for three failed slots");

    // Never matching: refused (the cron library would look to the year 5000).
    let (status, error) = http.post("/v1/schedules", &json!({"cron": "0 0 31 2 *", "end_at": "2099-01-01T00:00:00Z", "task": task})).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("cron")), "{error}");
    // Three at most (the done one does not count), paged.
    for _ in 0..3 {
        assert_eq!(http.post("/v1/schedules", &json!({"cron": "@daily", "task": task})).await.0, 201);
    }
    let (status, error) = http.post("/v1/schedules", &json!({"cron": "@daily", "task": task})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{error}");
    let (_, first) = http.get("/v1/schedules?limit=3").await;
    assert_eq!(first["schedules"].as_array().unwrap().len(), 3, "{first}");
    let next = first["next"].as_str().expect("a next page").to_string();
    let (_, second) = http.get(&format!("/v1/schedules?limit=3&after={next}")).await;
    assert_eq!((second["schedules"].as_array().unwrap().len(), second.get("next")), (1, None), "{second}");
    assert_eq!(http.get("/v1/schedules?limit=0").await.0, 400);
}

/// Items 17, 20 and 22, and papercuts: a registry login is never a task's
/// secret and the secrets API leaves logins and the webhook key alone;
/// the dashboard is served with a content security policy and every
/// answer with nosniff; errors name their field, are JSON whatever
/// refused them, and a late or out-of-range report is refused.
#[tokio::test]
async fn logins_stay_out_of_tasks_headers_guard_the_dashboard_and_errors_say_what() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    // A project's registry login: set with its own route, never a task's secret.
    let (status, _) = http
        .send(reqwest::Method::PUT, "/v1/projects/default/registries/127.0.0.1:5999", &json!({"username": "u", "password": "hunter2"}))
        .await;
    assert_eq!(status, 204);
    let (status, body) = http
        .post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "secrets": [{"name": "registry.127.0.0.1_5999", "env": "P"}]}))
        .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("secrets[0].name")), "{body}");
    let (status, body) = http.send(reqwest::Method::PUT, "/v1/projects/default/secrets/registry.evil", &json!({"value": "x"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("name")), "{body}");
    let (_, secret) = http.get("/v1/projects/default/webhook-secret").await;
    assert_eq!(http.delete("/v1/projects/default/secrets/.webhook").await.0, 404, "the webhook key is not a secret to remove");
    assert_eq!(http.delete("/v1/projects/default/secrets/registry.127.0.0.1_5999").await.0, 404);
    let (_, again) = http.get("/v1/projects/default/webhook-secret").await;
    assert_eq!(secret["secret"], again["secret"], "still the same key");
    let (_, secrets) = http.get("/v1/projects/default/secrets").await;
    assert_eq!(secrets["secrets"], json!([]), "logins are not listed as secrets: {secrets}");

    // Headers.
    let page = reqwest::get(format!("{}/ui", server.url)).await.unwrap();
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers().get("x-frame-options").and_then(|v| v.to_str().ok()), Some("DENY"));
    let answer = http.client.get(format!("{}/v1/tasks", server.url)).send().await.unwrap();
    assert_eq!(answer.headers().get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));

    // Errors: a path that is not UTF-8 is answered in JSON.
    let raw = http.client.get(format!("{}/v1/tasks/%FF%FE", server.url)).send().await.unwrap();
    let status = raw.status().as_u16();
    let body: serde_json::Value = raw.json().await.unwrap_or_default();
    assert!(status >= 400 && body["error"]["message"].is_string(), "{status} {body}");
    // A schedule that would end before it starts; a progress message too
    // long (named `message`); progress after the end; an event id ahead.
    let (status, body) =
        http.post("/v1/schedules", &json!({"run_every": 5, "end_at": "2001-01-01T00:00:00Z", "task": {"image": "busybox"}})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("end_at")), "{body}");
    let (_, task) = http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"]})).await;
    let id = task["id"].as_str().unwrap().to_string();
    let (status, body) = http.post(&format!("/v1/tasks/{id}/progress"), &json!({"percent": 10, "message": "m".repeat(1001)})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("message")), "{body}");
    http.wait_terminal(&id, Duration::from_secs(30)).await;
    let (status, body) = http.post(&format!("/v1/tasks/{id}/progress"), &json!({"percent": 100, "message": "late"})).await;
    assert_eq!(status, 409, "{body}");
    let ahead = http.client.get(format!("{}/v1/events", server.url)).header("last-event-id", "999999999-0-0").send().await.unwrap();
    assert_eq!(ahead.status().as_u16(), 400);
}

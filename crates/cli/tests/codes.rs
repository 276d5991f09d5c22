//! Codes and schedules (issue 15) against the real binary (process driver).

mod common;

use common::{sh, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn output(http: &common::Http, id: &str) -> String {
    http.text(&format!("/v1/tasks/{id}/logs")).await.1
}

async fn run(http: &common::Http, body: Value) -> Value {
    let (status, task) = http.post("/v1/tasks", &body).await;
    assert_eq!(status, 201, "{task}");
    http.wait_terminal(task["id"].as_str().unwrap(), Duration::from_secs(30)).await
}

/// Revisions, what a task overrides, pinning and rolling back, max
/// concurrency with its reason, deletion, other projects, and the CLI.
#[tokio::test]
async fn codes_are_versioned_templates_that_tasks_override() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    let greet = |greeting: &str| {
        json!({"name": "greet", "image": "busybox", "command": ["sh", "-c", "echo \"$GREETING $WHO\""],
               "env": {"GREETING": greeting, "WHO": "code"}, "timeout_seconds": 600, "labels": {"team": "a"}})
    };
    let (status, first) = http.post("/v1/codes", &greet("hello")).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!((first["revision"].as_u64(), first["project"].as_str()), (Some(1), Some("default")));
    let (_, second) = http.post("/v1/codes", &greet("hi")).await;
    assert_eq!(second["revision"], 2);

    // The latest revision; the task's env wins key by key; unset fields come from the code.
    let done = run(&http, json!({"code": "greet", "env": {"WHO": "task"}})).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(output(&http, done["id"].as_str().unwrap()).await, "hi task\n");
    assert_eq!(done["code"], json!({"name": "greet", "revision": 2}));
    assert_eq!((done["timeout_seconds"].as_u64(), done["labels"]["team"].as_str()), (Some(600), Some("a")));
    // Set to the default explicitly: still the task's.
    let (_, explicit) = http.post("/v1/tasks", &json!({"code": "greet", "timeout_seconds": 3600})).await;
    assert_eq!(explicit["timeout_seconds"], 3600, "{explicit}");
    // A pinned revision; a rollback makes a copy of it the latest.
    let pinned = run(&http, json!({"code": "greet", "code_revision": 1})).await;
    assert_eq!(output(&http, pinned["id"].as_str().unwrap()).await, "hello code\n");
    let (status, back) = http.post("/v1/codes/greet/rollback", &json!({"revision": 1})).await;
    assert_eq!(status, 201, "{back}");
    assert_eq!((back["revision"].as_u64(), back["rolled_back_from"].as_u64()), (Some(3), Some(1)));
    let (_, revisions) = http.get("/v1/codes/greet/revisions").await;
    let numbers: Vec<u64> = revisions["revisions"].as_array().unwrap().iter().map(|r| r["revision"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    // A batch mixing codes and plain tasks.
    let (status, batch) = http
        .post("/v1/tasks/batch", &json!({"tasks": [{"code": "greet"}, sh("echo plain"), {"code": "greet", "env": {"WHO": "b"}}]}))
        .await;
    assert_eq!(status, 201, "{batch}");
    let ids: Vec<String> = batch["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    let mut said = Vec::new();
    for id in &ids {
        http.wait_terminal(id, Duration::from_secs(30)).await;
        said.push(output(&http, id).await);
    }
    assert_eq!(said, vec!["hello code\n", "plain\n", "hello b\n"]);

    // Refusals name the field.
    for (path, body, field) in [
        ("/v1/tasks", json!({"code": "nope"}), "code"),
        ("/v1/tasks", json!({"code": "greet", "code_revision": 9}), "code"),
        ("/v1/tasks", json!({"code": "greet", "timeout_seconds": 0}), "timeout_seconds"),
        ("/v1/tasks/batch", json!({"tasks": [sh("true"), {"code": "nope"}]}), "tasks[1].code"),
        ("/v1/tasks", json!({"command": ["true"]}), "image"),
        ("/v1/codes", json!({"name": "bad name", "image": "busybox"}), "name"),
        ("/v1/codes", json!({"name": "x", "image": "busybox", "max_concurrency": 0}), "max_concurrency"),
        ("/v1/codes", json!({"name": "x", "image": "busybox", "resources": {"memory_mib": 1}}), "resources.memory_mib"),
    ] {
        let (status, error) = http.post(path, &body).await;
        assert_eq!((status, error["error"]["field"].as_str()), (400, Some(field)), "{body} -> {error}");
    }

    // Max concurrency: at most 2 of its tasks hold a node at once; the rest say why.
    let (status, _) = http
        .post("/v1/codes", &json!({"name": "slow", "image": "busybox", "command": ["sh", "-c", "sleep 1"], "max_concurrency": 2}))
        .await;
    assert_eq!(status, 201);
    let (_, batch) = http.post("/v1/tasks/batch", &json!({"tasks": vec![json!({"code": "slow"}); 6]})).await;
    let ids: Vec<String> = batch["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    let (mut most, mut reason_seen) = (0, false);
    let began = Instant::now();
    loop {
        let mut holding = 0;
        let mut ended = 0;
        for id in &ids {
            let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
            match t["state"].as_str().unwrap() {
                "scheduled" | "running" => holding += 1,
                "queued" => reason_seen |= t["reason"].as_str().is_some_and(|r| r.contains("code `slow` runs at most 2 tasks at once")),
                "succeeded" => ended += 1,
                other => panic!("{other}: {t}"),
            }
        }
        most = most.max(holding);
        if ended == ids.len() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "the code's tasks did not all run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 2, "never more than max_concurrency at once, and that many");
    assert!(reason_seen, "the waiting tasks said why");

    // Another project's token sees none of it.
    assert_eq!(http.post("/v1/projects", &json!({"name": "other"})).await.0, 201);
    let (_, token) = http.post("/v1/projects/other/tokens", &json!({"name": "t"})).await;
    let other = server.http_as(token["token"].as_str());
    assert_eq!(other.get("/v1/codes/greet").await.0, 404);
    assert_eq!(other.get("/v1/codes").await.1["codes"], json!([]));
    let (status, error) = other.post("/v1/tasks", &json!({"code": "greet"})).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("code")), "{error}");
    assert_eq!(other.get("/v1/codes/greet?project=default").await.0, 404, "another project's: as missing");
    assert_eq!(other.get("/v1/codes?project=default").await.0, 404);
    assert_eq!(other.get("/v1/schedules?project=default").await.0, 404);

    // The CLI.
    let out =
        server.cli(&["code", "push", "cli-greet", "busybox", "--timeout", "2m", "-e", "WHO=push", "--", "sh", "-c", "echo \"hi $WHO\""]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&["run", "--code", "cli-greet", "-e", "WHO=run", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi run\n");
    let out = server.cli(&["run", "--code", "cli-greet", "--wait", "--", "echo", "replaced"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "replaced\n");
    let out = server.cli(&["code", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("cli-greet") && listed.contains("greet") && listed.contains("slow"), "{listed}");
    let out = server.cli(&["code", "inspect", "cli-greet"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Timeout:     120s"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(server.cli(&["code", "rm", "cli-greet"]).status.success());
    let out = server.cli(&["run", "--code", "cli-greet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no code `cli-greet`"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(http.delete("/v1/codes/greet").await.0, 204);
    assert_eq!(http.get("/v1/codes/greet").await.0, 404);
}

/// A zip package pushed with the CLI runs as IronWorker ran workers: the
/// executable with -payload, -id and -d, the package's files beside it.
#[tokio::test]
async fn a_zip_package_runs_its_executable_with_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--stack", "sh=busybox"]);
    let http = server.http();
    let worker = "while [ $# -gt 0 ]; do case $1 in -payload) P=$2; shift;; -id) I=$2; shift;; -d) D=$2; shift;; esac; shift; done\n\
                  echo \"id=$I same=$([ \"$I\" = \"$SHEPHERD_TASK_ID\" ] && echo yes) payload=$(cat \"$P\") lib=$(cat \"$D/lib/data.txt\") env=$TASK_ID\"\n";
    let zip = dir.path().join("worker.zip");
    std::fs::write(&zip, common::zip_of(&[("worker.sh", worker), ("lib/data.txt", "packaged")])).unwrap();
    let out = server.cli(&["code", "push", "zipped", "--zip", zip.to_str().unwrap(), "--exec", "worker.sh", "--max-concurrency", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, code) = http.get("/v1/codes/zipped").await;
    assert_eq!(
        (code["image"].as_str(), code["package"]["runtime"].as_str(), code["max_concurrency"].as_u64()),
        (Some("busybox"), Some("sh"), Some(3)),
        "{code}"
    );
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, "{\"n\": 1}").unwrap();
    let out = server.cli(&["run", "--code", "zipped", "--payload", payload.to_str().unwrap(), "--wait"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("same=yes payload={\"n\": 1} lib=packaged env=") && !said.contains("env=\n"), "{said}");
    // Refusals: no such file in the package; another project's package; not a zip; too large.
    let digest = code["package"]["digest"].as_str().unwrap().to_string();
    let mut bad = json!({"name": "nofile", "package": {"digest": digest, "size": 1, "runtime": "sh", "executable": "missing.sh"}});
    let (status, error) = http.post("/v1/codes", &bad).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("package.executable")), "{error}");
    bad["package"]["executable"] = json!("worker.sh");
    bad["project"] = json!("elsewhere");
    http.post("/v1/projects", &json!({"name": "elsewhere"})).await;
    let (status, error) = http.post("/v1/codes", &bad).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("package.digest")), "{error}");
    bad["package"]["runtime"] = json!("cobol");
    bad["project"] = json!("default");
    let (status, error) = http.post("/v1/codes", &bad).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("package.runtime")), "{error}");
    let (status, error) = http.post_raw("/v1/packages", b"not a zip".to_vec()).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = http.post_raw("/v1/packages", vec![0u8; 33 * 1024 * 1024]).await;
    assert_eq!((status, error["error"]["code"].as_str()), (413, Some("body_too_large")), "{error}");
}

async fn schedule(http: &common::Http, id: &str) -> Value {
    http.get(&format!("/v1/schedules/{id}")).await.1
}

/// Waits until the schedule has fired `n` times (or ended).
async fn wait_fired(http: &common::Http, id: &str, n: u64, limit: Duration) -> Value {
    let began = Instant::now();
    loop {
        let s = schedule(http, id).await;
        if s["fired"].as_u64().unwrap_or(0) >= n {
            return s;
        }
        assert!(began.elapsed() < limit, "schedule fired {} of {n} times: {s}", s["fired"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tasks_of(http: &common::Http, id: &str) -> Vec<Value> {
    let (_, list) = http.get(&format!("/v1/tasks?label=shepherd.schedule={id}&limit=1000")).await;
    list["tasks"].as_array().unwrap().clone()
}

/// Schedules fire each slot once, with their task (or code), in real time,
/// through a SIGKILL and a restart; pause, resume, cancel; cron with a zone.
#[tokio::test]
async fn schedules_fire_each_slot_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let http = server.http();

    // Three runs, a second apart, then done.
    let (status, three) = http.post("/v1/schedules", &json!({"run_every": 1, "run_times": 3, "task": sh("echo tick")})).await;
    assert_eq!(status, 201, "{three}");
    let id = three["id"].as_str().unwrap().to_string();
    let done = wait_fired(&http, &id, 3, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let done = if done["state"] == "done" { done } else { schedule(&http, &id).await };
    assert_eq!((done["state"].as_str(), done["fired"].as_u64()), (Some("done"), Some(3)), "{done}");
    let tasks = tasks_of(&http, &id).await;
    assert_eq!(tasks.len(), 3);
    for t in &tasks {
        let t = http.wait_terminal(t["id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(t["state"], "succeeded");
    }

    // A code on a cron in Berlin's zone, every second, twice.
    http.post("/v1/codes", &json!({"name": "tick", "image": "busybox", "command": ["sh", "-c", "echo cron"]})).await;
    let (status, cron) = http
        .post("/v1/schedules", &json!({"cron": "* * * * * *", "time_zone": "Europe/Berlin", "run_times": 2, "task": {"code": "tick"}}))
        .await;
    assert_eq!(status, 201, "{cron}");
    let cron_id = cron["id"].as_str().unwrap().to_string();
    wait_fired(&http, &cron_id, 2, Duration::from_secs(30)).await;
    let made = tasks_of(&http, &cron_id).await;
    assert_eq!(made.len(), 2);
    assert_eq!(made[0]["code"]["name"], "tick");

    // Every 2 s, through a SIGKILL and 3 s down: each slot once.
    let (_, every) = http.post("/v1/schedules", &json!({"run_every": 2, "task": sh("true"), "name": "steady"})).await;
    let every_id = every["id"].as_str().unwrap().to_string();
    wait_fired(&http, &every_id, 2, Duration::from_secs(30)).await;
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    let server = Server::start(&data, &[]);
    let http = server.http();
    let before = schedule(&http, &every_id).await["fired"].as_u64().unwrap();
    let after = wait_fired(&http, &every_id, before + 3, Duration::from_secs(30)).await;
    let tasks = tasks_of(&http, &every_id).await;
    assert_eq!(tasks.len() as u64, after["fired"].as_u64().unwrap(), "one task per fired slot: {after}");
    let slots: BTreeSet<i64> = tasks
        .iter()
        .map(|t| shepherd_core::Timestamp::parse_rfc3339(t["labels"]["shepherd.slot"].as_str().unwrap()).unwrap().millis())
        .collect();
    assert_eq!(slots.len(), tasks.len(), "no slot fired twice");
    let slots: Vec<i64> = slots.into_iter().collect();
    assert!(slots.windows(2).all(|p| p[1] - p[0] == 2000), "none missed across the restart: {slots:?}");

    // Pause: nothing fires; resume: it goes on; cancel: for good.
    let (status, paused) = http.post(&format!("/v1/schedules/{every_id}/pause"), &json!({})).await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")), "{paused}");
    let count = paused["fired"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(schedule(&http, &every_id).await["fired"].as_u64(), Some(count));
    assert_eq!(http.post(&format!("/v1/schedules/{every_id}/pause"), &json!({})).await.0, 409);
    let (_, resumed) = http.post(&format!("/v1/schedules/{every_id}/resume"), &json!({})).await;
    assert_eq!(resumed["state"], "active");
    wait_fired(&http, &every_id, count + 1, Duration::from_secs(30)).await;
    let (status, cancelled) = http.delete(&format!("/v1/schedules/{every_id}")).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")));
    let (_, list) = http.get("/v1/schedules").await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 3);

    // Refusals name the field.
    for (body, field) in [
        (json!({"cron": "61 * * * *", "task": sh("true")}), "cron"),
        (json!({"cron": "* * * * *", "time_zone": "Nowhere/Else", "task": sh("true")}), "time_zone"),
        (json!({"task": sh("true")}), "cron"),
        (json!({"run_every": 5, "task": {"command": ["true"]}}), "task.image"),
        (json!({"run_every": 5, "task": {"code": "missing"}}), "task.code"),
        (json!({"run_every": 5, "task": sh("true"), "overlap": "sometimes"}), "overlap"),
    ] {
        let (status, error) = http.post("/v1/schedules", &body).await;
        assert_eq!((status, error["error"]["field"].as_str()), (400, Some(field)), "{body} -> {error}");
    }

    // The CLI.
    let out = server.cli(&["schedule", "create", "--every", "1h", "--name", "hourly", "busybox", "--", "echo", "hi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = server.cli(&["schedule", "ls"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&created) && listed.contains("every 3600s"), "{listed}");
    assert!(server.cli(&["schedule", "pause", &created]).status.success());
    assert!(server.cli(&["schedule", "rm", &created]).status.success());
    let out = server.cli(&["schedule", "create", "--cron", "bad", "busybox"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cron"), "{}", String::from_utf8_lossy(&out.stderr));
}

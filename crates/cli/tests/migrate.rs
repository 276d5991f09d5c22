//! `shepherd store migrate`: the documented upgrade path from the embedded
//! SQLite store to PostgreSQL. Stop `up`, migrate, start on PostgreSQL:
//! finished tasks keep their output, a task interrupted by the stop runs
//! again, a queued one still waits, tenants, tokens, secrets and the audit
//! log are there, and new tasks get new numbers. A copy killed halfway
//! resumes and verifies; a target that is not empty is refused.

mod common;

use common::{sh, Server};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn migrate(data: &std::path::Path, url: &str, extra: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .args(["store", "migrate", "--from"])
        .arg(format!("sqlite:{}", data.display()))
        .args(["--to", url])
        .args(extra)
        .output()
        .expect("run shepherd store migrate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_moves_from_sqlite_to_postgres_with_its_history_and_tenants() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Bad arguments: a clear message and a failure, nothing touched.
    for (args, says) in [
        (vec!["--from", "/etc", "--to", url.as_str()], "expected sqlite:PATH"),
        (vec!["--from", "sqlite:/nonexistent/dir", "--to", url.as_str()], "no SQLite store"),
        (vec!["--from", "sqlite:/tmp", "--to", "mysql://x/y"], "expected a postgres:// URL"),
        (vec!["--from", "sqlite:/tmp", "--to", url.as_str(), "--batch", "0"], "--batch"),
    ] {
        let out = Command::new(common::BIN).args(["store", "migrate"]).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut server = Server::start(&data, &["--stack", "sh=busybox"]);
    let http = server.http();
    // A code with a zip package: SQLite keeps its bytes in a file beside the database.
    let worker = "while [ $# -gt 0 ]; do case $1 in -d) D=$2; shift;; esac; shift; done; cat \"$D/lib/data.txt\"\n";
    let zip = dir.path().join("worker.zip");
    std::fs::write(&zip, common::zip_of(&[("worker.sh", worker), ("lib/data.txt", "packaged before the move")])).unwrap();
    let pushed = server.cli(&["code", "push", "zipped", "--zip", zip.to_str().unwrap(), "--exec", "worker.sh"]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    // A tenant with a token and a secret, and tasks in every state.
    let (status, _) = http.post("/v1/projects", &json!({"name": "acme", "limits": {"max_running": 5}})).await;
    assert_eq!(status, 201);
    let (status, token) = http.post("/v1/projects/acme/tokens", &json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().or(token["token"]["token"].as_str()).unwrap().to_string();
    let (status, _) = http.send(reqwest::Method::PUT, "/v1/projects/acme/secrets/db", &json!({"value": "s3cret"})).await;
    assert!(status == 200 || status == 201 || status == 204, "{status}");
    let (done, _) = common::run_to_end(&http, sh("echo kept output")).await;
    let done = done["id"].as_str().unwrap().to_string();
    let (_, array) = http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "array": {"size": 3}})).await;
    let (_, running) = http.post("/v1/tasks", &sh("sleep 2; echo second life")).await;
    let running = running["id"].as_str().unwrap().to_string();
    common::wait_running(&http, &running).await;
    let (_, queued) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "constraints": ["node.labels.later==yes"]})).await;
    let queued = queued["id"].as_str().unwrap().to_string();
    // Enough rows that a copy of one row a batch takes a while.
    let batch: Vec<_> =
        (0..400).map(|_| json!({"image": "busybox", "command": ["true"], "constraints": ["node.labels.later==yes"]})).collect();
    let (status, _) = http.post("/v1/tasks/batch", &json!({"tasks": batch})).await;
    assert_eq!(status, 201);
    let (_, before) = http.get("/v1/audit?project=default&limit=1000").await;
    // While `up` runs, its data directory is refused.
    let refused = migrate(&data, &url, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"), "{}", String::from_utf8_lossy(&refused.stderr));
    server.stop();

    // A copy killed halfway through (one row a batch) resumes where it stopped.
    let mut child = Command::new(common::BIN)
        .args(["store", "migrate", "--batch", "1", "--from"])
        .arg(format!("sqlite:{}", data.display()))
        .args(["--to", &url])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut chunk = Vec::new();
        if reader.read_until(b'\r', &mut chunk).unwrap_or(0) == 0 {
            break;
        }
        seen.extend_from_slice(&chunk);
        if String::from_utf8_lossy(&seen).contains("\rtasks ") {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(String::from_utf8_lossy(&seen).contains("tasks"), "the copy got to the tasks: {}", String::from_utf8_lossy(&seen));
    let resumed = migrate(&data, &url, &[]);
    let out = String::from_utf8_lossy(&resumed.stdout).to_string();
    let err = String::from_utf8_lossy(&resumed.stderr).to_string();
    assert!(resumed.status.success(), "{out}\n{err}");
    assert!(err.contains("done in an earlier run"), "the tables copied before the kill are not copied again: {err}");
    assert!(!out.contains(" NO"), "{out}");
    let tasks_line = out.lines().find(|l| l.starts_with("tasks ")).unwrap_or_default().to_string();
    assert!(tasks_line.contains("yes"), "{out}");
    let counts: Vec<&str> = tasks_line.split_whitespace().collect();
    assert_eq!(counts[1], counts[2], "as many tasks on both sides: {tasks_line}");
    assert!(counts[1].parse::<u64>().unwrap() >= 406, "{tasks_line}");

    // Into a target that holds a cluster already: refused.
    let other = common::fresh_postgres_database().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other_data = other_dir.path().join("data");
    let mut filled = Server::start(&other_data, &["--store", &other]);
    common::run_to_end(&filled.http(), sh("true")).await;
    filled.stop();
    let refused = migrate(&data, &other, &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("already holds a cluster's data") && err.contains("--append"), "{err}");

    // The cluster on PostgreSQL (the same data directory: its node keeps its id).
    let server = Server::start(&data, &["--store", &url, "--node-label", "later=yes", "--stack", "sh=busybox"]);
    let http = server.http();
    // The package's bytes came along into the row.
    let ran = server.cli(&["run", "--code", "zipped", "--wait"]);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "packaged before the move");
    let (status, task) = http.get(&format!("/v1/tasks/{done}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "succeeded");
    let (_, logs) = http.text(&format!("/v1/tasks/{done}/logs")).await;
    assert_eq!(logs, "kept output\n");
    let again = http.wait_terminal(&running, Duration::from_secs(60)).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    let outcomes: Vec<_> = again["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap().to_string()).collect();
    assert_eq!(outcomes, ["interrupted", "succeeded"]);
    assert_eq!(http.wait_terminal(&queued, Duration::from_secs(60)).await["state"], "succeeded");
    let array_id = array["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, array) = http.get(&format!("/v1/arrays/{array_id}")).await;
        assert_eq!(status, 200, "{array}");
        if array["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the array ends: {array}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Tenants: the project's quota, its token, its secret.
    let (_, project) = http.get("/v1/projects/acme").await;
    let limits = if project["limits"].is_null() { &project["project"]["limits"] } else { &project["limits"] };
    assert_eq!(limits["max_running"], 5, "{project}");
    let as_acme = server.http_as(Some(&token));
    let (status, _) = as_acme.get("/v1/tasks").await;
    assert_eq!(status, 200, "the project's token still works");
    let (secret_task, _) = common::run_to_end(
        &as_acme,
        json!({"image": "busybox", "command": ["sh", "-c", "echo $DB"], "secrets": [{"name": "db", "env": "DB"}]}),
    )
    .await;
    assert_eq!(secret_task["state"], "succeeded", "{secret_task}");
    // The audit log as it was, and a project's numbers go on after the copied ones.
    let (_, after) = http.get("/v1/audit?project=default&limit=1000").await;
    let (after, before) = (after["entries"].as_array().unwrap(), before["entries"].as_array().unwrap());
    assert_eq!(after[1..], before[..], "the default project's audit log is as it was, then the code's run");
    assert_eq!(after[0]["seq"].as_i64(), before[0]["seq"].as_i64().map(|s| s + 1), "numbered on: {after:?}");
    let (_, acme) = http.get("/v1/audit?project=acme&limit=1000").await;
    let entries = acme["entries"].as_array().unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.len() >= 3, "{acme}");
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "numbered without a repeat: {seqs:?}");
    assert_eq!(entries[0]["action"], "task.create", "the newest is the task made on PostgreSQL: {acme}");
}

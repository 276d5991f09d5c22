//! The web dashboard in a real browser: headless Chromium driven through
//! the DevTools protocol by `tests/ui/browser.py` (websocket-client, in the
//! test command's Python venv). Screenshots of every page land in
//! `target/ui-screenshots` (`docs/ui` keeps a set for the README).

mod common;

use common::{sh, Http, Server, ADMIN_TOKEN};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

fn chromium() -> String {
    if let Ok(path) = std::env::var("SHEPHERD_TEST_CHROMIUM") {
        return path;
    }
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {candidate}")]).output().expect("sh");
        if found.status.success() {
            return String::from_utf8_lossy(&found.stdout).trim().to_string();
        }
    }
    panic!("no Chromium: run scripts/test.sh (it installs Debian's chromium), or set SHEPHERD_TEST_CHROMIUM");
}

#[tokio::test]
async fn the_dashboard_shows_each_page_follows_a_live_log_and_keeps_projects_apart() {
    let python =
        std::env::var("SHEPHERD_TEST_PYTHON").expect("SHEPHERD_TEST_PYTHON must name a Python with websocket-client: run scripts/test.sh");
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "8"]);
    let admin = server.http();
    let alpha = server.http_as(Some(&project(&admin, "alpha").await));
    let beta_token = project(&admin, "beta").await;
    let beta = server.http_as(Some(&beta_token));
    // Work in both projects, one failure, and a task printing a line every half second.
    let (alpha_task, _) = common::run_to_end(&alpha, sh("echo hello from alpha")).await;
    let (beta_task, _) = common::run_to_end(&beta, sh("echo hello from beta")).await;
    let (failed, _) = common::run_to_end(&alpha, sh("exit 2")).await;
    assert_eq!(failed["state"], "failed");
    let live = common::submit(&alpha, sh("for i in $(seq 1 240); do echo line $i; sleep 0.5; done")).await;
    // An array with a failed index, and a task waiting for it to finish.
    let mut array = sh("test $SHEPHERD_ARRAY_INDEX -ne 1");
    array["array"] = json!({"size": 4});
    let (status, created) = alpha.post("/v1/tasks", &array).await;
    assert_eq!(status, 201, "{created}");
    let array_id = created["id"].as_str().unwrap().to_string();
    let mut join = sh("echo joined");
    join["depends_on"] = json!([{"task": array_id, "on": "finished"}]);
    let (status, _) = alpha.post("/v1/tasks", &join).await;
    assert_eq!(status, 201);
    let (status, _) = alpha.send(reqwest::Method::PUT, "/v1/projects/alpha/secrets/db", &json!({ "value": "s3cret-value" })).await;
    assert_eq!(status, 204);
    // The overview's timeline samples every 5 s: let it take a second one.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let screenshots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    let plan = json!({
        "chromium": chromium,
        "base": server.url,
        "admin_token": ADMIN_TOKEN,
        "beta_token": beta_token,
        "alpha_task": alpha_task["id"],
        "beta_task": beta_task["id"],
        "live_task": live,
        "failed_task": failed["id"],
        "array": array_id,
        "succeeded_at_least": 2,
        "screenshots": screenshots,
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the browser driver");
    child.stdin.take().unwrap().write_all(plan.to_string().as_bytes()).unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().expect("driver output");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.trim() == "ok", "the browser check failed:\n{stdout}\n{stderr}");
    for page in ["login", "overview", "tasks", "task", "arrays", "array", "nodes", "projects", "audit", "whatif"] {
        let shot = screenshots.join(format!("{page}.png"));
        assert!(std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot {}", shot.display());
    }
    // The page never shows a secret's value: it is not in the API's answers.
    let (_, task) = alpha.get(&format!("/v1/tasks/{live}")).await;
    assert!(!task.to_string().contains("s3cret-value"));
}

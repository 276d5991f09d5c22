//! The CLI binary against a real server: output, JSON, exit codes, errors.

mod common;

use common::{Server, BIN};
use std::process::Command;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_wait_streams_output_and_exits_with_the_task_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ok = server.cli(&["run", "--wait", "busybox", "--", "echo", "hello world"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "hello world\n");
    let failed = server.cli(&["run", "--wait", "busybox", "--", "sh", "-c", "echo bye; exit 3"]);
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(stdout(&failed), "bye\n");
    let timed_out = server.cli(&["run", "--wait", "--timeout", "1s", "busybox", "--", "sleep", "30"]);
    assert_eq!(timed_out.status.code(), Some(124));
    assert!(stderr(&timed_out).contains("timed_out"));
}

#[test]
fn json_output_ps_inspect_logs_wait_cancel_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = server.cli(&["run", "--json", "-l", "team=blue", "-e", "NAME=shepherd", "--cpu", "250", "--memory", "64",
        "--priority", "5", "--retries", "2", "busybox", "--", "sh", "-c", "echo hi $NAME"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let task: serde_json::Value = serde_json::from_str(&stdout(&created)).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["state"], "queued");
    assert_eq!(task["resources"]["cpu_millicores"], 250);
    assert_eq!(task["retry"]["max_attempts"], 3);

    let waited = server.cli(&["wait", &id]);
    assert_eq!(waited.status.code(), Some(0));
    assert!(stdout(&waited).contains("succeeded"));
    let logs = server.cli(&["logs", &id]);
    assert_eq!(stdout(&logs), "hi shepherd\n");
    let followed = server.cli(&["logs", "-f", &id]);
    assert_eq!(stdout(&followed), "hi shepherd\n");

    let inspected: serde_json::Value = serde_json::from_str(&stdout(&server.cli(&["inspect", "--json", &id]))).unwrap();
    assert_eq!((inspected["id"].as_str(), inspected["state"].as_str()), (Some(id.as_str()), Some("succeeded")));
    let human = stdout(&server.cli(&["inspect", &id]));
    assert!(human.contains("State:       succeeded") && human.contains("ATTEMPT"), "{human}");

    let listed: serde_json::Value = serde_json::from_str(&stdout(&server.cli(&["ps", "--json", "-l", "team=blue"]))).unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["tasks"][0]["id"], id.as_str());
    let table = stdout(&server.cli(&["ps", "--state", "succeeded"]));
    assert!(table.starts_with("ID ") && table.contains(&id), "{table}");

    let long = stdout(&server.cli(&["run", "busybox", "--", "sleep", "30"]));
    let long = long.trim();
    let cancelled = server.cli(&["cancel", long]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    let waited = server.cli(&["wait", long]);
    assert_eq!(waited.status.code(), Some(130));

    let nodes: serde_json::Value = serde_json::from_str(&stdout(&server.cli(&["nodes", "--json"]))).unwrap();
    assert_eq!(nodes["nodes"][0]["state"], "ready");
    assert_eq!(nodes["nodes"][0]["driver"], "process");
}

#[test]
fn payload_from_a_file_and_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("input.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let out = server.cli(&["run", "--wait", "--payload", file.to_str().unwrap(), "busybox", "--", "sh", "-c", "cat $SHEPHERD_PAYLOAD_FILE"]);
    assert_eq!(stdout(&out), "from a file");
    let mut child = Command::new(BIN)
        .args(["run", "--wait", "--payload", "-", "busybox", "--", "sh", "-c", "cat $SHEPHERD_PAYLOAD_FILE"])
        .env("SHEPHERD_SERVER", &server.url)
        .env("SHEPHERD_TOKEN", common::ADMIN_TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "from stdin");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let bad = server.cli(&["run", "--constraint", "region=eu", "busybox", "--", "true"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("constraints[0]"), "{}", stderr(&bad));
    let bad = server.cli(&["run", "--timeout", "0", "busybox", "--", "true"]);
    assert!(stderr(&bad).contains("timeout_seconds"), "{}", stderr(&bad));
    let missing = server.cli(&["inspect", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no task with id"), "{}", stderr(&missing));
    let usage = server.cli(&["run", "--timeout", "soon", "busybox"]);
    assert_eq!(usage.status.code(), Some(2));
    let nowhere = Command::new(BIN).args(["ps"]).env("SHEPHERD_SERVER", "http://127.0.0.1:9").env("SHEPHERD_TOKEN", "x").output().unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(stderr(&nowhere).contains("cannot reach the Shepherd server"), "{}", stderr(&nowhere));
}

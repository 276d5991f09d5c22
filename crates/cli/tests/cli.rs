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
    let created = server.cli(&[
        "run",
        "--json",
        "-l",
        "team=blue",
        "-e",
        "NAME=shepherd",
        "--cpu",
        "250",
        "--memory",
        "64",
        "--priority",
        "5",
        "--retries",
        "2",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo hi $NAME",
    ]);
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
    let out =
        server.cli(&["run", "--wait", "--payload", file.to_str().unwrap(), "busybox", "--", "sh", "-c", "cat $SHEPHERD_PAYLOAD_FILE"]);
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
    // Said in the terms of the flags, not the API's fields.
    assert!(stderr(&bad).contains("--constraint: "), "{}", stderr(&bad));
    let bad = server.cli(&["run", "--timeout", "0", "busybox", "--", "true"]);
    assert!(stderr(&bad).contains("--timeout: must be between 1 and"), "{}", stderr(&bad));
    let bad = server.cli(&["run", "--retries", "100", "busybox", "--", "true"]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses it: {}", stderr(&bad));
    assert!(stderr(&bad).contains("0..=99"), "{}", stderr(&bad));
    // `run --wait` and `wait` keep their own failures (125) apart from a task's codes.
    let refused = server.cli(&["run", "--wait", "--cpu", "5", "busybox", "--", "true"]);
    assert_eq!(refused.status.code(), Some(125), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--cpu: must be between 10 and"), "{}", stderr(&refused));
    let gone = server.cli(&["wait", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(gone.status.code(), Some(125), "{}", stderr(&gone));
    let missing = server.cli(&["inspect", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no task with id"), "{}", stderr(&missing));
    let usage = server.cli(&["run", "--timeout", "soon", "busybox"]);
    assert_eq!(usage.status.code(), Some(2));
    let nowhere = Command::new(BIN).args(["ps"]).env("SHEPHERD_SERVER", "http://127.0.0.1:9").env("SHEPHERD_TOKEN", "x").output().unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(stderr(&nowhere).contains("cannot reach the Shepherd server"), "{}", stderr(&nowhere));
    // No doubled causes in a chain of errors.
    let taken = Command::new(BIN)
        .args(["up", "--driver", "process", "--listen", server.url.trim_start_matches("http://"), "--data-dir"])
        .arg(dir.path().join("other"))
        .env("SHEPHERD_CONFIG", dir.path().join("other.toml"))
        .output()
        .unwrap();
    assert!(!taken.status.success());
    let said = stderr(&taken);
    assert_eq!(said.matches("Address already in use").count(), 1, "{said}");
}

/// Output to a closed pipe (`shepherd ps -a | head -2`) ends quietly.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let tasks: Vec<_> = (0..3000).map(|_| serde_json::json!({"image": "busybox", "command": ["true"]})).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = runtime.block_on(server.http().post("/v1/tasks/batch", &serde_json::json!({ "tasks": tasks })));
    assert_eq!(status, 201);
    let out = Command::new("bash")
        .args(["-c", &format!("'{BIN}' ps -a -n 1000 | head -2")])
        .env("SHEPHERD_SERVER", &server.url)
        .env("SHEPHERD_TOKEN", common::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(!stderr(&out).contains("panicked") && !stderr(&out).contains("Broken pipe"), "{}", stderr(&out));
}

/// `wait` and `logs -f` ride out a server restart, and the logs of a task
/// run twice keep its attempts apart.
#[test]
fn wait_and_follow_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let mut server = Server::start_on(&data, &listen, &[]);
    let created = server.cli(&["run", "busybox", "--", "sh", "-c", "echo one; sleep 3; echo two"]);
    let id = stdout(&created).trim().to_string();
    let env = |c: &mut Command| {
        c.env("SHEPHERD_SERVER", &server.url)
            .env("SHEPHERD_TOKEN", common::ADMIN_TOKEN)
            .env("SHEPHERD_CONFIG", dir.path().join("none.toml"));
    };
    let mut wait = Command::new(BIN);
    wait.args(["wait", &id]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    env(&mut wait);
    let wait = wait.spawn().unwrap();
    let mut follow = Command::new(BIN);
    follow.args(["logs", "-f", &id]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    env(&mut follow);
    let follow = follow.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // A clean stop interrupts the process-driver task; it runs again after the restart.
    server.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _server = Server::start_on(&data, &listen, &[]);
    let waited = wait.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert!(stderr(&waited).contains("reconnecting"), "{}", stderr(&waited));
    let followed = follow.wait_with_output().unwrap();
    assert_eq!(stdout(&followed), "one\n--- shepherd: attempt 2 ---\none\ntwo\n", "{}", stderr(&followed));
}

/// A second `up` on another data dir keeps the first cluster's CLI config
/// (its default token was shown once) and writes its own beside it.
#[test]
fn a_second_cluster_never_overwrites_the_first_one_s_cli_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let env = [("SHEPHERD_CONFIG", config.to_str().unwrap())];
    let first = Server::start_env(&dir.path().join("one"), "127.0.0.1:0", &[], &env);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains(&first.url), "{written}");
    let second = Server::start_env(&dir.path().join("two"), "127.0.0.1:0", &[], &env);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written, "the first cluster's config is kept");
    let said = second.printed();
    let beside = said
        .split("export SHEPHERD_CONFIG=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("where is the second config? {said}"))
        .to_string();
    assert!(std::fs::read_to_string(&beside).unwrap().contains(&second.url));
    // Each config works for its own cluster.
    for (path, server) in [(config.to_str().unwrap(), &first), (beside.as_str(), &second)] {
        let out = Command::new(BIN).args(["ps"]).env("SHEPHERD_CONFIG", path).env_remove("SHEPHERD_TOKEN").output().unwrap();
        assert!(out.status.success(), "{} for {}: {}", path, server.url, stderr(&out));
    }
    // A restart of the first cluster writes nothing (its tokens exist already).
    drop(first);
    let _again = Server::start_env(&dir.path().join("one"), "127.0.0.1:0", &[], &env);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
}

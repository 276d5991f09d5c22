//! `shepherd up --store postgres://…`: the whole server on PostgreSQL, a task
//! run through the CLI, and nothing lost across a restart.

mod common;

use common::Server;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_runs_tasks_and_keeps_them_across_a_restart() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--store", &url]);
    let run = server.cli(&["run", "--wait", "busybox", "--", "sh", "-c", "echo from postgres; exit 4"]);
    assert_eq!(run.status.code(), Some(4), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "from postgres\n");
    let queued = server.cli(&["run", "--constraint", "node.labels.region==mars", "busybox", "--", "true"]);
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_string();
    server.stop();
    // The SQLite file is not where the state is.
    assert!(!data.join("shepherd.db").exists());
    let server = Server::start(&data, &["--store", &url]);
    let http = server.http();
    let (status, task) = http.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "queued");
    let (_, list) = http.get("/v1/tasks?state=failed").await;
    assert_eq!(list["tasks"][0]["exit_code"], 4, "{list}");
    let (_, audit) = http.get("/v1/audit?project=default").await;
    assert!(audit["entries"].as_array().unwrap().len() >= 3, "{audit}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn a_wrong_store_url_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--driver", "process", "--listen", "127.0.0.1:0", "--store", "mysql://x", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use `sqlite` or a PostgreSQL URL"));
    let out = std::process::Command::new(common::BIN)
        .args([
            "up",
            "--driver",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres://shepherd:hunter2@127.0.0.1:1/x",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("SHEPHERD_CONFIG", dir.path().join("cli.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL at postgres://shepherd:***@127.0.0.1:1/x"), "{stderr}");
    assert!(!stderr.contains("hunter2"));
}

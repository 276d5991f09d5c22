//! Defects found by attacking Shepherd as a new user would (issue 10),
//! each with the test that failed before its fix: load must not make a
//! live node look dead, files stay private, one process per data dir.

mod common;

use common::Server;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// 5,000 tasks started at once on one all-in-one node: before, the local
/// node's heartbeat queued behind the store's writes, the node was declared
/// down and every task recorded lost while its process kept running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_tasks_started_at_once_on_one_node_all_succeed_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-tasks", "20000", "--cpu", "1000000", "--memory", "1000000", "--node-timeout", "2s"],
    );
    let http = server.http();
    let task = json!({"image": "busybox", "command": ["sleep", "4"], "resources": {"cpu_millicores": 10, "memory_mib": 4}});
    let mut ids = Vec::new();
    for _ in 0..5 {
        let tasks: Vec<_> = (0..1000).map(|_| task.clone()).collect();
        let (status, body) = http.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
        assert_eq!(status, 201, "{body}");
        ids.extend(body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (_, health) = http.get("/v1/health").await;
        let counts = &health["tasks"];
        let done = counts["succeeded"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0);
        if done == 5000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not done in time: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, health) = http.get("/v1/health").await;
    assert_eq!(health["tasks"]["succeeded"], 5000, "{health}");
    let (_, nodes) = http.get("/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["state"], "ready", "{nodes}");
    for id in ids.iter().step_by(97) {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "one attempt, never lost: {task}");
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// As another user of the host, nothing of Shepherd's state can be read:
/// not the database (secret values live there) nor an attempt's secret file.
#[tokio::test]
async fn another_local_user_reads_no_secret_from_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    // The data dir's parent is open to everyone, as a home directory often is.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let http = server.http();
    let (status, _) =
        http.send(reqwest::Method::PUT, "/v1/projects/default/secrets/db-password", &json!({ "value": "hunter2-local" })).await;
    assert_eq!(status, 204);
    let mut task = common::sh("sleep 30");
    task["secrets"] = json!([{"name": "db-password"}]);
    let (_, created) = http.post("/v1/tasks", &task).await;
    let id = created["id"].as_str().unwrap().to_string();
    common::wait_running(&http, &id).await;

    assert_eq!(mode(&data), 0o700, "data dir");
    for file in ["shepherd.db", "shepherd.db-wal", "shepherd.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let attempts = data.join("attempts");
    assert_eq!(mode(&attempts), 0o700, "attempts dir");
    let secret = attempts.join(format!("{id}-1")).join("secrets/db-password");
    assert_eq!(std::fs::read(&secret).unwrap(), b"hunter2-local", "the agent itself wrote it");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot act as another user; the modes above were checked");
        return;
    }
    for path in [data.join("shepherd.db"), data.join("shepherd.db-wal"), secret.clone(), data.join("admin-token")] {
        let read = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&path)
            .output()
            .expect("setpriv");
        assert!(!read.status.success(), "nobody read {}", path.display());
        assert!(!String::from_utf8_lossy(&read.stdout).contains("hunter2"), "nobody saw the secret in {}", path.display());
    }
    http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
}

/// A second `shepherd up` on a data dir in use refuses, naming the first.
#[tokio::test]
async fn a_second_process_on_a_data_dir_in_use_is_refused_with_the_first_one_s_pid() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = Server::start(&data, &[]);
    let second = std::process::Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--driver", "process", "--data-dir"])
        .arg(&data)
        .env("SHEPHERD_CONFIG", dir.path().join("cli.toml"))
        .output()
        .expect("run shepherd up");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("is in use by another shepherd process (pid "), "{stderr}");
    let agent = std::process::Command::new(common::BIN)
        .args(["agent", "--join", "http://127.0.0.1:1", "--join-token", "x", "--driver", "process", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run shepherd agent");
    assert!(!agent.status.success());
    assert!(String::from_utf8_lossy(&agent.stderr).contains("is in use by another shepherd process"));
}

fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit))?;
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    Ok(all)
}

/// Clients that open a connection and never finish their headers are cut
/// off after the header timeout and never starve an ordinary request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off_and_never_starve_an_ordinary_request() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--header-timeout", "2s"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.push(stream);
    }
    let started = std::time::Instant::now();
    let (status, _) = server.http().get("/v1/health").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "an ordinary request waited {:?}", started.elapsed());
    // Each slow client is closed by the server once its headers are overdue.
    for stream in slow.iter_mut().step_by(50) {
        let answer = read_until_closed(stream, Duration::from_secs(10)).expect("the server closes the connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let (status, _) = server.http().get("/v1/health").await;
    assert_eq!(status, 200, "still serving");

    // The header timeout runs from a request's first byte: a kept-alive
    // connection quiet for longer than it (but not the idle timeout) still
    // serves its next request.
    let mut keep = std::net::TcpStream::connect(&addr).unwrap();
    for round in 0..2 {
        keep.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let answer = read_response(&mut keep);
        assert!(answer.starts_with("HTTP/1.1 200"), "round {round}: {answer}");
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

/// One HTTP/1.1 response with a content-length, read whole.
fn read_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).to_string()
}

/// Past `--max-connections`, a new connection waits until one closes (the
/// header timeout frees idle ones); a quiet keep-alive connection is
/// closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_clients_until_a_slot_frees_and_idle_connections_close() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-connections", "8", "--header-timeout", "2s", "--idle-timeout", "1s"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut held: Vec<_> = (0..8).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let http = server.http();
    let request = tokio::spawn(async move { http.get("/v1/health").await.0 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "the ninth connection waits while eight are held");
    let status = tokio::time::timeout(Duration::from_secs(15), request).await.expect("served once slots free").unwrap();
    assert_eq!(status, 200);
    for stream in held.iter_mut() {
        read_until_closed(stream, Duration::from_secs(10)).expect("idle connection closed by the header timeout");
    }
    // A keep-alive connection that finished a request and then sits idle is closed.
    let mut keep = std::net::TcpStream::connect(&addr).unwrap();
    keep.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut keep, Duration::from_secs(10)).expect("closed after the idle timeout");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

/// The bad inputs of issue 10: each answered 400 (or 403) naming the field,
/// and the server keeps serving.
#[tokio::test]
async fn bad_inputs_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    let field_of = |body: &serde_json::Value| body["error"]["field"].as_str().unwrap_or_default().to_string();

    let mut tiny = common::sh("true");
    tiny["resources"] = json!({"cpu_millicores": 5});
    let (status, body) = http.post("/v1/tasks", &tiny).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "resources.cpu_millicores"), "{body}");
    for image in ["busybox:", "BUSYBOX", "a@sha256:zz", "../../etc", "-rm", "büsybox", "busy\u{0}box"] {
        let (status, body) = http.post("/v1/tasks", &json!({"image": image})).await;
        assert_eq!((status, field_of(&body).as_str()), (400, "image"), "{image:?}: {body}");
    }
    let (status, body) = http.post("/v1/tasks", &json!({"image": "busybox", "command": ["echo", "a\u{0}b"]})).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "command[1]"), "{body}");
    let (status, body) = http.post("/v1/tasks", &json!({"image": "busybox", "env": {"X": "a\u{0}b"}})).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "env"), "{body}");
    let (status, body) = http.post("/v1/tasks", &json!(["busybox", ["true"]])).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "body"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("struct") && !message.contains("serde"), "{message}");
    let (status, body) = http.post("/v1/tasks", &json!({"image": "busybox", "resources": [100, 64]})).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "resources"), "{body}");
    let long = format!("node.labels.zone=={}", "z".repeat(5000));
    let (status, body) = http.post("/v1/tasks", &json!({"image": "busybox", "constraints": [long]})).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "constraints[0]"), "{body}");
    assert!(body.to_string().len() < 1000, "the constraint is not echoed whole");
    let (status, body) = http.post("/v1/projects", &json!({"name": "limited", "limits": {"requests_per_second": 0}})).await;
    assert_eq!((status, field_of(&body).as_str()), (400, "limits.requests_per_second"), "{body}");

    // A project token may submit only to its own project, `default` included.
    let (status, created) = http.post("/v1/projects", &json!({"name": "acme"})).await;
    assert_eq!(status, 201, "{created}");
    let acme = server.http_as(created["token"]["token"].as_str());
    for other in ["default", "globex"] {
        let (status, body) = acme.post("/v1/tasks", &json!({"image": "busybox", "project": other})).await;
        assert_eq!((status, field_of(&body).as_str()), (403, "project"), "{other}: {body}");
    }
    let (status, body) = acme.post("/v1/tasks", &json!({"image": "busybox"})).await;
    assert_eq!((status, body["project"].as_str()), (201, Some("acme")), "{body}");
    let (status, body) = acme.post("/v1/tasks", &json!({"image": "busybox", "project": "acme"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = http.get("/v1/health").await;
    assert_eq!(status, 200);
}

/// A project's audit cursor counts its own entries only: no gaps that
/// would reveal how busy other tenants are.
#[tokio::test]
async fn a_project_s_audit_sequence_has_no_gaps_from_other_projects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent"]);
    let admin = server.http();
    let mut tokens = Vec::new();
    for name in ["quiet", "busy"] {
        let (status, created) = admin.post("/v1/projects", &json!({"name": name})).await;
        assert_eq!(status, 201);
        tokens.push(created["token"]["token"].as_str().unwrap().to_string());
    }
    let quiet = server.http_as(Some(&tokens[0]));
    let busy = server.http_as(Some(&tokens[1]));
    for round in 0..3 {
        quiet.post("/v1/tasks", &json!({"image": "busybox"})).await;
        for _ in 0..(5 + round) {
            busy.post("/v1/tasks", &json!({"image": "busybox"})).await;
        }
    }
    let (status, log) = quiet.get("/v1/audit").await;
    assert_eq!(status, 200);
    let seqs: Vec<i64> = log["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    // project.create and token.create (by the admin), then three task creates: 5..1, newest first.
    assert_eq!(seqs, vec![5, 4, 3, 2, 1], "{log}");
    let (_, page) = quiet.get("/v1/audit?limit=2&cursor=4").await;
    let seqs: Vec<i64> = page["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 2]);
}

/// Papercuts: a task waiting to retry says which attempt comes next and
/// when; `project limits` changes only what it is given; `run --wait` says
/// why its task waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_say_why_and_limits_change_only_what_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--node-label", "region=eu"]);
    let http = server.http();
    let mut flaky = common::sh("exit 1");
    flaky["retry"] = json!({"max_attempts": 3, "backoff_seconds": 60});
    let (_, created) = http.post("/v1/tasks", &flaky).await;
    let id = created["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let task = loop {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        if task["retry_at"].is_string() {
            break task;
        }
        assert!(std::time::Instant::now() < deadline, "never waited to retry: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = task["reason"].as_str().unwrap();
    assert!(reason.starts_with("exited with code 1; attempt 2 of 3 at "), "{reason}");
    assert!(reason.ends_with(task["retry_at"].as_str().unwrap()), "{reason}");

    let (status, _) = http.post("/v1/projects", &json!({"name": "limited", "limits": {"max_queued": 10, "max_running": 2}})).await;
    assert_eq!(status, 201);
    let out = server.cli(&["project", "limits", "limited", "--max-running", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, project) = http.get("/v1/projects/limited").await;
    assert_eq!(project["limits"], json!({"max_queued": 10, "max_running": 5}), "{project}");
    let out = server.cli(&["project", "limits", "limited", "--clear", "max-queued"]);
    assert!(out.status.success());
    let (_, project) = http.get("/v1/projects/limited").await;
    assert_eq!(project["limits"], json!({"max_running": 5}), "{project}");

    // run --wait on a task that cannot be placed says why, then ends with it.
    let mut waiting = std::process::Command::new(common::BIN)
        .args(["run", "--wait", "--constraint", "node.labels.region==mars", "busybox", "--", "true"])
        .env("SHEPHERD_SERVER", &server.url)
        .env("SHEPHERD_TOKEN", common::ADMIN_TOKEN)
        .env("SHEPHERD_CONFIG", dir.path().join("none.toml"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = waiting.stderr.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let line = said.recv_timeout(Duration::from_secs(30)).expect("run --wait said nothing");
    assert!(line.contains("waits: no node can ever run this task"), "{line}");
    assert!(line.contains("constraint node.labels.region==mars"), "{line}");
    let waiting_id = line.split_whitespace().nth(2).unwrap().to_string();
    http.post(&format!("/v1/tasks/{waiting_id}/cancel"), &json!({})).await;
    let status = waiting.wait().unwrap();
    assert_eq!(status.code(), Some(130));
}

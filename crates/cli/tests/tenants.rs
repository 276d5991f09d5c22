//! Tenants: every endpoint with another project's token, revoked tokens,
//! quotas and rate limits, secrets kept out of the API, the CLI and the
//! server's own log, the audit log, and the CLI config `shepherd up` writes.

mod common;

use common::{sh, Http, Server, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Creates a project with limits; returns its first token.
async fn project(admin: &Http, name: &str, limits: Value) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name, "limits": limits })).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["project"]["name"], name);
    let token = created["token"]["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("shp_"));
    token
}

async fn request(http: &Http, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    match body {
        Some(body) => http.send(method, path, &body).await,
        None => http.send_raw(method, path, Vec::new()).await,
    }
}

#[tokio::test]
async fn a_project_sees_only_its_own_things_and_needs_a_live_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "8"]);
    let admin = server.http();
    let a = server.http_as(Some(&project(&admin, "alpha", json!({})).await));
    let b = server.http_as(Some(&project(&admin, "beta", json!({})).await));

    // Alpha's things: a running task, a finished one, a secret, a second token.
    let (status, running) = a.post("/v1/tasks", &sh("sleep 30")).await;
    assert_eq!(status, 201, "{running}");
    assert_eq!(running["project"], "alpha", "a project token's task lands in its project");
    let (_, done) = a.post("/v1/tasks", &sh("echo alpha-output")).await;
    let (running, done) = (running["id"].as_str().unwrap().to_string(), done["id"].as_str().unwrap().to_string());
    a.wait_terminal(&done, Duration::from_secs(30)).await;
    let (status, _) = a.send(Method::PUT, "/v1/projects/alpha/secrets/key", &json!({ "value": "v" })).await;
    assert_eq!(status, 204);
    let (status, second) = admin.post("/v1/projects/alpha/tokens", &json!({ "name": "ci" })).await;
    assert_eq!(status, 201);
    let second_id = second["id"].as_str().unwrap().to_string();

    // Beta tries every endpoint on alpha's things: a missing thing's answer, or forbidden.
    let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let matrix: Vec<(&str, String, Option<Value>, u16)> = vec![
        ("GET", format!("/v1/tasks/{running}"), None, 404),
        ("GET", format!("/v1/tasks/{done}"), None, 404),
        ("POST", format!("/v1/tasks/{running}/cancel"), Some(json!({})), 404),
        ("GET", format!("/v1/tasks/{done}/wait?timeout_seconds=1"), None, 404),
        ("GET", format!("/v1/tasks/{done}/logs"), None, 404),
        ("GET", "/v1/tasks?project=alpha".into(), None, 403),
        ("POST", "/v1/tasks".into(), Some(json!({ "image": "busybox", "project": "alpha" })), 403),
        ("POST", "/v1/tasks/batch".into(), Some(json!({ "tasks": [{ "image": "busybox", "project": "alpha" }] })), 403),
        ("GET", "/v1/projects/alpha".into(), None, 404),
        ("PATCH", "/v1/projects/alpha".into(), Some(json!({ "limits": {} })), 404),
        ("GET", "/v1/projects/alpha/tokens".into(), None, 404),
        ("POST", "/v1/projects/alpha/tokens".into(), Some(json!({})), 404),
        ("DELETE", format!("/v1/projects/alpha/tokens/{second_id}"), None, 404),
        ("GET", "/v1/projects/alpha/secrets".into(), None, 404),
        ("PUT", "/v1/projects/alpha/secrets/key".into(), Some(json!({ "value": "x" })), 404),
        ("DELETE", "/v1/projects/alpha/secrets/key".into(), None, 404),
        ("GET", "/v1/audit?project=alpha".into(), None, 403),
        ("GET", "/v1/nodes".into(), None, 403),
        ("POST", "/v1/nodes/any/drain".into(), Some(json!({})), 403),
        ("POST", "/v1/projects".into(), Some(json!({ "name": "gamma" })), 403),
        ("PATCH", "/v1/projects/beta".into(), Some(json!({ "limits": {} })), 403),
        ("POST", "/v1/projects/beta/tokens".into(), Some(json!({})), 403),
    ];
    for (method, path, body, expected) in &matrix {
        let (status, answer) = request(&b, method, path, body.clone()).await;
        assert_eq!(status, *expected, "{method} {path} with beta's token: {answer}");
        assert!(answer["error"]["code"].is_string(), "{method} {path}: {answer}");
    }
    // Someone else's task answers exactly as a missing one does.
    let (_, theirs) = b.get(&format!("/v1/tasks/{running}")).await;
    let (_, nothing) = b.get(&format!("/v1/tasks/{missing}")).await;
    assert_eq!(theirs["error"]["code"], nothing["error"]["code"]);
    assert_eq!(
        theirs["error"]["message"].as_str().unwrap().replace(&running, "ID"),
        nothing["error"]["message"].as_str().unwrap().replace(missing, "ID")
    );
    // Lists and counts show beta nothing of alpha.
    let (_, list) = b.get("/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 0, "{list}");
    let (_, projects) = b.get("/v1/projects").await;
    assert_eq!(projects["projects"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect::<Vec<_>>(), vec![json!("beta")]);
    let (_, health) = b.get("/v1/health").await;
    assert_eq!(health["tasks"], json!({}), "beta's counts: {health}");
    let (_, health) = a.get("/v1/health").await;
    assert_eq!(health["tasks"]["succeeded"], 1, "{health}");
    // The task is untouched by beta's attempts.
    let (_, task) = a.get(&format!("/v1/tasks/{running}")).await;
    assert!(!task["cancel_requested"].as_bool().unwrap(), "{task}");
    // Alpha can do all of it to its own things.
    let (status, _) = a.get(&format!("/v1/tasks/{done}/logs")).await;
    assert_eq!(status, 200);
    let (status, _) = a.post(&format!("/v1/tasks/{running}/cancel"), &json!({})).await;
    assert_eq!(status, 200);

    // No token, a made-up token, a revoked token: 401 everywhere but health.
    let anonymous = server.http_as(None);
    let forged = server.http_as(Some("shp_0000000000000000000000000000000000000000000000000000000000000000"));
    for (method, path, body, _) in &matrix {
        for (who, http) in [("no token", &anonymous), ("forged token", &forged)] {
            let (status, answer) = request(http, method, path, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {who}: {answer}");
        }
    }
    let (status, health) = anonymous.get("/v1/health").await;
    assert_eq!(status, 200);
    assert!(health.get("tasks").is_none(), "no counts without a token: {health}");
    let ci = server.http_as(Some(second["token"].as_str().unwrap()));
    let (status, _) = ci.get("/v1/tasks").await;
    assert_eq!(status, 200);
    let (status, _) = a.delete(&format!("/v1/projects/alpha/tokens/{second_id}")).await;
    assert_eq!(status, 204);
    let (status, answer) = ci.get("/v1/tasks").await;
    assert_eq!(status, 401, "a revoked token is refused at once: {answer}");
    let (_, tokens) = admin.get("/v1/projects/alpha/tokens").await;
    assert!(!tokens.to_string().contains(second["token"].as_str().unwrap()), "token lists never show tokens: {tokens}");

    // The admin sees everything; the audit log names who did what.
    let (_, all) = admin.get("/v1/tasks").await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);
    let (_, audit) = admin.get("/v1/audit?project=alpha").await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["actor"].as_str().unwrap().to_string()))
        .collect();
    for expected in ["project.create", "token.create", "task.create", "task.cancel", "secret.set", "token.revoke"] {
        assert!(actions.iter().any(|(a, _)| a == expected), "audit lacks {expected}: {actions:?}");
    }
    assert!(actions.iter().any(|(a, who)| a == "task.create" && who.starts_with("token:tok_")), "{actions:?}");
    assert!(actions.iter().any(|(a, who)| a == "project.create" && who == "admin"), "{actions:?}");
    let (_, own_audit) = b.get("/v1/audit").await;
    assert!(own_audit["entries"].as_array().unwrap().iter().all(|e| e["project"] == "beta"), "{own_audit}");
}

#[tokio::test]
async fn quotas_refuse_or_hold_back_and_rate_limits_answer_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "16", "--cpu", "16000"]);
    let admin = server.http();

    // max_queued: beyond it, 429 naming the quota; nothing half-stored.
    let queued = server.http_as(Some(&project(&admin, "queue", json!({ "max_queued": 3, "max_running": 0 })).await));
    for _ in 0..3 {
        let (status, body) = queued.post("/v1/tasks", &sh("true")).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = queued.post("/v1/tasks", &sh("true")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let (status, _) = queued.post("/v1/tasks/batch", &json!({ "tasks": [sh("true"), sh("true")] })).await;
    assert_eq!(status, 429);
    let (_, list) = queued.get("/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 3);
    // max_running 0: they wait, with the reason.
    let id = list["tasks"][0]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, task) = queued.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "queued");
    assert!(task["reason"].as_str().unwrap_or_default().contains("project quota"), "{task}");

    // max_running 2: never more than two at once, and every task still runs.
    let limited = server.http_as(Some(&project(&admin, "limited", json!({ "max_running": 2 })).await));
    let (_, batch) = limited.post("/v1/tasks/batch", &json!({ "tasks": (0..6).map(|_| sh("sleep 0.5")).collect::<Vec<_>>() })).await;
    let ids: Vec<String> = batch["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    loop {
        let (_, list) = limited.get("/v1/tasks?state=scheduled,running").await;
        most = most.max(list["tasks"].as_array().unwrap().len());
        let (_, done) = limited.get("/v1/tasks?state=succeeded").await;
        if done["tasks"].as_array().unwrap().len() == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the limited project's tasks did not all finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 2, "{most} tasks of a project limited to 2 ran at once");
    assert_eq!(most, 2, "the limit should not starve the project");
    // Raising the limit lets the held-back queue run.
    let (status, _) = admin.send(Method::PATCH, "/v1/projects/queue", &json!({ "limits": { "max_queued": 3 } })).await;
    assert_eq!(status, 200);
    queued.wait_terminal(&id, Duration::from_secs(30)).await;

    // Rate limit: 5 requests per second per token, bursts of 10.
    let token = project(&admin, "chatty", json!({ "requests_per_second": 5 })).await;
    let chatty = server.http_as(Some(&token));
    let mut refused = 0;
    for _ in 0..40 {
        let response = chatty.client.get(format!("{}/v1/tasks", chatty.base)).send().await.unwrap();
        if response.status().as_u16() == 429 {
            assert!(response.headers().get("retry-after").is_some());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 40 back-to-back requests were refused");
    let (status, _) = limited.get("/v1/tasks").await;
    assert_eq!(status, 200, "another project's token is not slowed down");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = chatty.get("/v1/tasks").await;
    assert_eq!(status, 200, "the bucket refills");
}

#[tokio::test]
async fn secrets_reach_the_task_and_nowhere_else() {
    const VALUE: &str = "s3cr3t-VALUE-7f3a9";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_env(&data, "127.0.0.1:0", &[], &[("SHEPHERD_LOG", "debug")]);
    let admin = server.http();
    let token = project(&admin, "vault", json!({})).await;
    let vault = server.http_as(Some(&token));

    // Set through the CLI from standard input, as a user would.
    let mut child = std::process::Command::new(common::BIN)
        .args(["secret", "set", "db"])
        .env("SHEPHERD_SERVER", &server.url)
        .env("SHEPHERD_TOKEN", &token)
        .env("SHEPHERD_CONFIG", dir.path().join("none.toml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(VALUE.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());

    // A task naming a secret the project lacks is refused, naming the field.
    let mut missing = sh("true");
    missing["secrets"] = json!([{ "name": "nope" }]);
    let (status, body) = vault.post("/v1/tasks", &missing).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "secrets[0].name");

    // The task gets it as a file and as an environment variable.
    // (The command must not hold the value: it is part of the task's spec.)
    let check = r#"[ "$DB_PASSWORD" = "$(cat "$SHEPHERD_SECRETS_DIR/db")" ] && echo "$DB_PASSWORD" | tr a-z A-Z"#;
    let mut task = sh(check);
    task["secrets"] = json!([{ "name": "db", "env": "DB_PASSWORD" }]);
    let (status, created) = vault.post("/v1/tasks", &task).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let done = vault.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, logs) = vault.text(&format!("/v1/tasks/{id}/logs")).await;
    assert_eq!(logs, format!("{}\n", VALUE.to_uppercase()), "the task saw the value as a file and as a variable");

    // Never in the API, the CLI, the audit log or the server's own log.
    let mut seen = Vec::new();
    for path in [format!("/v1/tasks/{id}"), "/v1/tasks".into(), "/v1/projects/vault/secrets".into(), "/v1/audit".into()] {
        let (_, body) = vault.text(&path).await;
        seen.push((path, body));
    }
    let (_, admin_view) = admin.text(&format!("/v1/tasks/{id}")).await;
    seen.push(("admin task".into(), admin_view));
    let inspect = server.cli_as(&token, &["inspect", &id]);
    assert!(inspect.status.success());
    let inspect_text = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(inspect_text.contains("Secret:      db (file, and $DB_PASSWORD)"), "{inspect_text}");
    seen.push(("shepherd inspect".into(), inspect_text));
    let json_inspect = server.cli_as(&token, &["inspect", "--json", &id]);
    seen.push(("shepherd inspect --json".into(), String::from_utf8_lossy(&json_inspect.stdout).to_string()));
    let ls = server.cli_as(&token, &["secret", "ls"]);
    let ls_text = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(ls_text.contains("db"), "{ls_text}");
    seen.push(("shepherd secret ls".into(), ls_text));
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("assigning") && log.contains(&id), "the server logged the launch at debug level");
    seen.push(("server log".into(), log));
    for (place, text) in seen {
        assert!(!text.contains(VALUE), "the secret's value shows in {place}");
    }
}

#[tokio::test]
async fn up_writes_a_cli_config_that_the_cli_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = data.with_extension("cli.toml");
    let server = Server::start(&data, &[]);
    let text = std::fs::read_to_string(&config).expect("shepherd up wrote the CLI config");
    assert!(text.contains(&server.url) && text.contains("token = \"shp_"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(text.contains(&format!("admin_token = \"{ADMIN_TOKEN}\"")), "{text}");
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .env("SHEPHERD_CONFIG", &config)
            .env_remove("SHEPHERD_SERVER")
            .env_remove("SHEPHERD_TOKEN")
            .output()
            .unwrap()
    };
    let run = cli(&["run", "--wait", "busybox", "--", "echo", "hello from the config"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from the config\n");
    let nodes = cli(&["nodes"]);
    assert!(nodes.status.success(), "admin commands use the config's admin token: {}", String::from_utf8_lossy(&nodes.stderr));
    let ps = cli(&["ps", "--json"]);
    let listed: Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(listed["tasks"][0]["project"], "default");
    // Without any token the CLI says what to do.
    let bare = std::process::Command::new(common::BIN)
        .args(["ps"])
        .env("SHEPHERD_SERVER", &server.url)
        .env("SHEPHERD_CONFIG", dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("SHEPHERD_TOKEN"), "{}", String::from_utf8_lossy(&bare.stderr));
}

#[tokio::test]
async fn a_client_trickling_its_body_is_cut_off_and_big_bodies_are_refused() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--no-agent", "--request-timeout", "1s"]);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"image\""
    );
    slow.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"timeout\"") {
        match slow.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
    // A body announced over the 64 MiB limit is refused before it is read;
    // the server keeps serving.
    let mut big = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{",
        65 * 1024 * 1024
    );
    big.write_all(head.as_bytes()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = big.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let http = server.http();
    let (status, _) = http.post("/v1/tasks", &sh("true")).await;
    assert_eq!(status, 201);
}

//! Tenants on the real Docker Engine: each project's tasks that ask for a
//! network get the project's own bridge network, so a task of one project
//! cannot reach a task of another; secrets arrive as read-only files under
//! /run/secrets, readable by a non-root task user too.

mod common;

use common::{ensure_test_image, run_to_end as output_of, submit, Http, Server, TEST_IMAGE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Removes the test's project networks however the test ends.
struct Networks(Vec<String>);

impl Drop for Networks {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker").args(["network", "rm", name]).output();
        }
    }
}

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

fn bridged(script: &str) -> Value {
    json!({ "image": TEST_IMAGE, "command": ["sh", "-c", script], "network": "bridge", "timeout_seconds": 120 })
}

#[tokio::test]
async fn projects_get_their_own_networks_and_cannot_reach_each_other() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let suffix = format!("{}x{nanos}", std::process::id());
    let (name_a, name_b) = (format!("neta{suffix}"), format!("netb{suffix}"));
    let _cleanup = Networks(vec![format!("shepherd-net-{name_a}"), format!("shepherd-net-{name_b}")]);
    let a = server.http_as(Some(&project(&admin, &name_a).await));
    let b = server.http_as(Some(&project(&admin, &name_b).await));

    // A listener in project a prints its address, then answers `hello`.
    let listener = submit(&a, bridged("ip -4 -o addr show eth0; while true; do echo hello | nc -l -p 8080; done")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        let (_, logs) = a.text(&format!("/v1/tasks/{listener}/logs")).await;
        if let Some(address) = logs.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            break address.split('/').next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the listener never printed its address: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let networks = std::process::Command::new("docker").args(["network", "ls", "--format", "{{.Name}}"]).output().unwrap();
    let networks = String::from_utf8_lossy(&networks.stdout).to_string();
    assert!(networks.contains(&format!("shepherd-net-{name_a}")), "{networks}");

    // Project b's task cannot connect; another task of project a can.
    let probe = format!("nc -w 3 {address} 8080 && echo connected");
    let (task, logs) = output_of(&b, bridged(&probe)).await;
    assert_eq!(task["state"], "failed", "project b reached project a's task: {logs}");
    assert!(!logs.contains("hello"), "{logs}");
    let (task, logs) = output_of(&a, bridged(&probe)).await;
    assert_eq!(task["state"], "succeeded", "{logs}");
    assert!(logs.contains("hello") && logs.contains("connected"), "{logs}");
    // Network `none` stays the default: no interface but loopback.
    let (_, logs) = output_of(&a, json!({ "image": TEST_IMAGE, "command": ["ls", "/sys/class/net"] })).await;
    assert_eq!(logs.trim(), "lo");

    let (status, _) = a.post(&format!("/v1/tasks/{listener}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    a.wait_terminal(&listener, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn secrets_are_read_only_files_in_the_container() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let (status, _) = admin.send(reqwest::Method::PUT, "/v1/projects/default/secrets/api-key", &json!({ "value": "k-123" })).await;
    assert_eq!(status, 204);
    for user in [None, Some("65534")] {
        let mut task = json!({
            "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo $SHEPHERD_SECRETS_DIR; cat /run/secrets/api-key; echo; echo $KEY; (echo x > /run/secrets/api-key) 2>/dev/null || echo read-only"],
            "secrets": [{ "name": "api-key", "env": "KEY" }],
        });
        if let Some(user) = user {
            task["user"] = json!(user);
        }
        let (task, logs) = output_of(&admin, task).await;
        assert_eq!(task["state"], "succeeded", "{logs}");
        // (stderr is silenced: its chunks could land inside a stdout line.)
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines, vec!["/run/secrets", "k-123", "k-123", "read-only"], "as user {user:?}: {logs}");
    }
}

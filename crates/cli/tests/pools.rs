//! Dedicated node pools across real processes: a server and three agents
//! (process driver), two of them dedicated to project `acme` (one in the
//! default pool, one in pool `gold`). No other project's task ever lands on
//! them, even pinned to their pool; acme's tasks may, and pinned ones do.

mod common;

use common::{free_port, Http, Process};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const JOIN: &str = "pool-test-join-token";

async fn project(admin: &Http, name: &str) -> Http {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    Http { base: admin.base.clone(), client: common::client_with(created["token"]["token"].as_str()) }
}

async fn batch(http: &Http, count: usize, pool: Option<&str>) -> Vec<String> {
    let mut task = json!({ "image": "busybox", "command": ["true"] });
    if let Some(pool) = pool {
        task["pool"] = json!(pool);
    }
    let (status, created) = http.post("/v1/tasks/batch", &json!({ "tasks": vec![task; count] })).await;
    assert_eq!(status, 201, "{created}");
    created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// Where each task ran, by the node's `name` label.
async fn placements(http: &Http, ids: &[String], names: &HashMap<String, String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        let task = http.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        let node = task["node_id"].as_str().unwrap();
        *counts.entry(names[node].clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn dedicated_nodes_take_only_their_projects_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let server_data = dir.path().join("server");
    let _server = Process::start(
        &["server", "--listen", &listen, "--data-dir", server_data.to_str().unwrap(), "--join-token", JOIN],
        &dir.path().join("server.log"),
        "shepherd: API listening on ",
    );
    let agents: Vec<(&str, Vec<&str>)> = vec![
        ("dedicated", vec!["--dedicated-to", "acme"]),
        ("shared", vec![]),
        ("gold", vec!["--dedicated-to", "acme", "--node-label", "pool=gold"]),
    ];
    let mut processes = Vec::new();
    for (name, extra) in &agents {
        let data = dir.path().join(name);
        let label = format!("name={name}");
        let mut args = vec![
            "agent",
            "--join",
            &url,
            "--join-token",
            JOIN,
            "--data-dir",
            data.to_str().unwrap(),
            "--driver",
            "process",
            "--node-label",
            &label,
        ];
        args.extend(extra.iter().copied());
        processes.push(Process::start(&args, &dir.path().join(format!("{name}.log")), "shepherd agent: node "));
    }
    let admin = Http { base: url.clone(), client: common::client() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let names: HashMap<String, String> = loop {
        let (_, nodes) = admin.get("/v1/nodes").await;
        let ready: Vec<&Value> = nodes["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "ready").collect();
        if ready.len() == 3 {
            break ready
                .iter()
                .map(|n| (n["id"].as_str().unwrap().to_string(), n["labels"]["name"].as_str().unwrap().to_string()))
                .collect();
        }
        assert!(Instant::now() < deadline, "agents did not join: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let acme = project(&admin, "acme").await;
    let other = project(&admin, "other").await;

    let ids = batch(&other, 60, None).await;
    let ran = placements(&other, &ids, &names).await;
    assert_eq!(ran, HashMap::from([("shared".to_string(), 60)]), "another project's tasks on a dedicated node");

    let ids = batch(&acme, 60, None).await;
    let ran = placements(&acme, &ids, &names).await;
    assert!(ran.get("dedicated").copied().unwrap_or(0) > 0, "acme may use its dedicated node: {ran:?}");
    assert!(!ran.contains_key("gold"), "tasks naming no pool stay out of pool gold: {ran:?}");

    let ids = batch(&acme, 10, Some("gold")).await;
    let ran = placements(&acme, &ids, &names).await;
    assert_eq!(ran, HashMap::from([("gold".to_string(), 10)]));

    // Pinned to a pool dedicated to someone else: waits, saying why.
    let ids = batch(&other, 3, Some("gold")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        let (_, task) = other.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["state"], "queued", "{task}");
        assert!(task["reason"].as_str().unwrap_or_default().contains("dedicated to other projects"), "{task}");
        let (status, _) = other.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, 200);
    }
}

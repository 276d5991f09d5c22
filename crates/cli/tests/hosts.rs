//! Across several hosts: a server and three agents, each a container of the
//! `shepherd` image on a private Docker network; agents drive the host's
//! engine through the mounted socket (docker driver), each labelling its
//! containers with its node id. Scenarios: 2,000 tasks spread over three
//! agents; an agent killed; an agent cut off from the network past the node
//! timeout and reconnected; the server restarted; a node drained. The
//! harness removes every container and the network whether the test passes
//! or fails.

mod common;

use common::{containers_of, ensure_test_image, free_port, Http, BIN, TEST_IMAGE};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "hosts-test-token";
const IMAGE: &str = "shepherd:test";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Hosts {
    tag: String,
    dir: tempfile::TempDir,
    port: u16,
    nodes: Vec<String>,
}

impl Hosts {
    fn net(&self) -> String {
        format!("shepherd-net-{}", self.tag)
    }
    fn server(&self) -> String {
        format!("shepherd-srv-{}", self.tag)
    }
    fn agent(&self, i: usize) -> String {
        format!("shepherd-ag{i}-{}", self.tag)
    }

    fn start() -> Hosts {
        ensure_test_image();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/build-shepherd-image.sh");
        let built = Command::new("bash").args([script, BIN, IMAGE]).status().expect("build image");
        assert!(built.success(), "could not build the shepherd image");
        let hosts =
            Hosts { tag: format!("{}", std::process::id()), dir: tempfile::tempdir().unwrap(), port: free_port(), nodes: Vec::new() };
        docker(&["network", "create", &hosts.net()]);
        hosts.run_server();
        for i in 0..3 {
            hosts.run_agent(i);
        }
        hosts
    }

    fn run_server(&self) {
        let data = self.dir.path().join("server");
        std::fs::create_dir_all(&data).unwrap();
        docker(&[
            "run",
            "-d",
            "--name",
            &self.server(),
            "--network",
            &self.net(),
            "-p",
            &format!("127.0.0.1:{}:7070", self.port),
            "-v",
            &format!("{}:/data", data.display()),
            "-e",
            "SHEPHERD_LOG=info",
            "-e",
            &format!("SHEPHERD_ADMIN_TOKEN={}", common::ADMIN_TOKEN),
            IMAGE,
            "server",
            "--listen",
            "0.0.0.0:7070",
            "--data-dir",
            "/data",
            "--join-token",
            TOKEN,
            "--node-timeout",
            "4s",
        ]);
    }

    fn run_agent(&self, i: usize) {
        // The same path inside and out: the engine resolves payload mounts on the host.
        let data = self.dir.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let data = data.display().to_string();
        docker(&[
            "run",
            "-d",
            "--name",
            &self.agent(i),
            "--network",
            &self.net(),
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &format!("{data}:{data}"),
            "-e",
            "SHEPHERD_LOG=info",
            IMAGE,
            "agent",
            "--join",
            &format!("http://{}:7070", self.server()),
            "--join-token",
            TOKEN,
            "--data-dir",
            &data,
            "--driver",
            "docker",
            "--max-tasks",
            "8",
            "--stop-grace",
            "2s",
            "--node-label",
            &format!("name=ag{i}"),
        ]);
    }

    fn http(&self) -> Http {
        Http { base: format!("http://127.0.0.1:{}", self.port), client: common::client() }
    }

    /// Node ids by agent index, once all three are ready.
    async fn ready_nodes(&mut self) -> Vec<String> {
        let http = self.http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = http.client.get(format!("{}/v1/nodes", http.base)).send().await;
            if let Ok(r) = response {
                let nodes: Value = r.json().await.unwrap_or_default();
                let ready: Vec<&Value> =
                    nodes["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "ready").collect()).unwrap_or_default();
                if ready.len() >= 3 {
                    let mut ids = vec![String::new(); 3];
                    for node in ready {
                        if let Some(i) =
                            node["labels"]["name"].as_str().and_then(|n| n.strip_prefix("ag")).and_then(|i| i.parse::<usize>().ok())
                        {
                            ids[i] = node["id"].as_str().unwrap().to_string();
                        }
                    }
                    self.nodes = ids.clone();
                    return ids;
                }
            }
            assert!(Instant::now() < deadline, "agents did not join; server logs:\n{}", self.logs(&self.server()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self, name: &str) -> String {
        let out = Command::new("docker").args(["logs", "--tail", "60", name]).output().expect("docker logs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let mut names = vec![self.server()];
        names.extend((0..3).map(|i| self.agent(i)));
        for node in &self.nodes {
            names.extend(containers_of(node));
        }
        let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&names).output();
        let _ = Command::new("docker").args(["network", "rm", &self.net()]).output();
    }
}

fn task(command: &str) -> Value {
    json!({"image": TEST_IMAGE, "command": ["sh", "-c", command], "pull_policy": "never",
           "resources": {"cpu_millicores": 10, "memory_mib": 32}, "retry": {"max_attempts": 4, "backoff_seconds": 0}})
}

async fn submit(http: &Http, body: Value, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let (status, created) = http.post("/v1/tasks/batch", &json!({"tasks": vec![body.clone(); chunk.len()]})).await;
        assert_eq!(status, 201, "{created}");
        ids.extend(created["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()));
    }
    ids
}

/// Every task ends once, succeeded, with exactly one successful attempt.
/// Returns successful attempts per node.
async fn exactly_once(http: &Http, ids: &[String], limit: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, health) = http.get("/v1/health").await;
        let active: u64 = ["queued", "scheduled", "running"].iter().map(|s| health["tasks"][s].as_u64().unwrap_or(0)).sum();
        if active == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still active: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut per_node = HashMap::new();
    for id in ids {
        let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(t["state"], "succeeded", "{t}");
        let wins: Vec<&Value> = t["attempts"].as_array().unwrap().iter().filter(|a| a["outcome"] == "succeeded").collect();
        assert_eq!(wins.len(), 1, "{t}");
        *per_node.entry(wins[0]["node_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    per_node
}

/// Until the server answers again (after a restart).
async fn wait_healthy(http: &Http) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.client.get(format!("{}/v1/health", http.base)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_running(http: &Http, ids: &[String], on: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for id in ids {
            let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
            if t["state"] == "running" && t["node_id"] == on {
                running += 1;
            }
        }
        if running >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "no tasks running on {on}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_three_agents_on_a_private_network() {
    let mut hosts = Hosts::start();
    let nodes = hosts.ready_nodes().await;
    let http = hosts.http();

    // 1. 2,000 tasks spread over the three agents.
    let ids = submit(&http, task("true"), 2000).await;
    let per_node = exactly_once(&http, &ids, Duration::from_secs(600)).await;
    for node in &nodes {
        assert!(per_node.get(node).copied().unwrap_or(0) >= 400, "spread: {per_node:?}");
    }

    // 2. An agent killed mid-run: its tasks are retried on the others.
    let ids = submit(&http, task("sleep 3"), 24).await;
    wait_running(&http, &ids, &nodes[1], 1).await;
    docker(&["kill", &hosts.agent(1)]);
    let per_node = exactly_once(&http, &ids, Duration::from_secs(120)).await;
    assert!(per_node.get(&nodes[1]).copied().unwrap_or(0) < 24, "{per_node:?}");

    // 3. An agent cut off from the network past the node timeout, then back.
    let ids = submit(&http, task("sleep 10"), 16).await;
    wait_running(&http, &ids, &nodes[2], 1).await;
    docker(&["network", "disconnect", &hosts.net(), &hosts.agent(2)]);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (_, listed) = http.get("/v1/nodes").await;
    let state = listed["nodes"].as_array().unwrap().iter().find(|n| n["id"] == nodes[2].as_str()).unwrap()["state"].clone();
    assert_eq!(state, "down");
    docker(&["network", "connect", &hosts.net(), &hosts.agent(2)]);
    let per_node = exactly_once(&http, &ids, Duration::from_secs(180)).await;
    assert_eq!(per_node.values().sum::<usize>(), 16);
    // Back and reconciled: none of its old containers survive.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !containers_of(&nodes[2]).is_empty() {
        assert!(Instant::now() < deadline, "cut-off node kept containers: {:?}\n{}", containers_of(&nodes[2]), hosts.logs(&hosts.agent(2)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 4. The server restarted mid-run: nothing lost, nothing run twice.
    let ids = submit(&http, task("sleep 4"), 16).await;
    wait_running(&http, &ids, &nodes[0], 1).await;
    docker(&["kill", &hosts.server()]);
    docker(&["start", &hosts.server()]);
    wait_healthy(&http).await;
    let per_node = exactly_once(&http, &ids, Duration::from_secs(180)).await;
    assert_eq!(per_node.values().sum::<usize>(), 16);
    for id in &ids {
        let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t}");
    }

    // 5. A node drained: no new tasks go there.
    let (status, _) = http.post(&format!("/v1/nodes/{}/drain", nodes[0]), &json!({})).await;
    assert_eq!(status, 200);
    let ids = submit(&http, task("true"), 30).await;
    let per_node = exactly_once(&http, &ids, Duration::from_secs(120)).await;
    assert!(!per_node.contains_key(&nodes[0]), "drained node got tasks: {per_node:?}");
}

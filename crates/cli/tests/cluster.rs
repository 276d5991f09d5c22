//! A server and three agents as separate processes on loopback (process
//! driver): spreading, drain, an agent killed, an agent frozen past the node
//! timeout and back (fencing), and a server restart. Every task must end
//! exactly once, and no task may run to completion twice.

mod common;

use common::{free_port, Http, Process};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-join-token";

struct Cluster {
    dir: tempfile::TempDir,
    listen: String,
    server: Option<Process>,
    agents: Vec<Process>,
}

impl Cluster {
    fn start(agents: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cluster = Cluster { dir, listen, server: None, agents: Vec::new() };
        cluster.start_server();
        for i in 0..agents {
            cluster.start_agent(i);
        }
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_server(&mut self) {
        let data = self.path("server");
        let args =
            ["server", "--listen", &self.listen, "--data-dir", data.to_str().unwrap(), "--join-token", TOKEN, "--node-timeout", "3s"];
        self.server = Some(Process::start(&args, &self.path("server.log"), "shepherd: API listening on "));
    }

    fn start_agent(&mut self, i: usize) {
        let data = self.path(&format!("agent{i}"));
        let url = format!("http://{}", self.listen);
        let args = [
            "agent",
            "--join",
            &url,
            "--join-token",
            TOKEN,
            "--data-dir",
            data.to_str().unwrap(),
            "--driver",
            "process",
            "--max-tasks",
            "6",
            "--stop-grace",
            "1s",
            "--node-label",
            &format!("name=agent{i}"),
        ];
        let agent = Process::start(&args, &self.path(&format!("agent{i}.log")), "shepherd agent: node ");
        if i < self.agents.len() {
            self.agents[i] = agent;
        } else {
            self.agents.push(agent);
        }
    }

    fn http(&self) -> Http {
        Http { base: format!("http://{}", self.listen), client: common::client() }
    }

    fn node_id(&self, i: usize) -> String {
        // "shepherd agent: node node-xxxx joining ..."
        self.agents[i].banner.split_whitespace().nth(3).unwrap().to_string()
    }
}

async fn wait_nodes_ready(http: &Http, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, nodes) = http.get("/v1/nodes").await;
        let ready = nodes["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "ready").count());
        if ready >= count {
            return;
        }
        assert!(Instant::now() < deadline, "nodes not ready: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each task appends a line to its marker file when it completes.
fn marked(script: &str, markers: &Path) -> Value {
    json!({
        "image": "busybox",
        "command": ["sh", "-c", format!("{script}; echo done >> {}/$SHEPHERD_TASK_ID", markers.display())],
        "resources": {"cpu_millicores": 10, "memory_mib": 4},
        "retry": {"max_attempts": 4, "backoff_seconds": 0},
    })
}

async fn submit(http: &Http, body: Value, count: usize) -> Vec<String> {
    let (status, created) = http.post("/v1/tasks/batch", &json!({"tasks": vec![body; count]})).await;
    assert_eq!(status, 201, "{created}");
    created["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
}

/// Waits for every task to end; checks each ended exactly once and ran to
/// completion exactly once. Returns tasks per node of the successful attempt.
async fn finish_exactly_once(http: &Http, ids: &[String], markers: &Path, limit: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + limit;
    let mut per_node = HashMap::new();
    for id in ids {
        let task = loop {
            let (_, task) = http.get(&format!("/v1/tasks/{id}/wait?timeout_seconds=5")).await;
            if ["succeeded", "failed", "timed_out", "cancelled"].contains(&task["state"].as_str().unwrap_or("")) {
                break task;
            }
            assert!(Instant::now() < deadline, "task {id} not done: {task}");
        };
        assert_eq!(task["state"], "succeeded", "{task}");
        let attempts = task["attempts"].as_array().unwrap();
        let successes: Vec<&Value> = attempts.iter().filter(|a| a["outcome"] == "succeeded").collect();
        assert_eq!(successes.len(), 1, "{task}");
        *per_node.entry(successes[0]["node_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        let runs = std::fs::read_to_string(markers.join(id)).unwrap_or_default();
        assert_eq!(runs.lines().count(), 1, "task {id} ran to completion {} times: {task}", runs.lines().count());
    }
    per_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_the_work_and_a_drained_node_gets_none() {
    let cluster = Cluster::start(3);
    let http = cluster.http();
    wait_nodes_ready(&http, 3).await;
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let ids = submit(&http, marked("true", &markers), 300).await;
    let per_node = finish_exactly_once(&http, &ids, &markers, Duration::from_secs(120)).await;
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n >= 50), "spread profile should share the work: {per_node:?}");

    let drained = cluster.node_id(0);
    let out = std::process::Command::new(common::BIN)
        .args(["node", "drain", &drained])
        .env("SHEPHERD_SERVER", &http.base)
        .env("SHEPHERD_TOKEN", common::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids = submit(&http, marked("true", &markers), 60).await;
    let per_node = finish_exactly_once(&http, &ids, &markers, Duration::from_secs(60)).await;
    assert!(!per_node.contains_key(&drained), "a drained node got tasks: {per_node:?}");
    let (_, nodes) = http.get("/v1/nodes").await;
    let state = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == drained.as_str()).unwrap()["state"].clone();
    assert_eq!(state, "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_tasks_are_retried_on_the_others() {
    let mut cluster = Cluster::start(3);
    let http = cluster.http();
    wait_nodes_ready(&http, 3).await;
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let ids = submit(&http, marked("sleep 2", &markers), 18).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = cluster.node_id(1);
    cluster.agents[1].kill();
    let per_node = finish_exactly_once(&http, &ids, &markers, Duration::from_secs(90)).await;
    assert!(!per_node.contains_key(&victim) || per_node[&victim] == 0, "{per_node:?}");
    let (_, nodes) = http.get("/v1/nodes").await;
    let state = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == victim.as_str()).unwrap()["state"].clone();
    assert_eq!(state, "down");
    let mut lost = 0;
    for id in &ids {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        lost += task["attempts"].as_array().unwrap().iter().filter(|a| a["outcome"] == "lost" && a["node_id"] == victim.as_str()).count();
    }
    assert!(lost > 0, "the killed agent had running attempts that were reported lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_past_the_timeout_comes_back_and_its_given_away_attempts_are_killed() {
    let cluster = Cluster::start(3);
    let http = cluster.http();
    wait_nodes_ready(&http, 3).await;
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let ids = submit(&http, marked("sleep 8", &markers), 12).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let frozen = cluster.node_id(2);
    // SIGSTOP: no heartbeats, no reports; its children keep running, as on a partitioned host.
    cluster.agents[2].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, nodes) = http.get("/v1/nodes").await;
    let state = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == frozen.as_str()).unwrap()["state"].clone();
    assert_eq!(state, "down", "{nodes}");
    cluster.agents[2].signal(libc::SIGCONT);
    let per_node = finish_exactly_once(&http, &ids, &markers, Duration::from_secs(90)).await;
    assert_eq!(per_node.values().sum::<usize>(), 12);
    let mut given_away = 0;
    for id in &ids {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        given_away +=
            task["attempts"].as_array().unwrap().iter().filter(|a| a["outcome"] == "lost" && a["node_id"] == frozen.as_str()).count();
    }
    assert!(given_away > 0, "the frozen node's attempts were declared lost and run elsewhere");
    // It comes back and rejoins, having killed what was given away: no
    // process of any attempt is left (every task has ended).
    wait_nodes_ready(&http, 3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = std::process::Command::new("pgrep").arg("-f").arg(markers.to_str().unwrap()).output().expect("pgrep");
        if left.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes of ended attempts still run: {}", String::from_utf8_lossy(&left.stdout));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing_and_runs_nothing_twice() {
    let mut cluster = Cluster::start(3);
    let http = cluster.http();
    wait_nodes_ready(&http, 3).await;
    let markers = cluster.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let ids = submit(&http, marked("sleep 2", &markers), 30).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.server.as_mut().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_server();
    let per_node = finish_exactly_once(&http, &ids, &markers, Duration::from_secs(90)).await;
    assert_eq!(per_node.values().sum::<usize>(), 30);
    for id in &ids {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "nothing was lost or retried: {task}");
    }
}

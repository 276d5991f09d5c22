//! A server with 500 simulated nodes (`shepherd nodesim`, the real agent
//! protocol) runs 20,000 short tasks while ten nodes freeze past the node
//! timeout (12 s against 3 s) and come back: every task succeeds, its exit is accepted exactly
//! once, the frozen nodes are declared down and rejoin, and the scheduler's
//! in-memory view matches the store throughout (checked every second).

mod common;

use common::{free_port, Http, Process};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-join-token";
const NODES: usize = 500;
const TASKS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_simulated_nodes_run_every_task_exactly_once_through_churn() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let data = dir.path().join("server");
    let server_log = dir.path().join("server.log");
    std::env::set_var("SHEPHERD_VIEW_CHECK", "1");
    let args = [
        "server",
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
        "--join-token",
        TOKEN,
        "--node-timeout",
        "3s",
        "--max-connections",
        "10000",
    ];
    let _server = Process::start(&args, &server_log, "shepherd: API listening on ");
    let stats = dir.path().join("sim.json");
    let sim_args = [
        "nodesim",
        "--join",
        &url,
        "--join-token",
        TOKEN,
        "--nodes",
        "500",
        "--max-tasks",
        "16",
        "--run-ms",
        "20..200",
        "--report-every",
        "50ms",
        "--churn",
        "10@4s+12s",
        "--record-exits",
        "--stats",
        stats.to_str().unwrap(),
    ];
    let mut sim = Process::start(&sim_args, &dir.path().join("sim.log"), "shepherd nodesim:");
    let http = Http { client: common::client(), base: url.clone() };

    // Every node joins.
    let started = Instant::now();
    loop {
        let (_, nodes) = http.get("/v1/nodes").await;
        let ready = nodes["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "ready").count());
        if ready == NODES {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{ready} of {NODES} nodes joined");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let task = json!({"image": "busybox", "command": ["true"], "resources": {"cpu_millicores": 100, "memory_mib": 64}, "retry": {"max_attempts": 10}});
    for _ in 0..TASKS / 1000 {
        let (status, body) = http.post("/v1/tasks/batch", &json!({ "tasks": vec![task.clone(); 1000] })).await;
        assert_eq!(status, 201, "{body}");
    }
    let started = Instant::now();
    loop {
        let (_, health) = http.get("/v1/health").await;
        let succeeded = health["tasks"]["succeeded"].as_u64().unwrap_or(0);
        if succeeded == TASKS as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "only {succeeded} of {TASKS} succeeded: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One more check of the view once everything has ended.
    let log = || std::fs::read_to_string(&server_log).unwrap_or_default();
    let checks = |text: &str| text.matches("scheduler view matches the store").count();
    let before = checks(&log());
    let waited = Instant::now();
    while checks(&log()) == before {
        assert!(waited.elapsed() < Duration::from_secs(20), "no check of the view after the run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = log();
    assert!(!text.contains("scheduler view differs"), "the view drifted from the store:\n{}", tail(&text));
    assert!(checks(&text) >= 3, "the view was checked during the run");
    // (The fleet freezes 4 s after it has all joined, which a loaded host
    // may make late: waited for, with both sides' logs if it never comes.)
    let sim_log = dir.path().join("sim.log");
    let waited = Instant::now();
    while log().matches("node missed its heartbeats").count() < 10 {
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "the frozen nodes were never declared down:\nserver:\n{}\nnodesim:\n{}",
            tail(&log()),
            tail(&std::fs::read_to_string(&sim_log).unwrap_or_default())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The frozen nodes come back (registered again, ready).
    let waited = Instant::now();
    loop {
        let (_, nodes) = http.get("/v1/nodes").await;
        let ready = nodes["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "ready").count());
        if ready == NODES {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(60), "{ready} of {NODES} nodes ready after the thaw");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The simulator's record: each task's exit accepted exactly once.
    sim.signal(libc::SIGTERM);
    let _ = sim.child.wait();
    let report: shepherd_agent::sim::SimReport = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let unique: HashSet<_> = report.exited.iter().collect();
    assert_eq!(report.exited.len(), TASKS, "accepted exits: {} (registrations {})", report.exited.len(), report.registrations);
    assert_eq!(unique.len(), TASKS, "an exit was accepted twice");
    assert!(report.registrations >= (NODES + 10) as u64, "the frozen nodes registered again: {}", report.registrations);
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

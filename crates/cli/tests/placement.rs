//! The server's scheduler loop with the placement engine: reasons for
//! waiting tasks, placement once capacity appears, profiles per task and
//! per project from the scheduler config.

mod common;

use common::{sh, Server};
use serde_json::json;
use std::time::Duration;

async fn state_of(http: &common::Http, id: &str) -> serde_json::Value {
    http.get(&format!("/v1/tasks/{id}")).await.1
}

#[tokio::test]
async fn a_task_that_fits_nowhere_waits_with_its_reason_and_runs_once_capacity_appears() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "1", "--node-label", "region=eu"]);
    let http = server.http();
    let (_, first) = http.post("/v1/tasks", &sh("sleep 30")).await;
    let first = first["id"].as_str().unwrap().to_string();
    let (_, second) = http.post("/v1/tasks", &sh("echo second")).await;
    let second = second["id"].as_str().unwrap().to_string();
    let mut mars = sh("true");
    mars["constraints"] = json!(["node.labels.region==mars"]);
    let (_, mars) = http.post("/v1/tasks", &mars).await;
    let mars = mars["id"].as_str().unwrap().to_string();

    let mut waiting = json!(null);
    for _ in 0..100 {
        waiting = state_of(&http, &second).await;
        if waiting["reason"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting["state"], "queued");
    assert_eq!(waiting["reason"], "0/1 nodes fit: 1 at task limit", "{waiting}");
    let inspected = server.cli(&["inspect", &second]);
    assert!(String::from_utf8_lossy(&inspected.stdout).contains("Reason:      0/1 nodes fit: 1 at task limit"));

    // Capacity appears: the first task ends, the second is placed at once.
    http.post(&format!("/v1/tasks/{first}/cancel"), &json!({})).await;
    let done = http.wait_terminal(&second, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    let mars = state_of(&http, &mars).await;
    assert_eq!(mars["state"], "queued");
    assert_eq!(mars["reason"], "no node can ever run this task (0/1 fit even with nothing running): 1 constraint node.labels.region==mars");
}

/// Issue 10: 5,000 tasks that can never be placed, queued ahead of a
/// placeable one in the same project, must not hide it; every waiting task
/// shows its reason, and the too-big ones say plainly that no node is big enough.
#[tokio::test]
async fn unplaceable_tasks_ahead_in_the_queue_never_block_a_placeable_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--cpu", "2000", "--memory", "4096", "--node-label", "region=eu"]);
    let http = server.http();
    let mut too_big = sh("true");
    too_big["resources"] = json!({"cpu_millicores": 256000});
    let mut nowhere = sh("true");
    nowhere["constraints"] = json!(["node.labels.region==mars"]);
    let mut ids = Vec::new();
    for batch in 0..5 {
        // 3,000 too big, then 2,000 with a constraint no node meets; 1,000 per request.
        let template = if batch < 3 { &too_big } else { &nowhere };
        let tasks: Vec<_> = (0..1000).map(|_| template.clone()).collect();
        let (status, body) = http.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
        assert_eq!(status, 201, "{body}");
        ids.extend(body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    assert_eq!(ids.len(), 5000);
    // Behind them, in the same project, one task that fits, through the CLI.
    let run = server.cli(&["run", "--wait", "busybox", "--", "echo", "made it"]);
    assert!(run.status.success(), "stdout: {} stderr: {}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "made it\n");
    // Every waiting task has its reason: the first, the last, and ones deep in the queue.
    for id in [&ids[0], &ids[2999], &ids[3000], &ids[4999]] {
        let task = state_of(&http, id).await;
        assert_eq!(task["state"], "queued");
        assert!(task["reason"].is_string(), "no reason for {id}: {task}");
    }
    let big = state_of(&http, &ids[0]).await;
    assert_eq!(
        big["reason"],
        "no node can ever run this task (0/1 fit even with nothing running): \
         1 too little cpu in all (the task asks 256000 millicores; the largest node has 2000)"
    );
    let mars = state_of(&http, &ids[4999]).await;
    assert!(mars["reason"].as_str().unwrap().contains("1 constraint node.labels.region==mars"), "{mars}");
    // A second placeable task runs too (the skip holds across passes).
    let again = server.cli(&["run", "--wait", "busybox", "--", "true"]);
    assert!(again.status.success());
}

#[tokio::test]
async fn profiles_come_from_the_task_the_project_or_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scheduler.toml");
    std::fs::write(
        &config,
        "default_profile = \"binpack\"\n[profiles.near-images]\norder = \"scan\"\nscores = { image_locality = 1.0, spread = 0.5 }\n[projects.analytics]\nprofile = \"near-images\"\nweight = 2.0\n",
    )
    .unwrap();
    let server = Server::start(&dir.path().join("data"), &["--scheduler-config", config.to_str().unwrap()]);
    let http = server.http();
    let mut named = sh("true");
    named["profile"] = json!("near-images");
    let (status, task) = http.post("/v1/tasks", &named).await;
    assert_eq!(status, 201, "{task}");
    let mut by_project = sh("true");
    by_project["project"] = json!("analytics");
    let (status, _) = http.post("/v1/tasks", &by_project).await;
    assert_eq!(status, 201);
    let done = http.wait_terminal(task["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");

    let mut unknown = sh("true");
    unknown["profile"] = json!("fastest");
    let (status, error) = http.post("/v1/tasks", &unknown).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "profile");
    assert!(error["error"]["message"].as_str().unwrap().contains("near-images"), "{error}");
    let (status, error) = http.post("/v1/tasks/batch", &json!({"tasks": [sh("true"), unknown]})).await;
    assert_eq!((status, error["error"]["field"].as_str()), (400, Some("tasks[1].profile")));

    // A broken config stops `up` with a message naming the problem.
    std::fs::write(&config, "[profiles.x]\nscores = { warp = 1.0 }\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--driver", "process", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--scheduler-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown score plugin `warp`"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn simulate_compares_profiles_and_writes_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("work.csv");
    let mut csv = String::from("at,duration,cpu,memory,project,priority,constraints\n");
    for i in 0..200 {
        csv.push_str(&format!(
            "{},{},{},{},p{},0,{}\n",
            i / 10,
            5 + i % 7,
            500 + 100 * (i % 5),
            256,
            i % 2,
            if i % 4 == 0 { "node.labels.region==eu" } else { "" }
        ));
    }
    std::fs::write(&workload, csv).unwrap();
    let plot = dir.path().join("plot.svg");
    let out = std::process::Command::new(common::BIN)
        .args(["simulate", "--nodes", "6", "--profiles", "spread,binpack", "--workload"])
        .arg(&workload)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| spread | 200/200 |") && stdout.contains("| binpack | 200/200 |"), "{stdout}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    let bad = std::process::Command::new(common::BIN).args(["simulate", "--profiles", "nope"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown profile `nope`"));
}

//! The docker driver against the real Docker Engine: hardened containers,
//! limits, timeouts, cancel, OOM, adoption after a restart, and no leaks.

mod common;

use common::{containers_of, ensure_test_image, run_to_end as run, submit, Server, TEST_IMAGE};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn docker_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    ensure_test_image();
    let mut args = vec!["--driver", "docker"];
    args.extend_from_slice(extra);
    Server::start(dir, &args)
}

fn task(script: &str) -> Value {
    json!({ "image": TEST_IMAGE, "command": ["sh", "-c", script] })
}

async fn node_id(http: &common::Http) -> String {
    let (_, nodes) = http.get("/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["driver"], "docker");
    nodes["nodes"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn containers_are_hardened_and_report_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &[]);
    let http = server.http();
    let node = node_id(&http).await;

    let (t, logs) = run(&http, task("echo hello")).await;
    assert_eq!((t["state"].as_str(), t["exit_code"].as_i64(), logs.as_str()), (Some("succeeded"), Some(0), "hello\n"));
    let (t, _) = run(&http, task("exit 3")).await;
    assert_eq!((t["state"].as_str(), t["exit_code"].as_i64()), (Some("failed"), Some(3)));

    let (_, logs) = run(&http, task("touch /rootfile 2>&1; sleep 0.1; echo ok > /tmp/file && cat /tmp/file")).await;
    assert!(logs.contains("Read-only file system") && logs.ends_with("ok\n"), "{logs}");
    let (t, logs) = run(&http, task("touch /tmp/f && chown 65534 /tmp/f")).await;
    assert_eq!(t["state"], "failed", "chown without CAP_CHOWN must fail");
    assert!(logs.contains("Operation not permitted"), "{logs}");
    let (_, logs) = run(&http, task("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status")).await;
    assert!(logs.contains("CapEff:\t0000000000000000") && logs.contains("CapBnd:\t0000000000000000"), "{logs}");
    assert!(logs.contains("NoNewPrivs:\t1"), "{logs}");
    let (_, logs) = run(&http, task("ls /sys/class/net")).await;
    assert_eq!(logs, "lo\n", "network none by default");
    let mut bridged = task("ls /sys/class/net");
    bridged["network"] = json!("bridge");
    let (_, logs) = run(&http, bridged).await;
    assert!(logs.contains("eth0"), "asked for bridge: {logs}");

    let mut as_nobody = task("id -u; pwd; echo $GREETING; cat $SHEPHERD_PAYLOAD_FILE; echo x >> $SHEPHERD_PAYLOAD_FILE || echo read-only");
    as_nobody["user"] = json!("65534");
    as_nobody["workdir"] = json!("/tmp");
    as_nobody["env"] = json!({"GREETING": "hi"});
    as_nobody["payload"] = json!("cGF5bG9hZAo="); // "payload\n"
    let id = submit(&http, as_nobody).await;
    let t = http.wait_terminal(&id, Duration::from_secs(60)).await;
    // stdout and stderr come through separate pipes: compare stdout alone.
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs?stream=stdout")).await;
    assert_eq!(t["state"], "succeeded", "{logs}");
    assert!(logs.starts_with("65534\n/tmp\nhi\npayload\n") && logs.ends_with("read-only\n"), "{logs}");

    let mut missing = task("true");
    missing["image"] = json!("shepherd-test/no-such-image:latest");
    missing["pull_policy"] = json!("never");
    let started = Instant::now();
    let (t, _) = run(&http, missing).await;
    assert_eq!(t["state"], "failed");
    assert!(t["reason"].as_str().unwrap().contains("is not on this node"), "{t}");
    assert!(started.elapsed() < Duration::from_secs(10), "a missing image fails at once");

    let (_, nodes) = http.get("/v1/nodes").await;
    assert!(nodes["nodes"][0]["images"].as_array().unwrap().iter().any(|i| i == TEST_IMAGE), "{nodes}");
    assert!(containers_of(&node).is_empty(), "containers left behind: {:?}", containers_of(&node));
}

#[tokio::test]
async fn timeout_cancel_oom_and_fork_bomb_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &["--pids-limit", "64"]);
    let http = server.http();
    let node = node_id(&http).await;

    let mut slow = task("sleep 60");
    slow["timeout_seconds"] = json!(1);
    let slow = submit(&http, slow).await;
    let to_cancel = submit(&http, task("echo started; sleep 60")).await;
    // The hog waits a moment: an OOM kill in a container's first
    // milliseconds, before the engine's shim watches its memory cgroup, is
    // never reported by Docker 20.10 (no flag, no event): a plain exit 137.
    let mut hog = task("sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog["resources"] = json!({"memory_mib": 16});
    let hog = submit(&http, hog).await;
    let mut bomb = task("bomb() { bomb | bomb & }; bomb; sleep 3; echo survived");
    bomb["timeout_seconds"] = json!(8);
    let bomb = submit(&http, bomb).await;

    common::wait_running(&http, &to_cancel).await;
    // Under an init a cancel ends it at once: let it print first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.text(&format!("/v1/tasks/{to_cancel}/logs")).await.1.contains("started") {
        assert!(Instant::now() < deadline, "never printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = http.post(&format!("/v1/tasks/{to_cancel}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let t = http.wait_terminal(&to_cancel, Duration::from_secs(30)).await;
    assert_eq!(t["state"], "cancelled");
    let (_, logs) = http.text(&format!("/v1/tasks/{to_cancel}/logs")).await;
    assert_eq!(logs, "started\n");

    let t = http.wait_terminal(&slow, Duration::from_secs(30)).await;
    assert_eq!(t["state"], "timed_out");
    let t = http.wait_terminal(&hog, Duration::from_secs(30)).await;
    assert_eq!((t["state"].as_str(), t["reason"].as_str()), (Some("failed"), Some("oom_killed")), "{t}");
    let t = http.wait_terminal(&bomb, Duration::from_secs(60)).await;
    assert!(["succeeded", "failed", "timed_out"].contains(&t["state"].as_str().unwrap()), "{t}");

    // The limits are the cgroup's (v1 or v2 paths).
    let mut limits = task("cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; true");
    limits["resources"] = json!({"memory_mib": 32});
    let (_, logs) = run(&http, limits).await;
    assert_eq!(logs.split_whitespace().collect::<Vec<_>>(), ["64", (32 * 1024 * 1024).to_string().as_str()], "{logs}");

    // The host and the engine are fine afterwards.
    let (t, logs) = run(&http, task("echo still here")).await;
    assert_eq!((t["state"].as_str(), logs.as_str()), (Some("succeeded"), "still here\n"));
    assert!(containers_of(&node).is_empty(), "containers left behind: {:?}", containers_of(&node));
}

#[tokio::test]
async fn a_task_printing_a_lot_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &["--log-head-bytes", "1000", "--log-tail-bytes", "1000"]);
    let http = server.http();
    let (t, logs) = run(&http, task("yes 0123456789 | head -c 5000000; echo; echo THE-END")).await;
    assert_eq!(t["state"], "succeeded");
    assert!(logs.len() < 3000, "kept {} bytes", logs.len());
    assert!(logs.starts_with("0123456789\n") && logs.trim_end().ends_with("THE-END"), "{logs}");
    assert!(logs.contains("bytes of output truncated"));
}

#[tokio::test]
async fn restarts_adopt_running_containers_and_remove_unowned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = docker_server(&data, &[]);
    let http = server.http();
    let node = node_id(&http).await;

    // SIGKILL: the container keeps running and is adopted.
    let crashed = submit(&http, task("sleep 8; echo done after crash")).await;
    common::wait_running(&http, &crashed).await;
    server.kill();
    let stray = format!("shepherd-stray-{}", std::process::id());
    let created = Command::new("docker")
        .args(["run", "-d", "--name", &stray, "--label"])
        .arg(format!("io.shepherd.node={node}"))
        .args(["--label", "io.shepherd.task=01ARZ3NDEKTSV4RRFFQ69G5FAV", "--label", "io.shepherd.attempt=1", TEST_IMAGE, "sleep", "300"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert_eq!(containers_of(&node).len(), 2);

    let mut server = docker_server(&data, &[]);
    let http = server.http();
    let t = http.wait_terminal(&crashed, Duration::from_secs(30)).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "adopted, not run again: {t}");
    let (_, logs) = http.text(&format!("/v1/tasks/{crashed}/logs")).await;
    assert!(logs.contains("done after crash"), "{logs}");
    assert!(!containers_of(&node).contains(&stray), "the container it does not own was removed");

    // Ctrl-C: containers are left running and adopted on the next start.
    let calm = submit(&http, task("sleep 8; echo done after stop")).await;
    common::wait_running(&http, &calm).await;
    server.stop();
    assert_eq!(containers_of(&node).len(), 1, "left running across a clean stop");
    let server = docker_server(&data, &[]);
    let http = server.http();
    let t = http.wait_terminal(&calm, Duration::from_secs(30)).await;
    assert_eq!((t["state"].as_str(), t["attempts"].as_array().unwrap().len()), (Some("succeeded"), 1), "{t}");
    assert!(containers_of(&node).is_empty(), "containers left behind: {:?}", containers_of(&node));
}

/// Issue 10: a stop (Ctrl-C) leaves a container running; whatever it
/// writes and when it exits while no agent watches is recorded truly on
/// the next start: its output (read back from the engine, nothing twice)
/// and the engine's finish time, not the restart's.
#[tokio::test]
async fn output_and_exit_time_survive_a_stop_while_no_agent_watches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = docker_server(&data, &[]);
    let http = server.http();
    let id = submit(&http, task("echo before; sleep 3; echo while-away; echo err-away >&2; exit 3")).await;
    common::wait_running(&http, &id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.text(&format!("/v1/tasks/{id}/logs")).await.1.contains("before") {
        assert!(Instant::now() < deadline, "output before the stop was never captured");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    // It ends while no agent watches.
    let container = format!("shepherd-{}-1", id.to_lowercase());
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.Running}} {{.State.FinishedAt}}", &container]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Some(at) = text.strip_prefix("false ") {
            break at.to_string();
        }
        assert!(Instant::now() < deadline, "container still running: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = docker_server(&data, &[]);
    let http = server.http();
    let t = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!((t["state"].as_str(), t["exit_code"].as_i64()), (Some("failed"), Some(3)), "{t}");
    let engine_finished = &finished[..23]; // 2026-11-25T21:23:54.123
    assert!(t["finished_at"].as_str().unwrap().starts_with(engine_finished), "finished_at {} is the engine's {finished}", t["finished_at"]);
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    for line in ["before", "while-away", "err-away"] {
        assert_eq!(logs.matches(line).count(), 1, "{line} once in {logs:?}");
    }
    assert!(containers_of(&node_id(&http).await).is_empty());
}

/// A stop leaves task containers running and says how to remove them;
/// `shepherd node cleanup` does; `--stop-tasks` leaves none.
#[tokio::test]
async fn a_stop_says_what_it_left_running_and_node_cleanup_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = docker_server(&data, &[]);
    let http = server.http();
    let node = node_id(&http).await;
    let mut bridged = task("sleep 300");
    bridged["network"] = json!("bridge");
    // A project of its own, so that this node makes (and labels) its network.
    bridged["project"] = json!(format!("cleanup-{}", std::process::id()));
    let id = submit(&http, bridged).await;
    common::wait_running(&http, &id).await;
    server.stop();
    std::thread::sleep(Duration::from_millis(200));
    let printed = server.printed();
    assert!(printed.contains("1 task container left running"), "{printed}");
    assert!(printed.contains("shepherd node cleanup --data-dir"), "{printed}");
    assert_eq!(containers_of(&node).len(), 1);
    let cleanup = Command::new(common::BIN).args(["node", "cleanup", "--data-dir"]).arg(&data).output().unwrap();
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    let said = String::from_utf8_lossy(&cleanup.stdout);
    assert!(said.contains("removed 1 container and 1 network"), "{said}");
    assert!(containers_of(&node).is_empty());

    // --stop-tasks: nothing is left; the task goes back to the queue. (The
    // task cleaned up above is found gone, and lost.)
    let mut server = docker_server(&data, &["--stop-tasks"]);
    let http = server.http();
    let lost = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(lost["reason"], "lost", "{lost}");
    let again = submit(&http, task("sleep 300")).await;
    common::wait_running(&http, &again).await;
    server.stop();
    assert!(containers_of(&node).is_empty(), "{:?}", containers_of(&node));
    assert!(!server.printed().contains("left running"), "{}", server.printed());
    // A running node's data dir cannot be cleaned up.
    let server = docker_server(&data, &[]);
    let (_, queued) = server.http().get(&format!("/v1/tasks/{again}")).await;
    assert_eq!(queued["attempts"][0]["outcome"], "interrupted", "{queued}");
    // Let it start its second attempt: a server killed while the engine is
    // still creating a container leaves one that appears after a cleanup.
    common::wait_running(&server.http(), &again).await;
    let refused = Command::new(common::BIN).args(["node", "cleanup", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by another shepherd process"));
    // Leave nothing on the engine: that last server's running container.
    drop(server);
    let cleanup = Command::new(common::BIN).args(["node", "cleanup", "--data-dir"]).arg(&data).output().unwrap();
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    assert!(containers_of(&node).is_empty(), "{:?}", containers_of(&node));
}

/// The command runs under an init: a cancel's SIGTERM reaches `sleep`, which
/// ends at once rather than at the end of the grace period.
#[tokio::test]
async fn a_cancelled_sleep_ends_at_once_under_the_init() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &["--stop-grace", "60s"]);
    let http = server.http();
    let id = submit(&http, task("sleep 300")).await;
    common::wait_running(&http, &id).await;
    let asked = Instant::now();
    let (status, _) = http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let t = http.wait_terminal(&id, Duration::from_secs(50)).await;
    assert_eq!(t["state"], "cancelled");
    assert!(asked.elapsed() < Duration::from_secs(30), "the cancel waited for the grace period: {:?}", asked.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_some_cancelled_some_timed_out_leave_no_container() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &["--max-tasks", "24"]);
    let http = server.http();
    let node = node_id(&http).await;
    let tasks: Vec<Value> = (0..1000)
        .map(|i| match i % 20 {
            0 => json!({"image": TEST_IMAGE, "command": ["sleep", "30"], "timeout_seconds": 1, "labels": {"kind": "timeout"}, "resources": {"cpu_millicores": 10}}),
            1 => json!({"image": TEST_IMAGE, "command": ["sleep", "30"], "labels": {"kind": "cancel"}, "resources": {"cpu_millicores": 10}}),
            _ => json!({"image": TEST_IMAGE, "command": ["true"], "labels": {"kind": "ok"}, "resources": {"cpu_millicores": 10}}),
        })
        .collect();
    let (status, created) = http.post("/v1/tasks/batch", &json!({"tasks": tasks})).await;
    assert_eq!(status, 201);
    let ids: Vec<String> = created["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    // Cancel half of the cancel group early (likely queued), half once they may be running.
    for (n, id) in ids.iter().enumerate().filter(|(i, _)| i % 20 == 1) {
        if n % 40 == 21 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (status, _) = http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
        assert!(status == 200 || status == 409, "cancel answered {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(540);
    loop {
        let (_, health) = http.get("/v1/health").await;
        let active: u64 = ["queued", "scheduled", "running"].iter().map(|s| health["tasks"][s].as_u64().unwrap_or(0)).sum();
        if active == 0 {
            // Any that failed, with why, before the counts are checked.
            let (_, failed) = http.get("/v1/tasks?state=failed&limit=10").await;
            assert!(failed["tasks"].as_array().is_some_and(|t| t.is_empty()), "failed tasks: {failed}");
            assert_eq!(health["tasks"]["timed_out"], 50, "{health}");
            assert_eq!(health["tasks"]["cancelled"], 50, "{health}");
            assert_eq!(health["tasks"]["succeeded"], 900, "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "still active: {health}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let left = containers_of(&node);
    assert!(left.is_empty(), "{} containers left behind: {left:?}", left.len());
}

#[tokio::test]
async fn a_container_reports_what_it_used_from_the_engine() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &[]);
    let http = server.http();
    // Three seconds of a busy shell holding a 40 MB string: sampled by the
    // engine each second, so CPU is at least most of the run, never more
    // than the run, and the peak covers the string.
    // A whole core for it (the default request is a tenth of one, which
    // the engine enforces).
    let mut body = task(
        "x=$(head -c 40000000 /dev/zero | tr '\\0' a); end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done; echo ${#x}",
    );
    body["resources"] = json!({ "cpu_millicores": 1000, "memory_mib": 512 });
    let (busy, _) = run(&http, body).await;
    assert_eq!(busy["state"], "succeeded", "{busy}");
    let attempt = &busy["attempts"][0];
    let usage = &attempt["usage"];
    let cpu = usage["cpu_ms"].as_u64().unwrap_or_else(|| panic!("no usage: {busy}"));
    let started = shepherd_core::Timestamp::parse_rfc3339(attempt["started_at"].as_str().unwrap()).unwrap();
    let finished = shepherd_core::Timestamp::parse_rfc3339(attempt["finished_at"].as_str().unwrap()).unwrap();
    let wall = (finished.millis() - started.millis()) as u64;
    assert!(cpu >= 800 && cpu <= wall + 200, "cpu {cpu} ms over {wall} ms: {busy}");
    assert!(usage["peak_memory_bytes"].as_u64().unwrap() >= 40_000_000, "{busy}");
    // A task shorter than a second costs the engine no stats stream and reports none.
    let (quick, _) = run(&http, task("true")).await;
    assert!(quick["attempts"][0].get("usage").is_none(), "{quick}");
}

#[tokio::test]
async fn a_scratch_directory_is_private_writable_sized_and_gone_with_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = docker_server(&dir.path().join("data"), &[]);
    let http = server.http();
    let node = node_id(&http).await;
    let volumes_before = Command::new("docker").args(["volume", "ls", "-q"]).output().unwrap().stdout.len();

    // Writable under the read-only root, by a non-root user, at its size.
    let mut t = task(
        "echo data > /work/f && cat /work/f && df -m /work | tail -1 && echo $SHEPHERD_SCRATCH_DIR; \
         dd if=/dev/zero of=/work/big bs=1M count=40 2>&1 | grep -o 'No space left on device'; touch /elsewhere 2>/dev/null || echo read-only",
    );
    t["scratch"] = json!({"target": "/work", "size_mib": 16});
    t["resources"] = json!({"memory_mib": 64});
    t["user"] = json!("65534");
    let (done, logs) = run(&http, t).await;
    assert_eq!(done["state"], "succeeded", "{done} {logs}");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0], "data", "{logs}");
    assert!(lines[1].starts_with("tmpfs") && lines[1].split_whitespace().nth(1) == Some("16"), "a 16 MiB tmpfs: {logs}");
    assert_eq!(&lines[2..], ["/work", "No space left on device", "read-only"], "{logs}");

    // Each attempt starts empty: nothing of the task before.
    for _ in 0..20 {
        let mut t = task("ls -A /work | wc -l; echo x > /work/left");
        t["scratch"] = json!({"target": "/work", "size_mib": 8});
        let (done, logs) = run(&http, t).await;
        assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "0"));
    }
    // Nothing left on the engine: no container, no volume.
    assert!(containers_of(&node).is_empty());
    let volumes_after = Command::new("docker").args(["volume", "ls", "-q"]).output().unwrap().stdout.len();
    assert_eq!(volumes_before, volumes_after, "no volume made or left");

    // Bad input names the field.
    for (scratch, field) in [
        (json!({"target": "/run/secrets", "size_mib": 8}), "scratch.target"),
        (json!({"target": "work", "size_mib": 8}), "scratch.target"),
        (json!({"target": "/work", "size_mib": 100_000}), "scratch.size_mib"),
    ] {
        let mut t = task("true");
        t["scratch"] = scratch;
        let (status, body) = http.post("/v1/tasks", &t).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some(field)), "{body}");
    }
}

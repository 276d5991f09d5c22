//! Warm containers (`reuse`) on the real Docker Engine: many tasks through
//! a few containers, each starting clean; never shared across projects;
//! removed when idle, on drain and on stop; timeouts, cancels, OOM kills, stubborn and hostile tasks, a runner killed
//! from outside and an agent killed outright all end right and leave no
//! container behind.
//!
//! The server runs the statically built runner named by
//! SHEPHERD_RUNNER_STATIC (scripts/test.sh builds it).

mod common;

use common::{containers_of, ensure_test_image, run_to_end as run, submit, Http, Server, TEST_IMAGE};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

fn runner() -> String {
    std::env::var("SHEPHERD_RUNNER_STATIC")
        .expect("SHEPHERD_RUNNER_STATIC must name the statically built shepherd-runner: run scripts/test.sh")
}

fn warm_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    ensure_test_image();
    let runner = runner();
    let mut args = vec!["--driver", "docker", "--runner", runner.as_str()];
    args.extend_from_slice(extra);
    Server::start(dir, &args)
}

/// A reused task running `sh -c SCRIPT`.
fn warm(script: &str) -> Value {
    json!({ "image": TEST_IMAGE, "command": ["sh", "-c", script], "reuse": { "idle_seconds": 60 } })
}

async fn node_id(http: &Http) -> String {
    let (_, nodes) = http.get("/v1/nodes").await;
    nodes["nodes"][0]["id"].as_str().unwrap().to_string()
}

/// (container, warm) of a task's last attempt (which also records the image it ran).
fn ran_in(task: &Value) -> (String, bool) {
    let attempt = task["attempts"].as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
    if attempt["started_at"].is_string() {
        let image = attempt["runtime"]["image_digest"].as_str().unwrap_or_default();
        assert!(image.starts_with("sha256:") || image.contains("@sha256:"), "no image recorded: {attempt}");
    }
    (attempt["runtime"]["container"].as_str().unwrap_or("-").to_string(), attempt["runtime"]["warm"].as_bool().unwrap_or(false))
}

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

/// Names of the warm containers on the engine carrying a node's label.
fn warm_containers(node: &str) -> Vec<String> {
    containers_of(node).into_iter().filter(|n| n.starts_with("shepherd-warm-")).collect()
}

async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn five_hundred_warm_tasks_each_start_clean_with_their_own_env_payload_secrets_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = warm_server(&dir.path().join("data"), &[]);
    let admin = server.http();
    let node = node_id(&admin).await;
    let token = project(&admin, "hot").await;
    let hot = server.http_as(Some(&token));
    let (status, _) = hot.send(reqwest::Method::PUT, "/v1/projects/hot/secrets/token", &json!({ "value": "tok-value" })).await;
    assert_eq!(status, 204);

    // Each task checks that nothing of the one before is left (its /tmp
    // file, its background sleep), that it sees its own variable, payload
    // and secret, then leaves both behind and exits with its own code.
    let script = r#"
        [ -e /tmp/mark ] && exit 90
        for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sleep ] && exit 91; done
        [ "$(cat "$SHEPHERD_PAYLOAD_FILE")" = "payload-$K" ] || exit 92
        [ "$(cat "$SHEPHERD_SECRETS_DIR/token")" = tok-value ] || exit 93
        [ -n "$HOME" ] && [ -n "$HOSTNAME" ] && [ -z "$LEFT" ] || exit 94
        echo "task $K" > /tmp/mark
        export LEFT=1
        sleep 1000 > /dev/null 2>&1 &
        echo "k=$K"
        exit $((K % 5))"#;
    use base64::Engine;
    let tasks: Vec<Value> = (0..500)
        .map(|k| {
            let mut t = warm(script);
            t["env"] = json!({ "K": k.to_string() });
            t["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(format!("payload-{k}")));
            t["secrets"] = json!([{ "name": "token" }]);
            t
        })
        .collect();
    let began = Instant::now();
    let (status, created) = hot.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    let mut containers: HashMap<String, usize> = HashMap::new();
    let mut warm_count = 0;
    for (k, id) in ids.iter().enumerate() {
        let task = hot.wait_terminal(id, Duration::from_secs(300)).await;
        let expected = if k % 5 == 0 { "succeeded" } else { "failed" };
        assert_eq!((task["state"].as_str(), task["exit_code"].as_i64()), (Some(expected), Some((k % 5) as i64)), "task {k}: {task}");
        let (container, warm) = ran_in(&task);
        assert!(container.starts_with("shepherd-warm-"), "task {k} ran in {container}");
        // The runner (PID 1) reaps the task and reports what it used.
        assert!(task["attempts"][0]["usage"]["peak_memory_bytes"].as_u64().is_some_and(|b| b > 0), "task {k}: {task}");
        *containers.entry(container).or_default() += 1;
        warm_count += usize::from(warm);
        if k % 50 == 0 {
            let (_, logs) = hot.text(&format!("/v1/tasks/{id}/logs")).await;
            assert_eq!(logs, format!("k={k}\n"), "task {k}'s own output only");
        }
    }
    eprintln!("500 warm tasks in {:?} through {} containers, {warm_count} warm", began.elapsed(), containers.len());
    assert!(containers.len() <= 8, "at most --warm-max (8) containers of the key: {containers:?}");
    assert_eq!(warm_count, 500 - containers.len(), "all but each container's first task ran warm");

    // The idle ones stay until their idle time, and the node says it holds
    // them (for `warm_locality`); a stop removes them.
    assert!(!warm_containers(&node).is_empty(), "idle warm containers are kept");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, nodes) = admin.get("/v1/nodes").await;
        let images = nodes["nodes"][0]["images"].as_array().cloned().unwrap_or_default();
        if images.iter().any(|i| i.as_str().is_some_and(|i| i.starts_with("warm="))) {
            break;
        }
        assert!(Instant::now() < deadline, "the node never reported its idle warm key: {nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    let left = containers_of(&node);
    assert!(left.is_empty(), "containers left after a stop: {left:?}");
}

#[tokio::test]
async fn projects_with_the_same_key_never_share_a_container_idle_ones_go_and_a_drain_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = warm_server(&dir.path().join("data"), &[]);
    let admin = server.http();
    let node = node_id(&admin).await;
    let mut used: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let (a, b) = (project(&admin, "aa").await, project(&admin, "bb").await);
    let (a, b) = (server.http_as(Some(&a)), server.http_as(Some(&b)));
    for round in 0..10 {
        // Same image, command, limits: only the project differs. `aa`'s
        // containers may idle 2 s, `bb`'s a minute.
        for (name, http, idle) in [("aa", &a, 2), ("bb", &b, 60)] {
            let mut t = warm("echo $SHEPHERD_TASK_ID > /tmp/who; cat /tmp/who > /dev/null");
            t["reuse"] = json!({ "idle_seconds": idle });
            let (task, _) = run(http, t).await;
            assert_eq!(task["state"], "succeeded", "{task}");
            let (container, warm) = ran_in(&task);
            assert_eq!(warm, round > 0, "round {round} of {name}: {task}");
            used.entry(name).or_default().insert(container);
        }
    }
    assert_eq!(used["aa"].len(), 1, "{used:?}");
    assert_eq!(used["bb"].len(), 1, "{used:?}");
    assert!(used["aa"].is_disjoint(&used["bb"]), "projects shared a container: {used:?}");
    let bb: Vec<String> = used["bb"].iter().cloned().collect();
    // `aa`'s goes once idle past its 2 s; `bb`'s stays.
    wait_until(Duration::from_secs(15), "aa's idle warm container removed", || warm_containers(&node) == bb).await;
    // Draining the node frees it at once.
    let (status, _) = admin.post(&format!("/v1/nodes/{node}/drain"), &json!({})).await;
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(10), "warm containers removed on drain", || warm_containers(&node).is_empty()).await;
}

#[tokio::test]
async fn timeouts_cancels_oom_stubborn_and_hostile_tasks_end_right_and_the_container_is_kept_only_when_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = warm_server(&dir.path().join("data"), &["--stop-grace", "2s"]);
    let http = server.http();
    let node = node_id(&http).await;

    let (first, _) = run(&http, warm("true")).await;
    let (home, _) = ran_in(&first);

    // Timeout: the task is stopped, the container reset and kept.
    let mut slow = warm("sleep 60");
    slow["timeout_seconds"] = json!(1);
    let (t, _) = run(&http, slow).await;
    assert_eq!(t["state"], "timed_out", "{t}");
    assert_eq!(ran_in(&t), (home.clone(), true));

    // Cancel: SIGTERM reaches the task; what it printed is kept.
    let id = submit(&http, warm("echo started; sleep 60")).await;
    common::wait_running(&http, &id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.text(&format!("/v1/tasks/{id}/logs")).await.1.contains("started") {
        assert!(Instant::now() < deadline, "never printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = Instant::now();
    let (status, _) = http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let t = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(t["state"], "cancelled");
    assert!(began.elapsed() < Duration::from_secs(2), "a SIGTERM ends sleep at once: {:?}", began.elapsed());
    assert_eq!(http.text(&format!("/v1/tasks/{id}/logs")).await.1, "started\n");

    // A task that ignores SIGTERM is killed after the grace period.
    let id = submit(&http, warm("trap '' TERM; echo ready; while true; do sleep 1; done")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.text(&format!("/v1/tasks/{id}/logs")).await.1.contains("ready") {
        assert!(Instant::now() < deadline, "never printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = Instant::now();
    http.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    let t = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(t["state"], "cancelled");
    assert!(began.elapsed() >= Duration::from_secs(2), "stopped before the grace period: {:?}", began.elapsed());
    assert_eq!(ran_in(&t).0, home, "a task killed cleanly keeps the container");

    // A hostile task: closes its input, writes into the runner's output,
    // signals PID 1. None of it reaches the runner or the next task.
    let attack = r#"exec 0<&-; { echo garbage > /proc/1/fd/1; } 2>/dev/null && echo wrote; kill -9 1; kill -TERM 1; echo attacked"#;
    let (t, logs) = run(&http, warm(attack)).await;
    assert_eq!((t["state"].as_str(), logs.as_str()), (Some("succeeded"), "attacked\n"), "{t}");
    let (t, logs) = run(&http, warm("echo after")).await;
    assert_eq!((t["state"].as_str(), logs.as_str()), (Some("succeeded"), "after\n"), "{t}");
    assert_eq!(ran_in(&t), (home.clone(), true), "the runner survived and serves the next task");

    // Output is bounded as for a cold task.
    let (t, logs) = run(&http, warm("yes 0123456789 | head -c 4000000")).await;
    assert_eq!(t["state"], "succeeded");
    assert!(logs.len() < 2_200_000 && logs.contains("bytes of output truncated"), "{} bytes of log", logs.len());

    // OOM: reported as such, and that container is never used again.
    let mut hog = warm("dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog["resources"] = json!({ "memory_mib": 16 });
    let (t, _) = run(&http, hog.clone()).await;
    assert_eq!((t["state"].as_str(), t["reason"].as_str()), (Some("failed"), Some("oom_killed")), "{t}");
    let (oomed, _) = ran_in(&t);
    hog["command"] = json!(["true"]);
    let (t, _) = run(&http, hog).await;
    assert_eq!(t["state"], "succeeded");
    assert_ne!(ran_in(&t).0, oomed, "an OOM-killed task's container is discarded");

    // A runner killed from outside: the attempt is lost (and retried if it may).
    let mut doomed = warm("echo up; sleep 60");
    doomed["retry"] = json!({ "max_attempts": 1 });
    let id = submit(&http, doomed).await;
    common::wait_running(&http, &id).await;
    let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
    let (container, _) = ran_in(&task);
    let killed = Command::new("docker").args(["kill", &container]).output().unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let t = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!((t["state"].as_str(), t["reason"].as_str()), (Some("failed"), Some("lost")), "{t}");
    let (t, _) = run(&http, warm("true")).await;
    assert_eq!(t["state"], "succeeded", "the pool goes on without it");

    // An image with a VOLUME (writable, and holding the image's own files)
    // always runs cold: a reset could neither keep nor clear it rightly.
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", "shepherd-test-volume:latest", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    build.stdin.take().unwrap().write_all(format!("FROM {TEST_IMAGE}\nVOLUME /data\n").as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "docker build of an image with a volume");
    let mut with_volume = warm("touch /data/x");
    with_volume["image"] = json!("shepherd-test-volume:latest");
    for _ in 0..2 {
        let (t, _) = run(&http, with_volume.clone()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
        let (container, warm) = ran_in(&t);
        assert!(!warm && !container.starts_with("shepherd-warm-"), "ran in {container}");
    }

    server.stop();
    let left = containers_of(&node);
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[tokio::test]
async fn an_agent_killed_with_warm_containers_leaves_nothing_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = warm_server(&data, &[]);
    let http = server.http();
    let node = node_id(&http).await;
    let (t, _) = run(&http, warm("true")).await;
    assert_eq!(t["state"], "succeeded");
    let mut busy = warm("sleep 10; echo done");
    busy["retry"] = json!({ "max_attempts": 2, "backoff_seconds": 0 });
    let id = submit(&http, busy).await;
    common::wait_running(&http, &id).await;
    let (t, _) = run(&http, warm("true")).await;
    assert_eq!(t["state"], "succeeded");
    assert_eq!(warm_containers(&node).len(), 2, "one idle, one busy");

    server.kill();
    // The engine closes the runners' input: they stop what runs and exit.
    wait_until(Duration::from_secs(15), "warm containers exited", || {
        let out = Command::new("docker")
            .args(["ps", "--format", "{{.Names}}", "--filter", &format!("label=io.shepherd.node={node}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().all(|n| !n.starts_with("shepherd-warm-"))
    })
    .await;

    let mut server = warm_server(&data, &[]);
    let http = server.http();
    let t = http.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["attempts"].as_array().unwrap().len(), 2, "the first attempt was lost with its agent: {t}");
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    assert!(logs.ends_with("done\n"), "{logs}");
    server.stop();
    let left = containers_of(&node);
    assert!(left.is_empty(), "containers left: {left:?}");
}

/// Issue 27, items 5 and 19: the node reconciling twenty times a second
/// while fifty warm tasks start loses none of them (before, a warm
/// container made between its keep-list and its listing was removed as an
/// orphan while it ran a task); and one project holds at most
/// `--warm-max-per-project` warm containers on the node, across its keys
/// (its longest idle one makes room for a new key).
#[tokio::test]
async fn reconciles_never_take_a_busy_warm_container_and_a_project_holds_a_bounded_number() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let runner = runner();
    let server = Server::start_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--driver", "docker", "--runner", runner.as_str(), "--warm-max", "8", "--warm-max-per-project", "3", "--max-tasks", "16"],
        &[("SHEPHERD_RECONCILE_EVERY", "0.05")],
    );
    let http = server.http();
    let node = node_id(&http).await;
    let tasks: Vec<Value> = (0..50).map(|i| warm(&format!("echo {i}; sleep 0.2"))).collect();
    let (status, created) = http.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 201, "{created}");
    for id in created["ids"].as_array().unwrap() {
        let done = http.wait_terminal(id.as_str().unwrap(), Duration::from_secs(120)).await;
        assert_eq!(done["state"], "succeeded", "a warm task lost to a reconcile: {done}");
        assert_eq!(done["attempts"].as_array().unwrap().len(), 1, "{done}");
    }
    assert!(warm_containers(&node).len() <= 3, "at most 3 of the project's: {:?}", warm_containers(&node));
    // Five keys (five users) of one project, one after another: never more than three kept.
    for user in 0..5 {
        let mut task = warm("id -u");
        task["user"] = json!(format!("{}", 1000 + user));
        let (done, logs) = run(&http, task).await;
        assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), format!("{}", 1000 + user).as_str()), "{done}");
        let held = warm_containers(&node);
        assert!(held.len() <= 3, "the project holds {} warm containers: {held:?}", held.len());
    }
}

/// Results and inputs in warm containers, as in cold ones: a diamond whose
/// tasks all run warm passes its results along the edges; a link, a FIFO
/// or a huge file as a result is no result or is cut at 64 KiB; the next
/// task of the same container sees nothing of the last one's result.
#[tokio::test]
async fn warm_tasks_write_results_and_read_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let server = warm_server(&dir.path().join("data"), &[]);
    let http = server.http();
    let task = |script: &str, deps: Value| {
        let mut t = warm(script);
        t["depends_on"] = deps;
        t
    };
    let batch = json!({"tasks": [
        task("printf 'seed=42' > $SHEPHERD_RESULT_FILE", json!([])),
        task("printf \"b saw [$(cat $SHEPHERD_INPUTS_DIR/*)]\" > $SHEPHERD_RESULT_FILE", json!([{"task": 0}])),
        task("printf \"c saw [$(cat $SHEPHERD_INPUTS_DIR/*)]\" > $SHEPHERD_RESULT_FILE", json!([{"task": 0}])),
        task("for f in $SHEPHERD_INPUTS_DIR/*; do cat $f; echo; done; ls $SHEPHERD_INPUTS_DIR | wc -l; ls /run/shepherd/out | wc -l",
             json!([{"task": 1}, {"task": 2}])),
    ]});
    let (status, created) = http.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let d = http.wait_terminal(&ids[3], Duration::from_secs(120)).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let (_, logs) = http.text(&format!("/v1/tasks/{}/logs", ids[3])).await;
    assert_eq!(logs, "b saw [seed=42]\nc saw [seed=42]\n2\n0\n", "D read B's and C's results; no result left from before");
    let mut warm_runs = 0;
    for id in &ids {
        let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
        warm_runs += usize::from(ran_in(&t).1);
    }
    assert!(warm_runs >= 2, "the diamond reused its warm container: {warm_runs} warm runs");
    let (status, bytes) = http.text(&format!("/v1/tasks/{}/result", ids[1])).await;
    assert_eq!((status, bytes.as_str()), (200, "b saw [seed=42]"));
    // Hostile results: a link, a FIFO, a huge file.
    let (link, _) = run(&http, warm("ln -s /etc/passwd $SHEPHERD_RESULT_FILE")).await;
    assert_eq!(http.get(&format!("/v1/tasks/{}/result", link["id"].as_str().unwrap())).await.0, 404);
    let (fifo, _) = run(&http, warm("mkfifo $SHEPHERD_RESULT_FILE")).await;
    assert_eq!(fifo["state"], "succeeded", "a FIFO does not hang the runner: {fifo}");
    assert_eq!(http.get(&format!("/v1/tasks/{}/result", fifo["id"].as_str().unwrap())).await.0, 404);
    let (huge, _) = run(&http, warm("head -c 200000 /dev/zero > $SHEPHERD_RESULT_FILE")).await;
    let (status, bytes) = http.text(&format!("/v1/tasks/{}/result", huge["id"].as_str().unwrap())).await;
    assert_eq!((status, bytes.len()), (200, 64 * 1024));
    assert!(ran_in(&huge).1, "ran warm: {huge}");
}

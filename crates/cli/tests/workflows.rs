//! Workflows through the real binary: a diamond submitted as one batch
//! runs in dependency order and a failure cancels what depends on it;
//! arrays from the CLI (`run --array`, `ps --array`, `inspect`, `logs
//! --index`, `cancel`, `retry --failed`); every refusal names its field;
//! idempotency keys under a storm of retries and across a crash between
//! the commit and the answer; a 10,000-child array with parallelism 50 on
//! simulated nodes never runs more than 50 at once and runs every index
//! exactly once.

mod common;

use common::{free_port, Http, Process, Server};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn sh(script: &str) -> Value {
    json!({"image": "busybox", "command": ["sh", "-c", script], "resources": {"cpu_millicores": 10, "memory_mib": 16}})
}

fn ms(task: &Value, field: &str) -> i64 {
    let text = task[field].as_str().unwrap_or_else(|| panic!("{field} in {task}"));
    chrono_millis(text)
}

/// RFC 3339 (as the API writes it) to milliseconds.
fn chrono_millis(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

async fn wait_array(http: &Http, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, array) = http.get(&format!("/v1/arrays/{id}")).await;
        assert_eq!(status, 200, "{array}");
        if ["succeeded", "failed", "cancelled"].contains(&array["state"].as_str().unwrap_or("")) {
            return array;
        }
        assert!(Instant::now() < deadline, "array {id} still {array}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_in_order_and_a_failure_cancels_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    // A → B, C → D in one call, by position; E depends on a failing task F.
    let batch = json!({"tasks": [
        sh("sleep 0.3"),
        {"image": "busybox", "command": ["sh", "-c", "sleep 0.2"], "depends_on": [{"task": 0}]},
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 0, "on": "finished"}]},
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 1}, {"task": 2}]},
        sh("exit 3"),
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 4}]},
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 5, "on": "finished"}]},
    ]});
    let (status, created) = http.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let (_, d) = http.get(&format!("/v1/tasks/{}", ids[3])).await;
    assert_eq!(d["state"], "waiting", "{d}");
    assert!(d["reason"].as_str().unwrap().starts_with("waiting for 2 of 2 dependencies"), "{d}");
    let tasks: Vec<Value> = {
        let mut out = Vec::new();
        for id in &ids {
            out.push(http.wait_terminal(id, Duration::from_secs(60)).await);
        }
        out
    };
    for t in &tasks[..4] {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    assert!(ms(&tasks[1], "started_at") >= ms(&tasks[0], "finished_at"), "B after A");
    assert!(ms(&tasks[3], "started_at") >= ms(&tasks[1], "finished_at").max(ms(&tasks[2], "finished_at")), "D after B and C");
    assert_eq!(tasks[4]["state"], "failed");
    assert_eq!(tasks[5]["state"], "cancelled");
    assert_eq!(tasks[5]["reason"], format!("dependency_failed: {}", ids[4]));
    assert!(tasks[5]["attempts"].as_array().unwrap().is_empty(), "never ran");
    // `finished` is met by a cancelled dependency.
    assert_eq!(tasks[6]["state"], "succeeded", "{}", tasks[6]);
    // The graph names both sides.
    let out = server.cli(&["graph", &ids[3]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&ids[1]) && text.contains(&ids[2]) && text.contains("succeeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    // Index 2 fails; --wait shows progress and exits 1.
    let out = server.cli(&[
        "run",
        "--array",
        "5",
        "--parallelism",
        "2",
        "--wait",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo index=$SHEPHERD_ARRAY_INDEX of $SHEPHERD_ARRAY_SIZE; test $SHEPHERD_ARRAY_INDEX -ne 2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Failed indices: 2"), "{stdout}");
    let id = stdout.lines().find_map(|l| l.strip_prefix("ID:").map(|r| r.trim().trim_end_matches(" (array)").to_string())).unwrap();
    let (_, array) = http.get(&format!("/v1/arrays/{id}")).await;
    assert_eq!((array["state"].as_str(), array["counts"]["succeeded"].as_u64()), (Some("failed"), Some(4)), "{array}");
    // One index's output.
    let out = server.cli(&["logs", &id, "--index", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "index=3 of 5");
    let out = server.cli(&["ps", "--array", &id]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().filter(|l| l.contains("succeeded")).count(), 4, "{listing}");
    // inspect names the failed index; retry --failed runs only it.
    let out = server.cli(&["inspect", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Failed indices: 2"));
    let out = server.cli(&["retry", &id, "--failed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let retry = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let again = wait_array(&http, &retry, Duration::from_secs(60)).await;
    assert_eq!((again["children"].as_u64(), again["size"].as_u64(), again["retry_of"].as_str()), (Some(1), Some(5), Some(id.as_str())));
    assert_eq!(again["failed_indices"], json!([2]), "the same index, and it fails again: {again}");
    // Retry rules: exit 3 ends the task at once, with attempts left.
    let out = server.cli(&[
        "run",
        "--retries",
        "3",
        "--backoff",
        "0",
        "--retry-rule",
        "exit=3,4:fail",
        "--retry-rule",
        "lost:retry_free",
        "--wait",
        "busybox",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, page) = http.get("/v1/tasks?limit=1").await;
    let task = &page["tasks"][0];
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "{task}");
    let out = server.cli(&["inspect", task["id"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("attempt 1 of 4")
            && text.contains("exit 3, 4 ends the task")
            && text.contains("lost is retried without spending an attempt"),
        "{text}"
    );
    let out = server.cli(&["run", "--retry-rule", "exit=0:fail", "busybox", "--", "true"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--retry-rule"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Cancel an array that is running: the running children stop, the rest end.
    let out = server.cli(&["run", "--array", "6", "--parallelism", "2", "busybox", "--", "sleep", "30"]);
    let long = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, a) = http.get(&format!("/v1/arrays/{long}")).await;
        if a["counts"]["running"].as_u64() == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "{a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = server.cli(&["cancel", &long]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ended = wait_array(&http, &long, Duration::from_secs(30)).await;
    assert_eq!((ended["state"].as_str(), ended["counts"]["cancelled"].as_u64()), (Some("cancelled"), Some(6)), "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependencies_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.http();
    let (status, created) = admin.post("/v1/projects", &json!({ "name": "alpha" })).await;
    assert_eq!(status, 201, "{created}");
    let alpha = server.http_as(Some(created["token"]["token"].as_str().unwrap()));
    let (_, theirs) = admin.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "project": "other"})).await;
    let theirs = theirs["id"].as_str().unwrap().to_string();
    let (_, own) = alpha.post("/v1/tasks", &sh("true")).await;
    let own = own["id"].as_str().unwrap().to_string();
    let unknown = "01JDQ4V6Z5M7T8X9Y0A1B2C3D4";
    let cases = [
        // A cycle cannot be written: a position must come before.
        (
            json!({"tasks": [{"image": "busybox", "depends_on": [{"task": 1}]}, {"image": "busybox", "depends_on": [{"task": 0}]}]}),
            "tasks[0].depends_on[0].task",
        ),
        (json!({"tasks": [sh("true"), {"image": "busybox", "depends_on": [{"task": 1}]}]}), "tasks[1].depends_on[0].task"),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": unknown}]}]}), "tasks[0].depends_on[0].task"),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": theirs}]}]}), "tasks[0].depends_on[0].task"),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": "not-an-id"}]}]}), "tasks[0].depends_on[0].task"),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": own}, {"task": own}]}]}), "tasks[0].depends_on[1].task"),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": own, "on": "each"}]}]}), "tasks[0].depends_on[0].on"),
        (
            json!({"tasks": [{"image": "busybox", "array": {"size": 3}, "depends_on": [{"task": own, "on": "each"}]}]}),
            "tasks[0].depends_on[0].on",
        ),
        (json!({"tasks": [{"image": "busybox", "depends_on": [{"task": -1}]}]}), "tasks[0].depends_on[0].task"),
        (json!({"tasks": [{"image": "busybox", "array": {"size": 100001}}]}), "tasks[0].array.size"),
        (json!({"tasks": [{"image": "busybox", "array": {"size": 0}}]}), "tasks[0].array.size"),
        (json!({"tasks": [{"image": "busybox", "array": {"size": 5, "parallelism": 6}}]}), "tasks[0].array.parallelism"),
        (json!({"tasks": [{"image": "busybox", "array": {"size": 5, "parallelism": 0}}]}), "tasks[0].array.parallelism"),
        (json!({"tasks": [{"image": "busybox", "array": {"size": 5, "surprise": 1}}]}), "tasks[0].array"),
    ];
    for (body, field) in cases {
        let (status, answer) = alpha.post("/v1/tasks/batch", &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"]["field"].as_str().unwrap_or("").starts_with(field), "{body} -> {answer}, expected {field}");
    }
    // One task: a position means nothing, another project's id is unknown.
    let (status, answer) = alpha.post("/v1/tasks", &json!({"image": "busybox", "depends_on": [{"task": 0}]})).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("depends_on[0].task")), "{answer}");
    let (status, answer) = alpha.post("/v1/tasks", &json!({"image": "busybox", "depends_on": [{"task": theirs}]})).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("depends_on[0].task")), "{answer}");
    assert!(!answer.to_string().contains("other"), "nothing of the other project shows: {answer}");
    // Another project's array is not there either.
    let (_, array) =
        admin.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "project": "other", "array": {"size": 2}})).await;
    let array = array["id"].as_str().unwrap();
    assert_eq!(alpha.get(&format!("/v1/arrays/{array}")).await.0, 404);
    assert_eq!(alpha.post(&format!("/v1/arrays/{array}/cancel"), &json!({})).await.0, 404);
    assert_eq!(alpha.get(&format!("/v1/tasks/{array}/dependencies")).await.0, 404);
    let (_, page) = alpha.get("/v1/arrays").await;
    assert!(page["arrays"].as_array().unwrap().is_empty(), "{page}");
    // Nothing was stored by the refusals.
    let (_, page) = alpha.get("/v1/tasks?limit=100").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
}

async fn post_with_key(http: &Http, path: &str, key: &str, body: &Value) -> (u16, Value, bool) {
    let r = http
        .client
        .post(format!("{}{path}", http.base))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null), replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submits_under_a_retry_storm_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let http = server.http();
    let body = sh("true");
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, base, body) = (http.client.clone(), http.base.clone(), body.clone());
        storm.spawn(async move { post_with_key(&Http { client, base }, "/v1/tasks", "storm-1", &body).await });
    }
    let answers: Vec<(u16, Value, bool)> = storm.join_all().await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|(status, task, _)| {
            assert_eq!(*status, 201, "{task}");
            task["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one task for twenty submits: {ids:?}");
    assert_eq!(answers.iter().filter(|(_, _, replayed)| *replayed).count(), 19);
    let (_, page) = http.get("/v1/tasks?limit=100").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    // Another body with the key: refused, naming the header.
    let (status, answer, _) = post_with_key(&http, "/v1/tasks", "storm-1", &sh("false")).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (409, Some("Idempotency-Key")), "{answer}");
    // Batches and arrays too.
    let batch = json!({"tasks": [sh("true"), {"image": "busybox", "command": ["true"], "array": {"size": 3}}]});
    let (s1, first, _) = post_with_key(&http, "/v1/tasks/batch", "batch-1", &batch).await;
    let (s2, second, replayed) = post_with_key(&http, "/v1/tasks/batch", "batch-1", &batch).await;
    assert_eq!((s1, s2, replayed), (201, 201, true));
    assert_eq!(first, second);
    let (status, answer, _) = post_with_key(&http, "/v1/tasks", "bad key with spaces", &body).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (400, Some("Idempotency-Key")), "{answer}");

    // IronWorker's queue route takes the key too.
    let (status, code) = http.post("/v1/codes", &json!({"name": "hello", "image": "busybox", "command": ["true"]})).await;
    assert_eq!(status, 201, "{code}");
    let iron = |key: &'static str| {
        let (client, base) = (http.client.clone(), http.base.clone());
        async move {
            let r = client
                .post(format!("{base}/2/projects/default/tasks"))
                .header("authorization", format!("OAuth {}", common::ADMIN_TOKEN))
                .header("idempotency-key", key)
                .header("content-type", "application/json")
                .body(json!({"tasks": [{"code_name": "hello", "payload": "{}"}]}).to_string())
                .send()
                .await
                .unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), r.json::<Value>().await.unwrap(), replayed)
        }
    };
    let (s1, first, _) = iron("iron-1").await;
    let (s2, second, replayed) = iron("iron-1").await;
    assert_eq!((s1, s2, replayed), (200, 200, true), "{first} {second}");
    assert_eq!(first["tasks"], second["tasks"]);

    // A crash between the commit and the answer: the retry creates nothing twice.
    server.kill();
    let crashing = Server::start_env(&data, "127.0.0.1:0", &[], &[("SHEPHERD_FAILPOINT_CRASH_AFTER_SUBMIT", "1")]);
    let crash_http = crashing.http();
    let r = crash_http
        .client
        .post(format!("{}/v1/tasks", crash_http.base))
        .header("idempotency-key", "crash-1")
        .header("content-type", "application/json")
        .body(sh("echo once").to_string())
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success(), "the answer never came");
    drop(crashing);
    server = Server::start(&data, &[]);
    let http = server.http();
    let (status, task, replayed) = post_with_key(&http, "/v1/tasks", "crash-1", &sh("echo once")).await;
    assert_eq!((status, replayed), (201, true), "{task}");
    let (_, page) = http.get("/v1/tasks?limit=100").await;
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.iter().filter(|t| t["command"] == json!(["sh", "-c", "echo once"])).count(), 1, "{page}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_child_array_with_parallelism_fifty_on_simulated_nodes() {
    const TOKEN: &str = "test-join-token";
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let data = dir.path().join("server");
    let args = ["server", "--listen", &listen, "--data-dir", data.to_str().unwrap(), "--join-token", TOKEN];
    let _server = Process::start(&args, &dir.path().join("server.log"), "shepherd: API listening on ");
    let sim_args = [
        "nodesim",
        "--join",
        &url,
        "--join-token",
        TOKEN,
        "--nodes",
        "20",
        "--max-tasks",
        "16",
        "--run-ms",
        "5..20",
        "--report-every",
        "20ms",
    ];
    let _sim = Process::start(&sim_args, &dir.path().join("sim.log"), "shepherd nodesim:");
    let http = Http { client: common::client(), base: url.clone() };
    let started = Instant::now();
    loop {
        let (_, nodes) = http.get("/v1/nodes").await;
        if nodes["nodes"].as_array().map_or(0, |n| n.len()) == 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "nodes did not join");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, array) = http
        .post(
            "/v1/tasks",
            &json!({"image": "busybox", "command": ["true"], "resources": {"cpu_millicores": 10, "memory_mib": 16},
            "array": {"size": 10_000, "parallelism": 50}}),
        )
        .await;
    assert_eq!(status, 201, "{array}");
    let id = array["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut samples = 0;
    let mut most = 0;
    let done = loop {
        let (status, a) = http.get(&format!("/v1/arrays/{id}")).await;
        assert_eq!(status, 200, "{a}");
        let c = &a["counts"];
        let admitted = ["queued", "scheduled", "running"].iter().map(|s| c[s].as_u64().unwrap_or(0)).sum::<u64>();
        assert!(admitted <= 50, "at most 50 at once: {a}");
        most = most.max(admitted);
        samples += 1;
        if a["state"] != "running" {
            break a;
        }
        assert!(Instant::now() < deadline, "{a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(most >= 40, "the array ran near its parallelism ({most} at most in {samples} samples)");
    // Every index ran exactly once: one attempt each, all indices present.
    let mut indices = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks?array={id}&limit=1000&cursor={c}"),
            None => format!("/v1/tasks?array={id}&limit=1000"),
        };
        let (_, page) = http.get(&path).await;
        for t in page["tasks"].as_array().unwrap() {
            assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "{t}");
            assert!(indices.insert(t["array"]["index"].as_u64().unwrap()), "index twice: {t}");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(indices.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_on_postgresql() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--store", &url]);
    let http = server.http();
    // A diamond whose join reads nothing but runs last; an array behind it, two at a time.
    let batch = json!({"tasks": [
        sh("sleep 0.2"),
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 0}]},
        {"image": "busybox", "command": ["sh", "-c", "exit 1"], "depends_on": [{"task": 0}]},
        {"image": "busybox", "command": ["true"], "depends_on": [{"task": 1}, {"task": 2}]},
        {"image": "busybox", "command": ["sh", "-c", "test $SHEPHERD_ARRAY_INDEX -lt 6"], "array": {"size": 8, "parallelism": 2},
         "depends_on": [{"task": 1}]},
    ]});
    let (status, created, _) = post_with_key(&http, "/v1/tasks/batch", "pg-1", &batch).await;
    assert_eq!(status, 201, "{created}");
    let (_, again, replayed) = post_with_key(&http, "/v1/tasks/batch", "pg-1", &batch).await;
    assert!(replayed, "{again}");
    let ids: Vec<String> = again["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let d = http.wait_terminal(&ids[3], Duration::from_secs(60)).await;
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("cancelled"), Some(format!("dependency_failed: {}", ids[2]).as_str())),
        "{d}"
    );
    let array = wait_array(&http, &ids[4], Duration::from_secs(60)).await;
    assert_eq!((array["state"].as_str(), array["failed_indices"].clone()), (Some("failed"), json!([6, 7])), "{array}");
    let (_, page) = http.get(&format!("/v1/tasks?array={}&limit=100", ids[4])).await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 8);
}

/// A diamond whose join reads its inputs: results pass along the edges
/// with no store of the user's own.
async fn diamond_with_results(http: &Http, image: &str) -> (Vec<String>, Value) {
    let task = |script: &str, deps: Value| json!({"image": image, "command": ["sh", "-c", script], "depends_on": deps});
    let batch = json!({"tasks": [
        task("printf 'seed=42' > $SHEPHERD_RESULT_FILE", json!([])),
        task("printf \"b saw [$(cat $SHEPHERD_INPUTS_DIR/*)]\" > $SHEPHERD_RESULT_FILE", json!([{"task": 0}])),
        task("printf \"c saw [$(cat $SHEPHERD_INPUTS_DIR/*)]\" > $SHEPHERD_RESULT_FILE", json!([{"task": 0}])),
        task("for f in $SHEPHERD_INPUTS_DIR/*; do cat $f; echo; done; ls $SHEPHERD_INPUTS_DIR | wc -l", json!([{"task": 1}, {"task": 2}])),
    ]});
    let (status, created) = http.post("/v1/tasks/batch", &batch).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let d = http.wait_terminal(&ids[3], Duration::from_secs(120)).await;
    (ids, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_pass_to_dependents_and_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();
    let (ids, d) = diamond_with_results(&http, "busybox").await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let (_, logs) = http.text(&format!("/v1/tasks/{}/logs", ids[3])).await;
    assert_eq!(logs, "b saw [seed=42]\nc saw [seed=42]\n2\n", "D read B's and C's results");
    let out = server.cli(&["result", &ids[1]]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b saw [seed=42]");
    // Hostile results: a link to a host file is no result; a huge one is cut at 64 KiB.
    let (link, _) = common::run_to_end(&http, sh("ln -s /etc/passwd $SHEPHERD_RESULT_FILE")).await;
    assert_eq!(http.get(&format!("/v1/tasks/{}/result", link["id"].as_str().unwrap())).await.0, 404);
    let (fifo, _) = common::run_to_end(&http, sh("mkfifo $SHEPHERD_RESULT_FILE")).await;
    assert_eq!(fifo["state"], "succeeded", "a FIFO does not hang the agent: {fifo}");
    assert_eq!(http.get(&format!("/v1/tasks/{}/result", fifo["id"].as_str().unwrap())).await.0, 404);
    let (huge, _) = common::run_to_end(&http, sh("head -c 200000 /dev/zero > $SHEPHERD_RESULT_FILE")).await;
    let (status, bytes) = http.text(&format!("/v1/tasks/{}/result", huge["id"].as_str().unwrap())).await;
    assert_eq!((status, bytes.len()), (200, 64 * 1024));
    // Another project's result is not there.
    let (_, created) = http.post("/v1/projects", &json!({ "name": "alpha" })).await;
    let alpha = server.http_as(Some(created["token"]["token"].as_str().unwrap()));
    assert_eq!(alpha.get(&format!("/v1/tasks/{}/result", ids[1])).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_on_the_real_engine_reads_its_inputs() {
    common::ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let http = server.http();
    let (ids, d) = diamond_with_results(&http, common::TEST_IMAGE).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let (_, logs) = http.text(&format!("/v1/tasks/{}/logs", ids[3])).await;
    assert_eq!(logs, "b saw [seed=42]\nc saw [seed=42]\n2\n", "D read B's and C's results in its container");
    // Inputs are read-only in the container.
    let mut deps = sh("(echo x > $SHEPHERD_INPUTS_DIR/new) 2>/dev/null && echo wrote || echo refused");
    deps["image"] = json!(common::TEST_IMAGE);
    deps["depends_on"] = json!([{"task": ids[0]}]);
    let (t, logs) = common::run_to_end(&http, deps).await;
    assert_eq!((t["state"].as_str(), logs.as_str()), (Some("succeeded"), "refused\n"), "{t}");
}

//! Seeing inside the cluster (issue 16): Prometheus metrics that move with
//! a workload, and the event stream: resumable without loss or repeats
//! (also across a restart), filtered, and never another project's.

mod common;

use common::{client_with, free_port, sh, Http, Server, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// The value of one sample line (`name{labels} value`) in a scrape, 0 if absent.
fn sample(scrape: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
    scrape.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

async fn batch(http: &Http, count: usize, script: &str) -> Vec<String> {
    let tasks: Vec<Value> = (0..count).map(|_| sh(script)).collect();
    let (status, body) = http.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 201, "{body}");
    body["ids"].as_array().expect("ids").iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

async fn wait_all(http: &Http, ids: &[String]) {
    for id in ids {
        http.wait_terminal(id, Duration::from_secs(120)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_a_workload_and_need_the_admin_or_the_private_address() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "16", "--metrics-listen", &metrics_addr]);
    let admin = server.http();
    let token = project(&admin, "metered").await;
    let tenant = server.http_as(Some(&token));

    // The admin token, or the private address without one; a project token may not.
    let (status, before) = admin.text("/metrics").await;
    assert_eq!(status, 200, "{before}");
    let (status, _) = tenant.text("/metrics").await;
    assert_eq!(status, 403);
    let (status, _) = server.http_as(None).text("/metrics").await;
    assert_eq!(status, 401);
    let open = Http { base: format!("http://{metrics_addr}"), client: client_with(None) };
    let (status, private) = open.text("/metrics").await;
    assert_eq!(status, 200);
    assert!(private.contains("# TYPE shepherd_nodes gauge"), "{private}");

    // 50 tasks, 10 of them failing.
    let mut ids = batch(&tenant, 40, "true").await;
    ids.extend(batch(&tenant, 10, "exit 3").await);
    wait_all(&tenant, &ids).await;
    let (_, after) = open.text("/metrics").await;
    let moved = |name: &str, labels: &str| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(moved("shepherd_tasks_created_total", r#"project="metered""#), 50.0, "{after}");
    assert_eq!(moved("shepherd_tasks_finished_total", r#"project="metered",state="succeeded""#), 40.0);
    assert_eq!(moved("shepherd_tasks_finished_total", r#"project="metered",state="failed""#), 10.0);
    assert_eq!(sample(&after, "shepherd_task_queue_wait_seconds_count", ""), 50.0);
    assert_eq!(sample(&after, "shepherd_task_run_seconds_count", ""), 50.0);
    assert!(sample(&after, "shepherd_placements_total", "") >= 50.0);
    assert!(sample(&after, "shepherd_placement_pass_seconds_count", "") >= 1.0);
    assert!(sample(&after, "shepherd_store_commit_seconds_count", "") > 0.0);
    assert!(sample(&after, "shepherd_store_commit_requests_count", "") > 0.0);
    assert_eq!(sample(&after, "shepherd_nodes", r#"state="ready""#), 1.0);
    assert_eq!(
        sample(&after, "shepherd_api_request_seconds_count", r#"route="/v1/tasks/batch",method="POST",status="201""#),
        2.0,
        "{after}"
    );
    assert_eq!(sample(&after, "shepherd_agent_running_attempts", ""), 0.0);
    // Queue depth, by project and state, while tasks wait.
    let waiting = batch(&tenant, 3, "sleep 30").await;
    let mut tries = 0;
    loop {
        let (_, now) = open.text("/metrics").await;
        if sample(&now, "shepherd_tasks", r#"project="metered",state="running""#) == 3.0 {
            assert!(sample(&now, "shepherd_agent_running_attempts", "") >= 3.0, "{now}");
            break;
        }
        tries += 1;
        assert!(tries < 200, "three running tasks never showed: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &waiting {
        tenant.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    }
    // No task ids in any label.
    assert!(!after.contains(&ids[0]), "a task id in a label");

    // A refused submission is counted for its project.
    let (status, _) = admin.send(reqwest::Method::PATCH, "/v1/projects/metered", &json!({ "limits": { "max_queued": 0 } })).await;
    assert_eq!(status, 200);
    let (status, _) = tenant.post("/v1/tasks", &sh("true")).await;
    assert_eq!(status, 429);
    let (_, refused) = open.text("/metrics").await;
    assert_eq!(sample(&refused, "shepherd_quota_refused_requests_total", r#"project="metered""#), 1.0, "{refused}");
}

/// An event as the test keeps it: (id, kind, task, state).
type Seen = (String, String, String, String);

/// Reads an SSE stream until `enough` says so or `limit` passes.
async fn read_events(response: reqwest::Response, limit: Duration, enough: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let mut response = response;
    let deadline = Instant::now() + limit;
    let (mut buffer, mut seen) = (String::new(), Vec::new());
    let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
    while Instant::now() < deadline && !enough(&seen) {
        let chunk = match tokio::time::timeout(Duration::from_millis(500), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(_) => break,
            Err(_) => continue,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end();
            if line.is_empty() {
                if !id.is_empty() {
                    let event: Value = serde_json::from_str(&data).expect("event json");
                    let task = event["task"].as_str().unwrap_or_default().to_string();
                    let state = event["state"].as_str().or(event["action"].as_str()).unwrap_or_default().to_string();
                    assert_eq!(event["type"], kind.as_str());
                    seen.push((id.clone(), kind.clone(), task, state));
                }
                (id, kind, data) = (String::new(), String::new(), String::new());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }
    seen
}

async fn follow(server: &Server, token: &str, query: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = client_with(Some(token)).get(format!("{}/v1/events{query}", server.url));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    let response = request.send().await.expect("events");
    if response.status() != 200 {
        panic!("{}: {}", response.status(), response.text().await.unwrap_or_default());
    }
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

fn ended(events: &[Seen], tasks: &[String]) -> bool {
    let done: HashSet<&str> = events.iter().filter(|e| e.3 == "succeeded").map(|e| e.2.as_str()).collect();
    tasks.iter().all(|t| done.contains(t.as_str()))
}

#[tokio::test]
async fn a_follower_that_reconnects_misses_nothing_sees_nothing_twice_and_never_another_project() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--max-tasks", "16"]);
    let admin = server.http();
    let alpha_token = project(&admin, "alpha").await;
    let beta_token = project(&admin, "beta").await;
    let alpha = server.http_as(Some(&alpha_token));
    let beta = server.http_as(Some(&beta_token));

    // A follower of alpha from now; both projects get work.
    let stream = follow(&server, &alpha_token, "", None).await;
    let first = batch(&alpha, 20, "true").await;
    let others = batch(&beta, 20, "true").await;
    // It reads part of the stream and drops the connection.
    let part = read_events(stream, Duration::from_secs(60), |seen| seen.len() >= 25).await;
    assert!(part.len() >= 25, "{part:?}");
    let last = part.last().unwrap().0.clone();
    // Meanwhile more happens; then it resumes with Last-Event-ID.
    let second = batch(&alpha, 20, "true").await;
    let mut all_tasks = first.clone();
    all_tasks.extend(second.clone());
    let rest = read_events(follow(&server, &alpha_token, "", Some(&last)).await, Duration::from_secs(120), |seen| {
        let mut both = part.clone();
        both.extend_from_slice(seen);
        ended(&both, &all_tasks)
    })
    .await;
    let mut events = part.clone();
    events.extend(rest);

    // Nothing twice: ids strictly increase across the reconnect.
    let ids: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event seen twice");
    // A project's ids are sealed: they say nothing of other projects' events.
    assert!(ids.iter().all(|id| !id.split('-').all(|part| part.parse::<i64>().is_ok())), "a plain, cluster-wide cursor: {ids:?}");
    // Nothing missed: every alpha task went queued → scheduled → running → succeeded, in order.
    let mut per_task: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e.1, "task", "a project token sees no node events: {e:?}");
        per_task.entry(e.2.as_str()).or_default().push(e.3.as_str());
    }
    for task in &all_tasks {
        assert_eq!(per_task.get(task.as_str()).map(Vec::as_slice), Some(&["queued", "scheduled", "running", "succeeded"][..]), "{task}");
    }
    // Never another project's.
    for task in &others {
        assert!(!per_task.contains_key(task.as_str()), "beta's task {task} in alpha's stream");
    }
    assert_eq!(per_task.len(), all_tasks.len());

    // Filters: one task, and kinds; a bad kind names the field; another project's task is missing.
    let one = &first[0];
    let only =
        read_events(follow(&server, &alpha_token, &format!("?task={one}"), Some("0-0-0")).await, Duration::from_secs(10), |s| s.len() >= 4)
            .await;
    assert_eq!(only.iter().map(|e| e.3.as_str()).collect::<Vec<_>>(), ["queued", "scheduled", "running", "succeeded"]);
    assert!(only.iter().all(|e| e.2 == *one));
    let (status, body) = alpha.get("/v1/events?types=task,bogus").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("types")), "{body}");
    let (status, _) = alpha.get(&format!("/v1/events?task={}", others[0])).await;
    assert_eq!(status, 404);
    let (status, _) = alpha.get("/v1/events?project=beta").await;
    assert_eq!(status, 404);
    let (status, body) = alpha.get("/v1/events?after=nonsense").await;
    assert_eq!(status, 400, "{body}");

    // The admin sees nodes and tenant changes too (names only).
    let admin_stream = follow(&server, ADMIN_TOKEN, "?types=secret,node", Some(&last)).await;
    let (status, _) =
        alpha.send(reqwest::Method::PUT, "/v1/projects/alpha/secrets/api-key", &json!({ "value": "hunter2-secret-value" })).await;
    assert_eq!(status, 204);
    let tenant_events = read_events(admin_stream, Duration::from_secs(10), |s| s.iter().any(|e| e.1 == "secret")).await;
    assert!(tenant_events.iter().any(|e| e.1 == "secret" && e.3 == "set"), "{tenant_events:?}");

    // The window survives a restart: resuming from the first cursor after
    // it gives the same events as before.
    let before_restart =
        read_events(follow(&server, &alpha_token, "?types=task", Some(&last)).await, Duration::from_secs(10), |s| ended(s, &second)).await;
    server.stop();
    let server = Server::start(&data, &["--max-tasks", "16"]);
    let after_restart =
        read_events(follow(&server, &alpha_token, "?types=task", Some(&last)).await, Duration::from_secs(10), |s| ended(s, &second)).await;
    assert_eq!(before_restart, after_restart);

    // The CLI follows it too.
    let out = std::process::Command::new(common::BIN)
        .args(["events", "--json", "--after", &last, "--task", &second[0], "--server", &server.url, "--token", &alpha_token])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("shepherd events");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut out = out;
    let _ = out.kill();
    let output = out.wait_with_output().expect("output");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.iter().map(|l| l["state"].as_str().unwrap()).collect::<Vec<_>>(), ["queued", "scheduled", "running", "succeeded"]);
    assert!(lines.iter().all(|l| l["id"].is_string() && l["task"] == second[0].as_str()));
}

#[tokio::test]
async fn a_queued_task_says_where_it_stands_and_when_it_may_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "1"]);
    let admin = server.http();
    let a = server.http_as(Some(&project(&admin, "first").await));
    let b = server.http_as(Some(&project(&admin, "second").await));
    // One slot: a long task holds it, the rest wait in line.
    let holder = common::submit(&a, sh("sleep 60")).await;
    common::wait_running(&a, &holder).await;
    let line = batch(&a, 4, "true").await;
    let urgent = {
        let mut body = sh("true");
        body["priority"] = json!(10);
        common::submit(&b, body).await
    };
    let (_, third) = a.get(&format!("/v1/tasks/{}", line[2])).await;
    assert_eq!(third["state"], "queued");
    assert_eq!(third["queue"]["in_project"], 3, "{third}");
    assert!(third["queue"].get("in_cluster").is_none(), "a project learns nothing of other projects' queues: {third}");
    let (_, seen) = admin.get(&format!("/v1/tasks/{}", line[2])).await;
    assert_eq!(seen["queue"]["in_cluster"], 4, "the admin sees the other project's urgent task ahead: {seen}");
    // One placement in the last minute: a (long) estimate from the project's rate.
    assert!(third["queue"]["estimated_start"].is_string(), "{third}");
    assert!(third["queue"]["estimate"].as_str().unwrap().contains("placements/s"), "{third}");
    let (_, first) = b.get(&format!("/v1/tasks/{urgent}")).await;
    assert_eq!((first["queue"]["in_project"].as_u64(), first["queue"].get("in_cluster")), (Some(1), None), "{first}");
    // Tasks lists leave it out; a running task has none.
    let (_, listed) = a.get("/v1/tasks?state=queued").await;
    assert!(listed["tasks"][0].get("queue").is_none());
    let (_, running) = a.get(&format!("/v1/tasks/{holder}")).await;
    assert!(running.get("queue").is_none());
    // A task no node can ever run: no estimate, and why.
    let mut huge = sh("true");
    huge["resources"] = json!({ "cpu_millicores": 200_000 });
    let never = common::submit(&a, huge).await;
    let mut tries = 0;
    loop {
        let (_, task) = a.get(&format!("/v1/tasks/{never}")).await;
        if task["queue"]["estimate"] == "unknown: no node can run it" {
            assert!(task["queue"].get("estimated_start").is_none());
            break;
        }
        tries += 1;
        assert!(tries < 100, "{task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // inspect shows it.
    let out = server.cli_as(ADMIN_TOKEN, &["inspect", &line[3]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Queue:       #4 in project first, #5 in the cluster"), "{text}");
    assert!(text.contains("Starts:      about "), "{text}");

    // A cluster that placed nothing lately has no basis for a guess.
    let idle = Server::start(&dir.path().join("idle"), &["--no-agent"]);
    let waiting = common::submit(&idle.http(), sh("true")).await;
    let (_, task) = idle.http().get(&format!("/v1/tasks/{waiting}")).await;
    assert_eq!(task["queue"]["estimate"], "unknown: nothing was placed in the last minute", "{task}");
}

#[tokio::test]
async fn what_each_attempt_used_is_measured_and_summed_per_project_for_billing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-tasks", "4"]);
    let admin = server.http();
    let billed = server.http_as(Some(&project(&admin, "billed").await));
    let other = server.http_as(Some(&project(&admin, "other").await));
    // A busy loop in the shell itself: its own CPU time (from /proc, in
    // ticks of 10 ms) is the oracle; a sleep uses next to none; a shell
    // holding a 50 MB string peaks above 50 MB.
    let (busy, out) =
        common::run_to_end(&billed, sh("i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done; cut -d' ' -f14,15 /proc/$$/stat")).await;
    let (idle, _) = common::run_to_end(&billed, sh("sleep 1")).await;
    let (big, _) = common::run_to_end(&billed, sh("x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}")).await;
    let ticks: Vec<u64> = out.split_whitespace().map(|t| t.parse().expect("ticks")).collect();
    let own_ms = (ticks[0] + ticks[1]) * 10;
    let cpu = |task: &Value| task["attempts"][0]["usage"]["cpu_ms"].as_u64().unwrap_or_else(|| panic!("no usage: {task}"));
    let peak = |task: &Value| task["attempts"][0]["usage"]["peak_memory_bytes"].as_u64().unwrap();
    assert!(own_ms >= 300, "the loop ran too short to measure: {own_ms} ms");
    assert!(cpu(&busy).abs_diff(own_ms) <= own_ms / 10 + 50, "measured {} ms, the shell counted {own_ms} ms", cpu(&busy));
    assert!(cpu(&idle) < 100, "{idle}");
    assert!(peak(&big) >= 50_000_000, "{big}");
    assert!(peak(&idle) < 50_000_000);

    // Summed per project and hour, as JSON and CSV.
    let (status, report) = billed.get("/v1/usage").await;
    assert_eq!(status, 200, "{report}");
    let rows = report["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!((rows[0]["project"].as_str(), rows[0]["tasks"].as_u64(), rows[0]["attempts"].as_u64()), (Some("billed"), Some(3), Some(3)));
    let total_ms = cpu(&busy) + cpu(&idle) + cpu(&big);
    assert!((rows[0]["cpu_seconds"].as_f64().unwrap() - total_ms as f64 / 1000.0).abs() < 0.002, "{report}");
    assert!(rows[0]["wall_seconds"].as_f64().unwrap() >= 1.0);
    assert!(rows[0]["memory_mib_seconds"].as_f64().unwrap() > 0.0);
    let (status, csv) = billed.text("/v1/usage?by=day&format=csv").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "project,start,tasks,attempts,cpu_seconds,memory_mib_seconds,wall_seconds");
    assert!(lines[1].starts_with("billed,") && lines[1].contains(",3,3,"), "{csv}");
    // The admin sees every project; another project's token never sees this one.
    let (_, all) = admin.get("/v1/usage?by=day").await;
    assert!(all["usage"].as_array().unwrap().iter().any(|r| r["project"] == "billed"));
    let (status, _) = other.get("/v1/usage?project=billed").await;
    assert_eq!(status, 403);
    let (_, theirs) = other.get("/v1/usage").await;
    assert!(theirs["usage"].as_array().unwrap().is_empty(), "{theirs}");
    for (query, field) in [("by=week", "by"), ("format=xml", "format"), ("from=yesterday", "from"), ("from=2030-01-01T00:00:00Z", "from")] {
        let (status, body) = admin.get(&format!("/v1/usage?{query}")).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }
    // The CLI: CSV for billing, and the attempt's usage in inspect.
    let out = server.cli_as(ADMIN_TOKEN, &["usage", "--project", "billed", "--csv"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("project,start,"));
    let out = server.cli_as(ADMIN_TOKEN, &["inspect", busy["id"].as_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("s cpu, "), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A project's retention removes its finished tasks (exported first, one
/// JSON line each with attempts and output), keeps their usage and audit,
/// leaves running tasks and other projects alone, and shows in metrics;
/// bad retentions are refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_past_their_projects_retention_are_exported_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    let server = Server::start(
        &dir.path().join("data"),
        &["--retention-export", export.to_str().unwrap(), "--retention-interval", "1s", "--max-tasks", "8"],
    );
    let admin = server.http();
    let acme = server.http_as(Some(&project(&admin, "acme").await));
    let other = server.http_as(Some(&project(&admin, "other").await));

    // Refused, each naming the field; the policy is unchanged.
    for bad in [json!(0), json!(-1), json!(4_000_000_000_000u64), json!("30d"), json!(1.5)] {
        let (status, body) = admin.send(reqwest::Method::PUT, "/v1/projects/acme/policy", &json!({ "retention_seconds": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["field"].as_str().unwrap_or_default().contains("retention_seconds"), "{bad}: {body}");
    }
    let (status, body) = acme.send(reqwest::Method::PUT, "/v1/projects/acme/policy", &json!({ "retention_seconds": 1 })).await;
    assert_eq!(status, 403, "a project sets no retention of its own: {body}");
    let refused = server.cli(&["project", "policy", "acme", "--retention", "0s"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--retention"), "{refused:?}");

    // Tasks of both projects finish; one of acme's is still running when
    // the retention is set.
    let (kept_text, _) = common::run_to_end(&acme, sh("echo kept; printf '\\377\\376' >&2")).await;
    let (second, _) = common::run_to_end(&acme, sh("exit 3")).await;
    let (theirs, _) = common::run_to_end(&other, sh("echo theirs")).await;
    let running = common::submit(&acme, sh("sleep 4")).await;
    common::wait_running(&acme, &running).await;
    let usage_before = acme.get("/v1/usage?by=day").await.1;
    let out = server.cli(&["project", "policy", "acme", "--retention", "2s"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("retention:      2s"), "{out:?}");

    let gone = |http: &Http, id: String| {
        let http = http.clone();
        async move { http.get(&format!("/v1/tasks/{id}")).await.0 == 404 }
    };
    let finished = [kept_text["id"].as_str().unwrap().to_string(), second["id"].as_str().unwrap().to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(gone(&acme, finished[0].clone()).await && gone(&acme, finished[1].clone()).await) {
        assert!(Instant::now() < deadline, "acme's finished tasks were not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The running task stays while it runs; another project's stays.
    let (status, still) = acme.get(&format!("/v1/tasks/{running}")).await;
    assert_eq!(status, 200, "a running task is never removed: {still}");
    assert_eq!(other.get(&format!("/v1/tasks/{}", theirs["id"].as_str().unwrap())).await.0, 200);

    // Exported first: one line per task, its attempts, its output (text as
    // text, other bytes in base64).
    let day = std::fs::read_dir(export.join("acme")).unwrap().next().expect("a day's file").unwrap().path();
    let lines: Vec<Value> = std::fs::read_to_string(&day).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let line_of = |id: &str| lines.iter().find(|l| l["task"]["id"] == id).unwrap_or_else(|| panic!("{id} not exported: {lines:?}"));
    let first = line_of(&finished[0]);
    assert_eq!(first["task"]["state"], "succeeded");
    assert_eq!(first["task"]["attempts"][0]["exit_code"], 0, "{first}");
    let logs = first["logs"].as_array().unwrap();
    assert!(logs.iter().any(|c| c["stream"] == "stdout" && c["text"] == "kept\n"), "{first}");
    assert!(logs.iter().any(|c| c["stream"] == "stderr" && c["base64"] == "//4="), "{first}");
    assert_eq!(line_of(&finished[1])["task"]["exit_code"], 3);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&day).unwrap().permissions().mode() & 0o777, 0o600, "the export holds tasks' environments");
    assert_eq!(std::fs::metadata(export.join("acme")).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!export.join("other").exists(), "a project without a retention exports nothing");

    // Usage is what it was; the audit says what went.
    let usage_after = acme.get("/v1/usage?by=day").await.1;
    assert_eq!(usage_after["usage"], usage_before["usage"], "{usage_before} / {usage_after}");
    let (_, audit) = admin.get("/v1/audit?project=acme").await;
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "task.expire" && e["actor"] == "retention"), "{audit}");

    // The running task goes too, once it has finished and its retention passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone(&acme, running.clone()).await {
        assert!(Instant::now() < deadline, "the task that was running was not removed after it finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = admin.text("/metrics").await.1;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the metrics"))
    };
    assert_eq!(value("shepherd_retention_removed_tasks_total{project=\"acme\"}"), 3.0);
    assert_eq!(value("shepherd_retention_exported_tasks_total"), 3.0);
    assert!(value("shepherd_store_size_bytes") > 0.0);
    assert!(value("shepherd_store_oldest_task_timestamp_seconds") > 1.7e9);
}

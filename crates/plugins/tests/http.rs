//! HTTP extenders against a real HTTP server on loopback: batched filter
//! and score calls, the extender's reasons, timeouts with either error
//! policy, answers that lie, and the circuit breaker.

use shepherd_core::{Resources, TaskId};
use shepherd_plugins::load;
use shepherd_sched::{NodeSnapshot, PendingTask};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves `answer(path, body)` over HTTP/1.1 with keep-alive; counts requests.
fn serve(answer: impl Fn(&str, &serde_json::Value) -> (u16, String, Duration) + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ext", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let (answer, counted) = (Arc::new(answer), count.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (answer, counted) = (answer.clone(), counted.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (status, text, delay) = answer(&path, &serde_json::from_slice(&body).unwrap());
                    std::thread::sleep(delay);
                    let reply =
                        format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, count)
}

fn nodes() -> Vec<NodeSnapshot> {
    (0..10)
        .map(|i| {
            let mut n = NodeSnapshot::new(format!("n{i}"), Resources { cpu_millicores: 4000, memory_mib: 4096 });
            n.labels.insert("cost".into(), i.to_string());
            n
        })
        .collect()
}

fn tasks(from: u128, count: u128, profile: &str) -> Vec<PendingTask> {
    (from..from + count)
        .map(|i| {
            let mut t = PendingTask::new(TaskId(ulid::Ulid(i + 1)), Resources { cpu_millicores: 1000, memory_mib: 256 });
            t.profile = Some(profile.into());
            t
        })
        .collect()
}

/// Rejects odd nodes; scores cheaper (lower `cost`) nodes higher.
fn extender(path: &str, body: &serde_json::Value) -> (u16, String, Duration) {
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(body["args"]["flavour"], "test", "the profile's settings come along");
    assert!(body["task"]["id"].is_string() && body["task"]["resources"]["cpu_millicores"] == 1000);
    let answer = if path.ends_with("/filter") {
        let rejected: serde_json::Map<String, serde_json::Value> = nodes
            .iter()
            .filter(|n| n["labels"]["cost"].as_str().unwrap().parse::<u32>().unwrap() % 2 == 1)
            .map(|n| (n["id"].as_str().unwrap().to_string(), "odd cost".into()))
            .collect();
        serde_json::json!({ "rejected": rejected })
    } else {
        let scores: serde_json::Map<String, serde_json::Value> = nodes
            .iter()
            .map(|n| {
                (n["id"].as_str().unwrap().to_string(), (1.0 - n["labels"]["cost"].as_str().unwrap().parse::<f64>().unwrap() / 10.0).into())
            })
            .collect();
        serde_json::json!({ "scores": scores })
    };
    (200, answer.to_string(), Duration::ZERO)
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "[plugins.cost]\nhttp = \"{url}\"\nfilter = true\nscore = true\n{extra}\n[profiles.cheap]\nfilters = [\"resources\", \"cost\"]\nscores = {{ cost = 1.0 }}\ncandidates = 10\n[profiles.cheap.args.cost]\nflavour = \"test\"\n"
    )
}

#[test]
fn an_extender_filters_and_scores_in_one_call_per_task() {
    let (url, count) = serve(extender);
    let loaded = load(&config(&url, ""), Path::new("/")).unwrap();
    let plan = loaded.engine.place_batch(nodes(), tasks(0, 4, "cheap"), &HashMap::new(), 1);
    // Cheapest even node first: n0 takes all four (4 cores).
    assert!(plan.placements.iter().all(|p| p.node_id == "n0"), "{:?}", plan.placements);
    let calls = count.load(Ordering::SeqCst);
    assert!(calls <= 4 * 2, "{calls} calls for 4 tasks");
    let plan = loaded.engine.place_batch(
        nodes().into_iter().filter(|n| n.id == "n1" || n.id == "n3").collect(),
        tasks(10, 1, "cheap"),
        &HashMap::new(),
        1,
    );
    assert_eq!(
        plan.unplaced[0].hold.to_string(),
        "no node can ever run this task (0/2 fit even with nothing running): 2 rejected by cost: odd cost"
    );
}

#[test]
fn timeouts_garbage_and_the_circuit_breaker() {
    // Slow: every call takes 300 ms against a 50 ms timeout.
    let (url, count) = serve(|p, b| {
        let (s, t, _) = extender(p, b);
        (s, t, Duration::from_millis(300))
    });
    let reject = load(&config(&url, "timeout_ms = 50\nretry_after_seconds = 1\ndisable_after = 3"), Path::new("/")).unwrap();
    let plan = reject.engine.place_batch(nodes(), tasks(0, 1, "cheap"), &HashMap::new(), 1);
    assert!(plan.unplaced[0].hold.to_string().contains("rejected by cost: timed out"), "{}", plan.unplaced[0].hold);
    for i in 0..5 {
        reject.engine.place_batch(nodes(), tasks(100 + i, 1, "cheap"), &HashMap::new(), 1);
    }
    let status = reject.plugins[0].status();
    assert_eq!(status.state, "disabled");
    // While open, no call reaches the extender.
    let before = count.load(Ordering::SeqCst);
    let plan = reject.engine.place_batch(nodes(), tasks(200, 1, "cheap"), &HashMap::new(), 1);
    assert!(
        plan.unplaced[0].hold.to_string().contains("disabled after 3 failures in a row (last: timed out)"),
        "{}",
        plan.unplaced[0].hold
    );
    assert_eq!(count.load(Ordering::SeqCst), before);
    // Half open after retry_after: one more try.
    std::thread::sleep(Duration::from_millis(1100));
    reject.engine.place_batch(nodes(), tasks(300, 1, "cheap"), &HashMap::new(), 1);
    assert!(count.load(Ordering::SeqCst) > before);

    // on_error = "ignore": the extender is left out and the task is placed.
    let ignore = load(&config(&url, "timeout_ms = 50\non_error = \"ignore\""), Path::new("/")).unwrap();
    let plan = ignore.engine.place_batch(nodes(), tasks(400, 1, "cheap"), &HashMap::new(), 1);
    assert_eq!(plan.placements.len(), 1);

    // Answers that lie: a node it was not asked about, a score out of range, not JSON, a 500.
    for (target, status, body, words) in [
        ("/filter", 200, r#"{"rejected": {"elsewhere": "x"}}"#, "not asked about"),
        ("/score", 200, r#"{"scores": {"n0": 7.5}}"#, "scores are in [0, 1]"),
        ("/score", 200, r#"{"scores": {"n0": 0.5}, "extra": 1}"#, "answered garbage"),
        ("/filter", 200, "<html>", "answered garbage"),
        ("/filter", 500, "{}", "answered HTTP 500"),
    ] {
        let (url, _) = serve(move |path, _| {
            let answer = if path.ends_with(target) { (status, body.to_string()) } else { (200, "{}".to_string()) };
            (answer.0, answer.1, Duration::ZERO)
        });
        let liar = load(&config(&url, ""), Path::new("/")).unwrap();
        let plan = liar.engine.place_batch(nodes(), tasks(500, 1, "cheap"), &HashMap::new(), 1);
        let reason = plan.unplaced.first().map(|u| u.hold.to_string()).unwrap_or_default();
        assert!(reason.contains("rejected by cost") && reason.contains(words), "{body}: {reason}");
    }
}

//! The agent API against a node that holds the join token and lies (issue
//! 27, items 7, 8 and 18): it cannot register as another live node, write
//! output into another node's task or past the bounds, or fill the
//! server's log with reports about tasks that are not its own.

mod common;

use base64::Engine as _;
use common::{free_port, Http, Process};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "agent-api-join-token";

/// An agent speaking the protocol by hand.
struct FakeAgent {
    base: String,
    client: reqwest::Client,
    token: String,
}

async fn register(base: &str, node_id: &str, secret: Option<&str>) -> (u16, Value) {
    let mut body = json!({
        "join_token": TOKEN, "node_id": node_id, "hostname": node_id, "driver": "process",
        "capacity": {"cpu_millicores": 4000, "memory_mib": 4096}, "max_tasks": 8,
        "labels": {"role": node_id}, "images": [],
    });
    if let Some(secret) = secret {
        body["node_secret"] = json!(secret);
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/agent/register"))
        .header("x-shepherd-agent-protocol", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

impl FakeAgent {
    async fn join(base: &str, node_id: &str, secret: &str) -> FakeAgent {
        let (status, registered) = register(base, node_id, Some(secret)).await;
        assert_eq!(status, 200, "{registered}");
        FakeAgent { base: base.to_string(), client: reqwest::Client::new(), token: registered["node_token"].as_str().unwrap().to_string() }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("x-shepherd-agent-protocol", "1")
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Output of `task`'s `attempt`: how many chunks the server refused.
    async fn write(&self, task: &str, attempt: u32, chunks: &[Vec<u8>]) -> u64 {
        let chunks: Vec<Value> = chunks
            .iter()
            .map(|data| json!({"task_id": task, "attempt": attempt, "stream": 1, "data": base64::engine::general_purpose::STANDARD.encode(data)}))
            .collect();
        let (status, answer) = self.post("/v1/agent/logs", &json!({ "chunks": chunks })).await;
        assert_eq!(status, 200, "{answer}");
        answer["refused"].as_u64().unwrap()
    }
}

#[tokio::test]
async fn a_lying_node_cannot_take_another_nodes_id_output_or_the_servers_log() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("server");
    let log = dir.path().join("server.log");
    let _server = Process::start(
        &["server", "--listen", &listen, "--data-dir", data.to_str().unwrap(), "--join-token", TOKEN],
        &log,
        "shepherd: API listening on ",
    );
    let base = format!("http://{listen}");
    let http = Http { base: base.clone(), client: common::client() };
    let victim = FakeAgent::join(&base, "victim", "victim-secret").await;
    let liar = FakeAgent::join(&base, "liar", "liar-secret").await;

    // Item 8: the victim's id with another secret, or none, is refused,
    // named and audited; the victim itself registers again as often as it likes.
    for secret in [Some("liar-secret"), None, Some("")] {
        let (status, body) = register(&base, "victim", secret).await;
        assert_eq!((status, body["error"]["field"].as_str()), (409, Some("node_id")), "{secret:?}: {body}");
    }
    let victim = FakeAgent { token: FakeAgent::join(&base, "victim", "victim-secret").await.token, ..victim };
    let (_, audit) = http.get("/v1/audit").await;
    let refused = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "node.register_refused").count();
    assert_eq!(refused, 3, "{audit}");

    // A task placed on the victim.
    let (status, task) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "constraints": ["node.id==victim"]})).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let began = Instant::now();
    while http.get(&format!("/v1/tasks/{id}")).await.1["state"] != "scheduled" {
        assert!(began.elapsed() < Duration::from_secs(20), "never placed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Item 7: only the victim writes its output, in bounded chunks, up to
    // the per-attempt bound (4 MiB by default).
    assert_eq!(liar.write(&id, 1, &[b"forged attempt header\n".to_vec()]).await, 1, "not the liar's attempt");
    assert_eq!(victim.write(&id, 2, &[b"no such attempt\n".to_vec()]).await, 1, "not an attempt of the victim's");
    assert_eq!(victim.write(&id, 1, &[b"hello\n".to_vec()]).await, 0);
    assert_eq!(victim.write(&id, 1, &[vec![b'x'; 2 * 1024 * 1024]]).await, 1, "a chunk past 1 MiB");
    let mib = vec![b'y'; 1024 * 1024];
    assert_eq!(victim.write(&id, 1, &[mib.clone(), mib.clone(), mib.clone(), mib.clone(), mib.clone()]).await, 2, "past 4 MiB in all");
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    assert!(logs.starts_with("hello\n") && !logs.contains("forged") && !logs.contains("no such"), "{}", &logs[..40.min(logs.len())]);
    assert!(logs.len() <= 4 * 1024 * 1024, "{} bytes stored", logs.len());

    // Item 18: a thousand reports about tasks not its own: none applied,
    // all counted, a line or two in the server's log.
    let fake = "01JDQ4V6Z5M7T8X9Y0A1B2C3D4";
    for _ in 0..10 {
        let events: Vec<Value> = (0..100)
            .map(|_| json!([fake, {"type": "start", "attempt": 1}]))
            .chain([json!([id, {"type": "start", "attempt": 1}])])
            .collect();
        let (status, answer) = liar.post("/v1/agent/events", &json!({ "events": events })).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["accepted"].as_array().unwrap().iter().all(|a| a == false), "{answer}");
    }
    assert_eq!(http.get(&format!("/v1/tasks/{id}")).await.1["state"], "scheduled", "the liar changed the victim's task");
    tokio::time::sleep(Duration::from_secs(1)).await; // the server's log is written in the background
                                                      // One line per node and 10 s, whatever it sent: the liar's first
                                                      // forged output, and the victim's output past the bounds.
    let lines = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("refused what a node sent")).count();
    assert_eq!(lines, 2, "lines for 1,010 refused reports and 5 refused chunks");
    let metrics = http.text("/metrics").await.1;
    let counted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("shepherd_agent_refusals_total{kind=\"report\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(counted, 1010.0, "{metrics}");
}

//! IronWorker API compatibility, proven with IronWorker's own Python client
//! (`iron_worker` 1.3.8, installed by scripts/test.sh): the script in
//! `tests/ironworker/client.py` uploads a zip code, queues 50 tasks, reads
//! logs, cancels, retries, reports progress from inside a task, creates a
//! schedule and lists tasks by status, against a server on the real
//! Docker Engine.

mod common;

use common::Server;
use serde_json::json;
use std::process::Command;

#[tokio::test]
async fn the_iron_worker_python_client_works_unmodified() {
    let python = std::env::var("SHEPHERD_TEST_PYTHON")
        .expect("SHEPHERD_TEST_PYTHON must name a Python with the iron_worker client: run scripts/test.sh");
    common::ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // Every address: a task reaches the server through its project
    // network's gateway to report progress.
    let listen = format!("0.0.0.0:{port}");
    let server = Server::start_on(&dir.path().join("data"), &listen, &["--driver", "docker", "--stack", "sh=busybox"]);
    let http = server.http();
    let (status, project) = http.post("/v1/projects", &json!({"name": "iron"})).await;
    assert_eq!(status, 201, "{project}");
    let token = project["token"]["token"].as_str().expect("the project's first token").to_string();

    // Refusals in IronWorker's terms: no token, another project.
    let anonymous = server.http_as(None);
    let (status, body) = anonymous.get("/2/projects/iron/codes").await;
    assert_eq!(status, 401, "{body}");
    let (_, other) = http.post("/v1/projects", &json!({"name": "other"})).await;
    let other = server.http_as(other["token"]["token"].as_str());
    let (status, body) = other.get("/2/projects/iron/codes").await;
    assert_eq!((status, body["msg"].as_str()), (404, Some("Project not found")));
    let (status, _) = other.get(&format!("/2/projects/iron/codes?oauth={token}")).await;
    assert_eq!(status, 404, "the header's token wins over another in the query");
    let (status, body) = anonymous.get(&format!("/2/projects/iron/codes?oauth={token}")).await;
    assert_eq!((status, body["codes"].as_array().map(Vec::len)), (200, Some(0)), "?oauth= is a token too: {body}");

    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ironworker/client.py"))
        .env("IRON_HOST", "127.0.0.1")
        .env("IRON_PORT", port.to_string())
        .env("IRON_PROJECT", "iron")
        .env("IRON_TOKEN", &token)
        .output()
        .expect("run the Python client");
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{said}");
    assert!(out.status.success(), "the IronWorker client failed:\n{said}\n{}", server.printed());
    assert!(said.contains("all IronWorker client calls succeeded"), "{said}");

    // An upload with `config` and `env_vars`, as other clients send them:
    // the worker gets the config as the file at -config (and CONFIG_FILE).
    let worker = "while [ $# -gt 0 ]; do case $1 in -config) C=$2; shift;; esac; shift; done\n\
                  echo \"config=$(cat \"$C\") same=$([ \"$C\" = \"$CONFIG_FILE\" ] && echo yes) greeting=$GREETING\"\n";
    let zip = common::zip_of(&[("configured.sh", worker)]);
    let boundary = "shepherd-test-boundary";
    let data = json!({"name": "configured", "runtime": "sh", "file_name": "configured.sh",
        "config": {"db": "postgres://x"}, "env_vars": {"GREETING": "hello"}});
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{data}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"configured.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&zip);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    // A client of its own: the script ran for a while, and the pooled
    // connection of `http` may be closing just as it is reused.
    let uploaded = common::client_with(None)
        .post(format!("{}/2/projects/iron/codes", http.base))
        .header("authorization", format!("OAuth {token}"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", std::fs::read_to_string(dir.path().join("data.log")).unwrap_or_default()));
    assert_eq!(uploaded.status().as_u16(), 200, "{}", uploaded.text().await.unwrap_or_default());
    let (status, queued) = http
        .post(&format!("/2/projects/iron/tasks?oauth={token}"), &json!({"tasks": [{"code_name": "configured", "payload": "{}"}]}))
        .await;
    assert_eq!(status, 200, "{queued}");
    let id = queued["tasks"][0]["id"].as_str().unwrap().to_string();
    let done = http.wait_terminal(&id, std::time::Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, log) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    assert_eq!(log, "config={\"db\":\"postgres://x\"} same=yes greeting=hello\n");
}

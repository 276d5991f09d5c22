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
}

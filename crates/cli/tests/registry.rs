//! Images from a real registry (Debian's docker-registry on loopback, with
//! htpasswd logins; `scripts/registry.sh`), pulled by the real engine: a
//! project pulls with its own login and no other project can; fifty tasks
//! missing one image cause one pull; a pull past its deadline fails the
//! attempt with `image_pull_failed` and the retry succeeds once the
//! registry answers.

mod common;

use common::{ensure_test_image, run_to_end as run, Http, Server, TEST_IMAGE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/registry.sh");

/// A registry in a directory of its own, stopped when dropped.
struct Registry {
    dir: PathBuf,
    address: String,
    pushed: Vec<String>,
}

impl Registry {
    fn start(dir: &Path, port: Option<u16>) -> Registry {
        let mut command = Command::new("bash");
        command.args([SCRIPT, "start"]).arg(dir).args(["alice", "s3cret"]);
        if let Some(port) = port {
            command.arg(port.to_string());
        }
        let out = command.output().expect("run registry.sh");
        assert!(out.status.success(), "registry.sh start: {}", String::from_utf8_lossy(&out.stderr));
        Registry { dir: dir.to_path_buf(), address: String::from_utf8_lossy(&out.stdout).trim().to_string(), pushed: Vec::new() }
    }

    fn push(&mut self, name: &str) -> String {
        let out = Command::new("bash").args([SCRIPT, "push"]).arg(&self.dir).args([TEST_IMAGE, name]).output().unwrap();
        assert!(out.status.success(), "registry.sh push: {}", String::from_utf8_lossy(&out.stderr));
        let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.pushed.push(reference.clone());
        reference
    }

    fn stop(&self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).arg(&self.dir).output();
    }

    fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        for image in &self.pushed {
            forget(image);
        }
    }
}

/// Removes an image from the engine (so the next task must pull it).
fn forget(image: &str) {
    let _ = Command::new("docker").args(["rmi", "-f", image]).output();
}

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}x{nanos}", std::process::id())
}

fn task(image: &str, policy: &str) -> Value {
    json!({ "image": image, "command": ["sh", "-c", "echo pulled"], "pull_policy": policy, "timeout_seconds": 60 })
}

impl Registry {
    /// How many times the registry served `image`'s manifest by its tag (a
    /// pull asks once; the push's own check is a `PUT` and not counted).
    fn manifest_fetches(&self, image: &str) -> usize {
        let path = image.split_once('/').map(|(_, p)| p).unwrap_or(image);
        let (name, tag) = path.rsplit_once(':').unwrap_or((path, "latest"));
        let wanted = format!("/v2/{name}/manifests/{tag} HTTP");
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains(&wanted) && (l.contains("\"HEAD ") || l.contains("\"GET ")) && l.contains("\" 200 ")).count()
    }
}

#[tokio::test]
async fn a_project_pulls_with_its_own_login_and_no_other_project_can() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let image = registry.push(&format!("tools/busybox:{}", suffix()));
    forget(&image);
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let s = suffix();
    let (a_name, b_name, c_name) = (format!("rega{s}"), format!("regb{s}"), format!("regc{s}"));
    let a_token = project(&admin, &a_name).await;
    let a = server.http_as(Some(&a_token));
    let b = server.http_as(Some(&project(&admin, &b_name).await));
    let c = server.http_as(Some(&project(&admin, &c_name).await));

    // Project a logs in with the CLI (the password on standard input only).
    let mut login = Command::new(env!("CARGO_BIN_EXE_shepherd"));
    login.args(["registry", "login", &registry.address, "--username", "alice", "--password-stdin"]);
    login.env("SHEPHERD_SERVER", &server.url).env("SHEPHERD_TOKEN", &a_token).env("SHEPHERD_CONFIG", dir.path().join("none.toml"));
    login.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Listed by registry, never with the password; a secret of the project.
    let (_, list) = a.get(&format!("/v1/projects/{a_name}/registries")).await;
    assert_eq!(list["registries"][0]["registry"], registry.address.as_str(), "{list}");
    assert!(!list.to_string().contains("s3cret"));
    let (_, secrets) = a.get(&format!("/v1/projects/{a_name}/secrets")).await;
    assert!(!secrets.to_string().contains("s3cret"));
    // Project c logs in with a wrong password.
    let (status, _) = c
        .send(
            reqwest::Method::PUT,
            &format!("/v1/projects/{c_name}/registries/{}", registry.address),
            &json!({"username": "alice", "password": "wrong"}),
        )
        .await;
    assert_eq!(status, 204);

    // Without a login, or with a wrong one: image_pull_failed, in the registry's words.
    for (who, http) in [("no login", &b), ("a wrong login", &c)] {
        let (done, _) = run(http, task(&image, "always")).await;
        assert_eq!(done["state"], "failed", "{who}: {done}");
        let reason = done["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("image_pull_failed") && (reason.contains("auth") || reason.contains("unauthorized")), "{who}: {reason}");
    }
    // With its own: pulled and run.
    let (done, logs) = run(&a, task(&image, "if_not_present")).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "pulled"), "{done}");
    // Now on the node: `always` still asks the registry with each project's
    // own login, so b is refused, not handed a's copy...
    let (done, _) = run(&b, task(&image, "always")).await;
    assert_eq!(done["state"], "failed", "b used a's pull: {done}");
    let (done, _) = run(&a, task(&image, "always")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // ...while `if_not_present` runs what the node holds (as documented).
    let (done, _) = run(&b, task(&image, "if_not_present")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Logged out: a's `always` pull fails too.
    let out = server.cli_as(&a_token, &["registry", "logout", &registry.address]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (done, _) = run(&a, task(&image, "always")).await;
    assert_eq!(done["state"], "failed", "{done}");
    // Bad input names the field.
    let (status, body) = a
        .send(reqwest::Method::PUT, &format!("/v1/projects/{a_name}/registries/not%20a%20host"), &json!({"username": "u", "password": "p"}))
        .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("registry")), "{body}");
}

#[tokio::test]
async fn fifty_tasks_missing_one_image_cause_one_pull() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let image = registry.push(&format!("tools/fifty:{}", suffix()));
    forget(&image);
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker", "--max-tasks", "64"]);
    let admin = server.http();
    let (status, _) = admin
        .send(
            reqwest::Method::PUT,
            &format!("/v1/projects/default/registries/{}", registry.address),
            &json!({"username": "alice", "password": "s3cret"}),
        )
        .await;
    assert_eq!(status, 204);
    let before = registry.manifest_fetches(&image);
    let tasks: Vec<Value> = (0..50)
        .map(|_| {
            let mut t = task(&image, "if_not_present");
            t["resources"] = json!({"cpu_millicores": 10, "memory_mib": 16});
            t
        })
        .collect();
    let (status, body) = admin.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 201, "{body}");
    for id in body["ids"].as_array().unwrap() {
        let done = admin.wait_terminal(id.as_str().unwrap(), Duration::from_secs(120)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_eq!(registry.manifest_fetches(&image) - before, 1, "one pull for fifty tasks");
    let (_, metrics) = admin.text("/metrics").await;
    assert!(
        metrics.contains("shepherd_image_pulls_total 1"),
        "{}",
        metrics.lines().filter(|l| l.contains("pull")).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn a_pull_past_its_deadline_fails_and_the_retry_succeeds_once_the_registry_answers() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let image = registry.push(&format!("tools/late:{}", suffix()));
    forget(&image);
    let port = registry.port();
    registry.stop();
    // Something on the registry's port that accepts and never answers
    // (until told to stop: then it closes everything it held).
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    silent.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let silence = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            match silent.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let (status, _) = admin
        .send(
            reqwest::Method::PUT,
            &format!("/v1/projects/default/registries/{}", registry.address),
            &json!({"username": "alice", "password": "s3cret"}),
        )
        .await;
    assert_eq!(status, 204);
    let mut t = task(&image, "if_not_present");
    t["pull_timeout_seconds"] = json!(2);
    t["retry"] = json!({"max_attempts": 2, "backoff_seconds": 5});
    let started = Instant::now();
    let (status, created) = admin.post("/v1/tasks", &t).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // The first attempt fails on the pull's own deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (_, t) = admin.get(&format!("/v1/tasks/{id}")).await;
        if t["attempts"].as_array().is_some_and(|a| a.first().is_some_and(|a| a["finished_at"].is_string())) {
            break t;
        }
        assert!(Instant::now() < deadline, "the first attempt never ended: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = first["attempts"][0].to_string();
    assert!(reason.contains("image_pull_failed") && reason.contains("pull_timeout"), "{first}");
    assert!(started.elapsed() < Duration::from_secs(20), "the pull's deadline, not the task's: {:?}", started.elapsed());
    // The registry answers again: the retry pulls and runs.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    silence.join().unwrap();
    let _back = Registry::start(&dir.path().join("registry"), Some(port));
    let done = admin.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"].as_array().map(Vec::len), Some(2), "{done}");
}

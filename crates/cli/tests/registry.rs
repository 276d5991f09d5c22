//! Images from a real registry (Debian's docker-registry on loopback, with
//! htpasswd logins; `scripts/registry.sh`), pulled by the real engine: a
//! project pulls with its own login and no other project can; fifty tasks
//! missing one image cause one pull; a pull past its deadline fails the
//! attempt with `image_pull_failed` and the retry succeeds once the
//! registry answers; a slow pull shows its progress on the task; a digest
//! reference runs and each attempt records the image it ran; a registry
//! serving TLS with a test CA is pulled from once the engine trusts the CA;
//! prefetch puts an image on every node of a pool; the image cleanup
//! removes a pulled image no task needs and keeps one in use.

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
        self.push_local(TEST_IMAGE, name)
    }

    /// Pushes the engine's `local` image as `name`; its reference here.
    fn push_local(&mut self, local: &str, name: &str) -> String {
        let out = Command::new("bash").args([SCRIPT, "push"]).arg(&self.dir).args([local, name]).output().unwrap();
        assert!(out.status.success(), "registry.sh push: {}", String::from_utf8_lossy(&out.stderr));
        let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.pushed.push(reference.clone());
        reference
    }

    /// The manifest digest the registry serves for `NAME:TAG` (`sha256:…`).
    fn digest(&self, name_and_tag: &str) -> String {
        let out = Command::new("bash").args([SCRIPT, "digest"]).arg(&self.dir).arg(name_and_tag).output().unwrap();
        assert!(out.status.success(), "registry.sh digest: {}", String::from_utf8_lossy(&out.stderr));
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(digest.starts_with("sha256:"), "{digest:?}");
        digest
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
    // Issue 27, item 9: nor by any other way to the node's copy: every
    // pull policy, by digest, warm; a prefetch without a login holds
    // nothing for b.
    let digest = registry.digest(image.split_once('/').unwrap().1);
    let by_digest = format!("{}@{digest}", image.rsplit_once(':').unwrap().0);
    let mut warm = task(&image, "if_not_present");
    warm["reuse"] = json!({ "idle_seconds": 30 });
    for (how, body) in [
        ("if_not_present", task(&image, "if_not_present")),
        ("never", task(&image, "never")),
        ("by digest", task(&by_digest, "if_not_present")),
        ("warm", warm.clone()),
    ] {
        for (who, http) in [("b", &b), ("c", &c)] {
            let (done, logs) = run(http, body.clone()).await;
            assert_eq!(done["state"], "failed", "{who} ran a's private pull {how}: {done} {logs}");
            assert!(done["reason"].as_str().unwrap_or_default().contains("image_pull_failed"), "{who} {how}: {done}");
        }
    }
    let (status, prefetched) = b.post("/v1/images/prefetch", &json!({ "image": image })).await;
    assert_eq!(status, 202, "{prefetched}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, held) = b.get(&format!("/v1/images/prefetch?image={}", image.replace(':', "%3A").replace('/', "%2F"))).await;
    assert_eq!(held["done"], false, "a prefetch without a login holds nothing for b: {held}");
    // a keeps running it, warm too; once b logs in, b pulls it itself and runs it.
    let (done, _) = run(&a, warm.clone()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    self::login(&b, &b_name, &registry.address).await;
    let (done, logs) = run(&b, task(&image, "if_not_present")).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "pulled"), "{done}");
    let (done, _) = run(&b, task(&by_digest, "never")).await;
    assert_eq!(done["state"], "succeeded", "b pulled it: its copy now: {done}");
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

/// With `--verify-images` the registry decides at every start of an image
/// a project pulled with its login: a project whose login was taken away
/// no longer runs even its own copy (without the flag it does).
#[tokio::test]
async fn with_verify_images_every_start_of_a_private_image_asks_the_registry() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let image = registry.push(&format!("tools/verified:{}", suffix()));
    forget(&image);
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker", "--verify-images"]);
    let admin = server.http();
    let name = format!("verify{}", suffix());
    let a = server.http_as(Some(&project(&admin, &name).await));
    login(&a, &name, &registry.address).await;
    let (done, _) = run(&a, task(&image, "if_not_present")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (done, _) = run(&a, task(&image, "never")).await;
    assert_eq!(done["state"], "succeeded", "verified with its login, the copy runs: {done}");
    let (status, _) = a.delete(&format!("/v1/projects/{name}/registries/{}", registry.address)).await;
    assert_eq!(status, 204);
    let (done, _) = run(&a, task(&image, "if_not_present")).await;
    assert_eq!(done["state"], "failed", "the registry refuses a project without a login: {done}");
    assert!(done["reason"].as_str().unwrap_or_default().contains("image_pull_failed"), "{done}");
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
    login(&admin, "default", &registry.address).await;
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
    login(&admin, "default", &registry.address).await;
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

/// Logs `http`'s project `project` in to `address` as alice.
async fn login(http: &Http, project: &str, address: &str) {
    let (status, body) = http
        .send(
            reqwest::Method::PUT,
            &format!("/v1/projects/{project}/registries/{address}"),
            &json!({"username": "alice", "password": "s3cret"}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

/// A local image of the test image plus `mib` MiB of random bytes (which
/// no compression shrinks), named `name`.
fn big_image(name: &str, mib: usize) {
    let container = format!("shepherd-big-{}", suffix());
    let out = Command::new("docker")
        .args(["run", "--name", &container, TEST_IMAGE, "sh", "-c", &format!("head -c {} /dev/urandom > /blob", mib << 20)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("docker").args(["commit", &container, name]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = Command::new("docker").args(["rm", "-f", &container]).output();
}

/// A TCP proxy to `target` that passes what comes back at about
/// `bytes_per_second` (a slow link to the registry), until dropped.
struct SlowLink {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowLink {
    fn new(target: u16, bytes_per_second: usize) -> SlowLink {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (mut client_in, mut server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 16 * 1024];
                    let chunk_time = Duration::from_secs_f64(buffer.len() as f64 / bytes_per_second as f64);
                    loop {
                        match server_in.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client_out.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(chunk_time.mul_f64(n as f64 / buffer.len() as f64));
                            }
                        }
                    }
                    let _ = client_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowLink { port, stop }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_slow_pull_shows_its_progress_and_each_attempt_records_the_image_it_ran() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let s = suffix();
    let local = format!("shepherd-test-big:{s}");
    big_image(&local, 12);
    let image = registry.push_local(&local, &format!("tools/big:{s}"));
    forget(&local);
    forget(&image);
    let digest = registry.digest(&format!("tools/big:{s}"));
    // The same repository through a link of ~3 MiB/s: a pull of ~4 s.
    let link = SlowLink::new(registry.port(), 3 << 20);
    let slow = format!("127.0.0.1:{}/tools/big:{s}", link.port);
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    login(&admin, "default", &registry.address).await;
    login(&admin, "default", &format!("127.0.0.1:{}", link.port)).await;

    // While the attempt waits for its image, the task says how far the pull got.
    let (status, created) = admin.post("/v1/tasks", &task(&slow, "if_not_present")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = admin.get(&format!("/v1/tasks/{id}")).await;
        if let Some(message) = t["progress"]["message"].as_str() {
            if seen.last().map(String::as_str) != Some(message) {
                seen.push(message.to_string());
            }
        }
        if t["state"] != "queued" && t["state"] != "scheduled" {
            break;
        }
        assert!(Instant::now() < deadline, "still waiting: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = admin.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let percents: Vec<u32> = seen.iter().filter_map(|m| m.strip_prefix("pulling image: ")?.strip_suffix('%')?.parse().ok()).collect();
    assert!(percents.iter().any(|p| *p > 0 && *p < 100), "the pull's progress was shown: {seen:?}");
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {percents:?}");
    assert!(done["progress"].is_null(), "the pull's progress goes once the task runs: {done}");
    // The attempt records the image it ran: the registry's digest.
    let ran = done["attempts"][0]["runtime"]["image_digest"].as_str().unwrap_or_default().to_string();
    assert!(ran.ends_with(&format!("@{digest}")), "{ran} is not {digest}: {done}");
    let (_, metrics) = admin.text("/metrics").await;
    assert!(metrics.contains("shepherd_image_pull_seconds_count"), "pull durations are measured");

    // A task naming the digest runs it, and records it.
    let by_digest = format!("{}/tools/big@{digest}", registry.address);
    let (done, logs) = run(&admin, task(&by_digest, "always")).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "pulled"), "{done}");
    assert_eq!(done["attempts"][0]["runtime"]["image_digest"], by_digest.as_str(), "{done}");
    let out = server.cli(&["inspect", done["id"].as_str().unwrap()]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("Attempt 1 ran image {by_digest}")), "{printed}");
    // A digest the registry does not have: image_pull_failed.
    let missing = format!("{}/tools/big@sha256:{}", registry.address, "0".repeat(64));
    let (done, _) = run(&admin, task(&missing, "if_not_present")).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["reason"].as_str().unwrap_or_default().contains("image_pull_failed"), "{done}");
    forget(&by_digest);
    forget(&slow);
}

/// An address of this host that is not loopback (the engine skips TLS
/// checks for 127.0.0.0/8): the engine's default bridge, else the first
/// address `hostname -I` gives.
fn host_address() -> String {
    let bridge = Command::new("sh").args(["-c", "ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1"]).output();
    let any = Command::new("hostname").arg("-I").output();
    let candidates = [bridge, any]
        .into_iter()
        .filter_map(Result::ok)
        .flat_map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>());
    let address = candidates
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
        .expect("no address of this host other than loopback");
    address.to_string()
}

/// Installs a registry's CA for the engine until dropped.
struct Trust(PathBuf);

impl Trust {
    fn new(dir: &Path) -> Trust {
        let out = Command::new("bash").args([SCRIPT, "trust"]).arg(dir).output().unwrap();
        assert!(out.status.success(), "registry.sh trust: {}", String::from_utf8_lossy(&out.stderr));
        Trust(dir.to_path_buf())
    }
}

impl Drop for Trust {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "untrust"]).arg(&self.0).output();
    }
}

#[tokio::test]
async fn a_registry_serving_tls_is_pulled_from_once_the_engine_trusts_its_ca() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let registry_dir = dir.path().join("registry");
    std::fs::create_dir_all(&registry_dir).unwrap();
    let out =
        Command::new("bash").args([SCRIPT, "start-tls"]).arg(&registry_dir).args(["alice", "s3cret", &host_address()]).output().unwrap();
    assert!(out.status.success(), "registry.sh start-tls: {}", String::from_utf8_lossy(&out.stderr));
    let mut registry =
        Registry { dir: registry_dir.clone(), address: String::from_utf8_lossy(&out.stdout).trim().to_string(), pushed: Vec::new() };
    let image = {
        let _trust = Trust::new(&registry_dir);
        registry.push(&format!("tools/tls:{}", suffix()))
    };
    forget(&image);
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    login(&admin, "default", &registry.address).await;
    // Not trusted: the engine refuses the certificate, and the task says so.
    let (done, _) = run(&admin, task(&image, "always")).await;
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("image_pull_failed") && (reason.contains("x509") || reason.contains("certificate")), "{reason}");
    // Trusted: pulled over TLS with the project's login.
    let _trust = Trust::new(&registry_dir);
    let (done, logs) = run(&admin, task(&image, "always")).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "pulled"), "{done}");
    assert!(done["attempts"][0]["runtime"]["image_digest"].as_str().is_some_and(|d| d.contains("@sha256:")), "{done}");
}

#[tokio::test]
async fn prefetch_puts_an_image_on_every_node_of_a_pool_and_no_other() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let image = registry.push(&format!("tools/prefetch:{}", suffix()));
    forget(&image);
    let token = "prefetch-join-token";
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker", "--join-token", token]);
    let admin = server.http();
    login(&admin, "default", &registry.address).await;
    let mut agents = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("agent{i}"));
        let log = dir.path().join(format!("agent{i}.log"));
        let args = [
            "agent",
            "--join",
            &server.url,
            "--join-token",
            token,
            "--data-dir",
            data.to_str().unwrap(),
            "--driver",
            "docker",
            "--node-label",
            "pool=burst",
            "--stop-tasks",
        ];
        agents.push((common::Process::start(&args, &log, "shepherd agent:"), log));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, nodes) = admin.get("/v1/nodes").await;
        let ready = nodes["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "ready" && n["labels"]["pool"] == "burst").count();
        if ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool's agents never joined: {nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = registry.manifest_fetches(&image);
    let out = server.cli(&["image", "prefetch", &image, "--pool", "burst", "--project", "default", "--timeout", "60s"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("onto 2 nodes of pool burst") && printed.contains("2/2 nodes hold it"), "{printed}");
    // Each node of the pool pulled it; the node outside the pool did not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.manifest_fetches(&image) - before < 2 {
        assert!(Instant::now() < deadline, "pulls: {}", registry.manifest_fetches(&image) - before);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, log) in &agents {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(text.contains("prefetched an image"), "{text}");
    }
    let up_log = std::fs::read_to_string(dir.path().join("data.log")).unwrap_or_default();
    assert!(!up_log.contains("prefetched an image"), "the node outside the pool was asked");
    // The pool's tasks find it there: `never` pulls nothing and runs.
    let mut t = task(&image, "never");
    t["pool"] = json!("burst");
    let (done, logs) = run(&admin, t).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "pulled"), "{done}");
    // The audit log has it; bad input names the field; a project prefetches for itself only.
    let (_, audit) = admin.get("/v1/audit").await;
    assert!(audit.to_string().contains("image.prefetch"), "{audit}");
    let (status, body) = admin.post("/v1/images/prefetch", &json!({"image": "Not An Image"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("image")), "{body}");
    let other = server.http_as(Some(&project(&admin, &format!("pf{}", suffix())).await));
    let (status, _) = other.get(&format!("/v1/images/prefetch?image={image}&project=default")).await;
    assert_eq!(status, 404);
    forget(&image);
}

#[tokio::test]
async fn the_image_cleanup_removes_pulled_images_no_task_needs_and_keeps_those_in_use() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(&dir.path().join("registry"), None);
    let s = suffix();
    // Two different images (two tags of one image are one image: in use together).
    let other = format!("shepherd-test-gc:{s}");
    big_image(&other, 1);
    let (unused, busy) = (registry.push(&format!("tools/gc-a:{s}")), registry.push_local(&other, &format!("tools/gc-b:{s}")));
    forget(&other);
    forget(&unused);
    forget(&busy);
    let server = Server::start(
        &dir.path().join("data"),
        &["--driver", "docker", "--image-cleanup-above", "0", "--image-cleanup-unused", "2s", "--image-cleanup-every", "1s"],
    );
    let admin = server.http();
    login(&admin, "default", &registry.address).await;
    let present = |image: &str| Command::new("docker").args(["image", "inspect", image]).output().unwrap().status.success();
    let (done, _) = run(&admin, task(&unused, "if_not_present")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // A task of the other image runs for a while.
    let mut long = task(&busy, "if_not_present");
    long["command"] = json!(["sleep", "12"]);
    let (status, created) = admin.post("/v1/tasks", &long).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    common::wait_running(&admin, &id).await;
    // The unused one goes; the one in use stays; the local test image (not pulled) stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while present(&unused) {
        assert!(Instant::now() < deadline, "the unused image was never removed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = || std::fs::read_to_string(dir.path().join("data.log")).unwrap_or_default();
    let cleanup_lines = || log().lines().filter(|l| l.contains("image")).map(str::to_string).collect::<Vec<_>>().join("\n");
    assert!(present(&busy), "an image in use was removed:\n{}", cleanup_lines());
    assert!(present(TEST_IMAGE), "an image the agent did not pull was removed");
    let done = admin.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Once unused past its time, it goes too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while present(&busy) {
        assert!(Instant::now() < deadline, "the image was never removed after its task");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(present(TEST_IMAGE));
    // Counted once the engine has answered the removal (a moment after the image is gone).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = admin.text("/metrics").await;
        if metrics.contains("shepherd_images_removed_total 2") {
            break;
        }
        let counted: Vec<&str> = metrics.lines().filter(|l| l.contains("images_removed")).collect();
        assert!(Instant::now() < deadline, "{}", counted.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

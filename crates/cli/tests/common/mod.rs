//! Starts the real `shepherd` binary as a server on a free port, and runs
//! CLI commands against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shepherd");

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A `shepherd up` process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// What it printed on stdout after the listening line.
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `shepherd up` on a free loopback port with `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts `shepherd up` listening on `listen`.
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_env(data_dir, listen, extra, &[])
    }

    /// Starts `shepherd up` listening on `listen` with extra environment.
    pub fn start_env(data_dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.with_extension("log")).expect("server log file");
        // The lifecycle tests use the process driver; Docker tests ask for `--driver docker`.
        let driver: &[&str] = if extra.contains(&"--driver") { &[] } else { &["--driver", "process"] };
        let grace: &[&str] = if extra.contains(&"--stop-grace") { &[] } else { &["--stop-grace", "2s"] };
        let mut child = Command::new(BIN)
            .args(["up", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(grace)
            .args(driver)
            .args(extra)
            .env("SHEPHERD_LOG", "info")
            .env("SHEPHERD_ADMIN_TOKEN", ADMIN_TOKEN)
            // The CLI config `up` writes goes beside the data, never to ~/.config.
            .env("SHEPHERD_CONFIG", data_dir.with_extension("cli.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start shepherd up");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("shepherd: API listening on ") {
                        break url.to_string();
                    }
                }
                _ => panic!("shepherd up exited before listening; see {}", data_dir.with_extension("log").display()),
            }
        };
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let printed = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        });
        Server { child, url, data_dir: data_dir.to_path_buf(), stdout }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id (to send it signals).
    #[allow(dead_code)]
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything printed on stdout since it listened.
    pub fn printed(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// SIGINT, as Ctrl-C, and wait for a clean exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "shepherd up exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("shepherd up did not stop within 30 s of SIGINT");
    }

    /// Runs a CLI command against this server with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(ADMIN_TOKEN, args)
    }

    /// Runs a CLI command against this server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SHEPHERD_SERVER", &self.url)
            .env("SHEPHERD_TOKEN", token)
            .env("SHEPHERD_CONFIG", self.data_dir.with_extension("none.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("run shepherd")
    }

    /// The API with the admin token.
    pub fn http(&self) -> Http {
        Http { base: self.url.clone(), client: client() }
    }

    /// The API with another token (`None`: no token at all).
    pub fn http_as(&self, token: Option<&str>) -> Http {
        Http { base: self.url.clone(), client: client_with(token) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JSON client for the API.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
}

impl Http {
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.expect("request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        self.send_raw(reqwest::Method::POST, path, body).await
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send_raw(method, path, body.to_string().into_bytes()).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.send_raw(reqwest::Method::DELETE, path, Vec::new()).await
    }

    pub async fn send_raw(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls until the task is terminal.
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, task) = self.get(&format!("/v1/tasks/{id}/wait?timeout_seconds=5")).await;
            assert_eq!(status, 200, "{task}");
            let state = task["state"].as_str().unwrap_or_default().to_string();
            if ["succeeded", "failed", "timed_out", "cancelled"].contains(&state.as_str()) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} still {state} after {limit:?}: {task}");
        }
    }
}

/// Submits a task; its id.
pub async fn submit(http: &Http, body: serde_json::Value) -> String {
    let (status, task) = http.post("/v1/tasks", &body).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_string()
}

/// Submits a task and waits (up to a minute) for its end: the task, and its output.
pub async fn run_to_end(http: &Http, body: serde_json::Value) -> (serde_json::Value, String) {
    let id = submit(http, body).await;
    let task = http.wait_terminal(&id, Duration::from_secs(60)).await;
    let (_, logs) = http.text(&format!("/v1/tasks/{id}/logs")).await;
    (task, logs)
}

/// Waits until a task is running.
pub async fn wait_running(http: &Http, id: &str) {
    for _ in 0..400 {
        let (_, task) = http.get(&format!("/v1/tasks/{id}")).await;
        if task["state"] == "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {id} never ran");
}

/// A task body running `sh -c SCRIPT`.
pub fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({ "image": "busybox", "command": ["sh", "-c", script] })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The image the Docker tests run, built locally by scripts/build-test-image.sh.
pub const TEST_IMAGE: &str = "busybox:latest";

/// Builds the test image once per test binary (the script is idempotent).
pub fn ensure_test_image() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/build-test-image.sh");
        let status = Command::new("bash").arg(script).status().expect("run build-test-image.sh");
        assert!(status.success(), "scripts/build-test-image.sh failed: is the Docker Engine running?");
    });
}

/// Names of the containers that carry a node's label.
pub fn containers_of(node_id: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=io.shepherd.node={node_id}"))
        .output()
        .expect("docker ps");
    assert!(output.status.success(), "docker ps failed");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

/// A `shepherd` process started with any arguments (server, agent), killed when dropped.
pub struct Process {
    pub child: Child,
    /// The line it printed that the caller waited for.
    pub banner: String,
}

impl Process {
    /// Starts `shepherd ARGS` and waits for a stdout line starting with `ready_prefix`.
    pub fn start(args: &[&str], log: &Path, ready_prefix: &str) -> Process {
        Process::start_in(&[], &[], args, log, ready_prefix)
    }

    /// [`Process::start`] under `prefix` (e.g. `ip netns exec NS`), with
    /// `env` added.
    pub fn start_in(prefix: &[&str], env: &[(&str, &str)], args: &[&str], log: &Path, ready_prefix: &str) -> Process {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("SHEPHERD_LOG", "info")
            .env("SHEPHERD_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start shepherd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let banner = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready_prefix) => break line,
                Some(Ok(_)) => continue,
                _ => panic!("shepherd {args:?} exited before printing {ready_prefix:?}"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Process { child, banner }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// An HTTP client sending the admin token (with rustls' ring provider
/// installed, as the binary does).
pub fn client() -> reqwest::Client {
    client_with(Some(ADMIN_TOKEN))
}

/// An HTTP client sending `token`, or no token.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    shepherd_agent::remote::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    }
    reqwest::Client::builder().default_headers(headers).build().expect("HTTP client")
}

/// A new, empty database on the test PostgreSQL server
/// (`SHEPHERD_TEST_POSTGRES`, started by scripts/test.sh); its URL.
pub async fn fresh_postgres_database() -> String {
    let url = std::env::var("SHEPHERD_TEST_POSTGRES")
        .expect("SHEPHERD_TEST_POSTGRES must name a PostgreSQL server: run scripts/test.sh, or start one with scripts/postgres.sh");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    let name = format!("shepherd_cli_{}", ulid_like());
    client.execute(&format!("CREATE DATABASE {name}"), &[]).await.expect("create a test database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

fn ulid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}_{nanos}", std::process::id())
}

/// A zip of `files` (name, contents), each executable.
pub fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut buffer);
        for (name, data) in files {
            writer.start_file(*name, zip::write::SimpleFileOptions::default().unix_permissions(0o755)).expect("a zip entry");
            writer.write_all(data.as_bytes()).expect("zip data");
        }
        writer.finish().expect("a zip");
    }
    buffer.into_inner()
}

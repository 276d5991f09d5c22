//! `shepherd up --store postgres://…`: the whole server on PostgreSQL, a task
//! run through the CLI, and nothing lost across a restart.

mod common;

use common::{Http, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_runs_tasks_and_keeps_them_across_a_restart() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--store", &url]);
    let run = server.cli(&["run", "--wait", "busybox", "--", "sh", "-c", "echo from postgres; exit 4"]);
    assert_eq!(run.status.code(), Some(4), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "from postgres\n");
    let queued = server.cli(&["run", "--constraint", "node.labels.region==mars", "busybox", "--", "true"]);
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_string();
    server.stop();
    // The SQLite file is not where the state is.
    assert!(!data.join("shepherd.db").exists());
    let server = Server::start(&data, &["--store", &url, "--store-pool-size", "5", "--store-statement-timeout", "10s"]);
    let http = server.http();
    let (_, metrics) = http.text("/metrics").await;
    assert!(metrics.contains("shepherd_store_pool_connections{state=\"max\"} 5"), "{metrics}");
    assert!(metrics.contains("shepherd_store_pool_wait_seconds_total"), "{metrics}");
    let (status, task) = http.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "queued");
    let (_, list) = http.get("/v1/tasks?state=failed").await;
    assert_eq!(list["tasks"][0]["exit_code"], 4, "{list}");
    let (_, audit) = http.get("/v1/audit?project=default").await;
    assert!(audit["entries"].as_array().unwrap().len() >= 3, "{audit}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn a_wrong_store_url_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--driver", "process", "--listen", "127.0.0.1:0", "--store", "mysql://x", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use `sqlite` or a PostgreSQL URL"));
    let out = std::process::Command::new(common::BIN)
        .args([
            "up",
            "--driver",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres://shepherd:hunter2@127.0.0.1:1/x",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("SHEPHERD_CONFIG", dir.path().join("cli.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL at postgres://shepherd:***@127.0.0.1:1/x"), "{stderr}");
    assert!(!stderr.contains("hunter2"));
}

/// A PostgreSQL server of the test's own (it is restarted, so not the
/// shared one), stopped when dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

const POSTGRES_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres.sh");

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("bash").arg(POSTGRES_SH).arg("start").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "postgres.sh start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        OwnPostgres { dir, url }
    }

    /// Stops it (`immediate`: as a crash would), waits `pause`, starts it again.
    fn restart(&self, mode: &str, pause: Duration) {
        let out = std::process::Command::new("bash")
            .arg(POSTGRES_SH)
            .arg("restart")
            .arg(self.dir.path())
            .arg(mode)
            .arg(pause.as_secs_f64().to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh restart: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash").arg(POSTGRES_SH).arg("stop").arg(self.dir.path()).output();
    }
}

/// Submits tasks at a steady pace (singles and batches of 5, about 60 a
/// second: what the agent can also run) until `stop`;
/// returns the ids the server acknowledged and how many requests it refused
/// (only ever 503, with a JSON body, while the database is away).
async fn submit_until(base: String, markers: std::path::PathBuf, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let client = common::client();
    let task = json!({
        "image": "busybox",
        "command": ["sh", "-c", format!("echo ran >> {}/$SHEPHERD_TASK_ID", markers.display())],
        "resources": {"cpu_millicores": 10, "memory_mib": 4},
    });
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for round in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (path, body) =
            if round % 2 == 0 { ("/v1/tasks", task.clone()) } else { ("/v1/tasks/batch", json!({"tasks": vec![task.clone(); 5]})) };
        let sent = tokio::time::timeout(Duration::from_secs(20), client.post(format!("{base}{path}")).json(&body).send()).await;
        let response = sent.expect("the server answers within 20 s").expect("the server is reachable");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        let body: Value = response.json().await.unwrap_or_default();
        match status {
            201 => match (body["id"].as_str(), body["ids"].as_array()) {
                (Some(id), _) => acknowledged.push(id.to_string()),
                (_, Some(ids)) => acknowledged.extend(ids.iter().filter_map(|v| v.as_str()).map(str::to_string)),
                _ => panic!("201 without ids: {body}"),
            },
            503 => {
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                assert!(retry_after, "a 503 says when to retry");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    (acknowledged, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing_acknowledged() {
    // Needs PostgreSQL installed, as every test here does.
    let _ = common::fresh_postgres_database().await;
    let postgres = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let server = Server::start(&dir.path().join("data"), &["--store", &postgres.url, "--max-tasks", "20"]);
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(submit_until(server.url.clone(), markers.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A clean restart, then one as after a crash, each with the database
    // away for a while.
    let pg = Arc::new(postgres);
    for mode in ["fast", "immediate"] {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.restart(mode, Duration::from_secs(2))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, refused) = submitter.await.unwrap();
    eprintln!("{} tasks acknowledged, {refused} requests refused while the database was away", acknowledged.len());
    assert!(acknowledged.len() > 200, "the load went on: {}", acknowledged.len());

    // Every acknowledged task is there and runs, exactly once.
    let http = server.http();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, health) = http.get("/v1/health").await;
        let tasks = &health["tasks"];
        let open = ["queued", "scheduled", "running"].iter().map(|s| tasks[*s].as_u64().unwrap_or(0)).sum::<u64>();
        if status == 200 && open == 0 {
            assert!(tasks["succeeded"].as_u64().unwrap_or(0) >= acknowledged.len() as u64, "{health}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "tasks did not finish after the restarts: {health}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for id in &acknowledged {
        let (status, task) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "acknowledged task {id} is gone: {task}");
        assert_eq!(task["state"], "succeeded", "{task}");
        let ran = std::fs::read_to_string(markers.join(id)).unwrap_or_default();
        assert_eq!(ran.lines().count(), 1, "task {id} ran {} times", ran.lines().count());
    }
}

/// The index of the server that leads.
async fn leader_of(servers: &[Option<Server>]) -> usize {
    for _ in 0..300 {
        for (i, server) in servers.iter().enumerate() {
            let Some(server) = server else { continue };
            let (_, health) = server.http().get("/v1/health").await;
            if health["server"]["role"] == "leader" {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader");
}

/// How many slots a schedule has fired.
async fn fired(http: &common::Http, id: &str) -> u64 {
    http.get(&format!("/v1/schedules/{id}")).await.1["fired"].as_u64().unwrap_or(0)
}

/// Two servers on one PostgreSQL: a schedule fires every second; the
/// leader is SIGKILLed and the other takes over. Every slot fired exactly
/// once (one task per slot, no slot twice, none missing), across the
/// leader change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_slot_once_across_a_leader_change() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Option<Server>> = (0..2)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", common::free_port());
            Some(Server::start_on(&dir.path().join(format!("s{i}")), &listen, &["--store", &url, "--leader-lease", "2s"]))
        })
        .collect();
    let first = leader_of(&servers).await;
    let http = servers[first].as_ref().unwrap().http();
    let (status, schedule) = http.post("/v1/schedules", &json!({"run_every": 1, "task": common::sh("true")})).await;
    assert_eq!(status, 201, "{schedule}");
    let id = schedule["id"].as_str().unwrap().to_string();
    while fired(&http, &id).await < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    servers[first].as_mut().unwrap().kill();
    servers[first] = None;
    let second = leader_of(&servers).await;
    assert_ne!(second, first);
    let http = servers[second].as_ref().unwrap().http();
    let before = fired(&http, &id).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fired(&http, &id).await < before + 4 {
        assert!(std::time::Instant::now() < deadline, "the new leader does not fire the schedule");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, paused) = http.post(&format!("/v1/schedules/{id}/pause"), &json!({})).await;
    let (_, list) = http.get(&format!("/v1/tasks?label=shepherd.schedule={id}&limit=1000")).await;
    let mut slots: Vec<String> =
        list["tasks"].as_array().unwrap().iter().map(|t| t["labels"]["shepherd.slot"].as_str().unwrap().to_string()).collect();
    assert_eq!(slots.len() as u64, paused["fired"].as_u64().unwrap(), "one task per fired slot: {paused}");
    slots.sort();
    let seconds: Vec<i64> = slots.iter().map(|s| shepherd_core::Timestamp::parse_rfc3339(s).unwrap().millis()).collect();
    for pair in seconds.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "each slot once, none missing: {slots:?}");
    }
    assert_eq!(paused["skipped"], 0, "{paused}");
}

/// PostgreSQL's own tool for this database's server version.
fn pg_tool(name: &str) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/postgres.sh installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| panic!("no {name}"))
}

/// Backups as docs/storage.md says: `pg_dump` of a live cluster while it
/// takes tasks, `pg_restore` into a fresh database, a server started on it:
/// everything acknowledged before the dump is there, and it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_cluster_is_dumped_restored_and_runs_again() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--store", &url]);
    let http = server.http();
    let (status, created) = http.post("/v1/projects", &json!({"name": "acme"})).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"]["token"].as_str().unwrap().to_string();
    let (status, _) = http.send(reqwest::Method::PUT, "/v1/projects/acme/secrets/db", &json!({"value": "s3cret"})).await;
    assert_eq!(status, 204);
    let (done, logs) = common::run_to_end(&http, common::sh("echo before the dump")).await;
    assert_eq!(logs, "before the dump\n");
    let done = done["id"].as_str().unwrap().to_string();
    let (_, queued) =
        http.post("/v1/tasks", &json!({"image": "busybox", "command": ["true"], "constraints": ["node.labels.later==yes"]})).await;
    let queued = queued["id"].as_str().unwrap().to_string();
    let mut acknowledged = vec![done.clone(), queued.clone()];
    // The cluster keeps taking tasks while it is dumped.
    let stop = Arc::new(AtomicBool::new(false));
    let (base, flag) = (server.url.clone(), stop.clone());
    let submitter = tokio::spawn(async move {
        let client = common::client();
        let mut ids = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let body =
                json!({"tasks": vec![json!({"image": "busybox", "command": ["true"], "constraints": ["node.labels.later==yes"]}); 20]});
            let response = client.post(format!("{base}/v1/tasks/batch")).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 201);
            let body: Value = response.json().await.unwrap();
            ids.extend(body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything acknowledged by now must be in the dump.
    let (_, page) = http.get("/v1/tasks?limit=1000").await;
    let before_dump: Vec<String> = page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    let dump = dir.path().join("cluster.dump");
    let out = std::process::Command::new(pg_tool("pg_dump")).args(["-Fc", "-f"]).arg(&dump).args(["-d", &url]).output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    stop.store(true, Ordering::Relaxed);
    acknowledged.extend(submitter.await.unwrap());
    server.stop();

    let restored = common::fresh_postgres_database().await;
    let out = std::process::Command::new(pg_tool("pg_restore"))
        .args(["--no-owner", "--exit-on-error", "-d", &restored])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&data, &["--store", &restored, "--node-label", "later=yes"]);
    let http = server.http();
    for id in &before_dump {
        let (status, task) = http.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "acknowledged before the dump, so in it: {id} {task}");
    }
    let (_, logs) = http.text(&format!("/v1/tasks/{done}/logs")).await;
    assert_eq!(logs, "before the dump\n");
    assert_eq!(http.wait_terminal(&queued, Duration::from_secs(60)).await["state"], "succeeded");
    let as_acme = server.http_as(Some(&token));
    let (secret_task, _) = common::run_to_end(
        &as_acme,
        json!({"image": "busybox", "command": ["sh", "-c", "test \"$DB\" = s3cret"], "secrets": [{"name": "db", "env": "DB"}]}),
    )
    .await;
    assert_eq!(secret_task["state"], "succeeded", "the token and the secret came back: {secret_task}");
    // New tasks take new ids and audit numbers after the restored ones.
    let (_, audit) = http.get("/v1/audit?project=acme").await;
    let seqs: Vec<i64> = audit["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]) && seqs.len() >= 3, "{audit}");
    // Every task the restore holds is one that was acknowledged.
    let (_, page) = http.get("/v1/tasks?limit=1000").await;
    for task in page["tasks"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        assert!(acknowledged.iter().any(|a| a == id) || task["project"] == "acme", "{id} was never acknowledged");
    }
}

/// A task stored by a follower wakes the leader through the store's
/// messages: with idle passes 60 s apart, it is still placed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wakes_the_leader_for_what_it_stored() {
    let url = common::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Option<Server>> = (0..2)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", common::free_port());
            Some(Server::start_env(
                &dir.path().join(format!("s{i}")),
                &listen,
                &["--store", &url, "--leader-lease", "2s"],
                &[("SHEPHERD_IDLE_PASS_MS", "60000")],
            ))
        })
        .collect();
    let leader = leader_of(&servers).await;
    let follower = servers[1 - leader].as_ref().unwrap().http();
    // Each server runs a node in its own process; tasks go to each in
    // turn. The leader learns of the follower's node through the store's
    // messages (its node records are otherwise read again only on a
    // pass), and an attempt placed there reaches it the same way (its
    // agent reconciles only every 30 s).
    let mut nodes = Vec::new();
    for _ in 0..100 {
        let (_, listed) = follower.get("/v1/nodes").await;
        nodes = listed["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for round in 0..6 {
        let node = nodes[round % 2]["id"].as_str().unwrap();
        let mut spec = common::sh("true");
        spec["constraints"] = json!([format!("node.id=={node}")]);
        let (status, task) = follower.post("/v1/tasks", &spec).await;
        assert_eq!(status, 201, "{task}");
        let id = task["id"].as_str().unwrap().to_string();
        // Far less than the idle pass or a reconcile: only a wake places
        // it this soon, and only a message starts it on another server.
        let done = follower.wait_terminal(&id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "succeeded", "round {round} on {node}: {done}");
    }
}

/// A network namespace of the test's own, joined to the host by a veth
/// pair (the host's end `host`, the namespace's `inside`, a /30), removed
/// with its firewall rules when dropped.
struct Netns {
    name: String,
    host: String,
    inside: String,
}

fn sh_ok(args: &[&str]) {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    fn make() -> Netns {
        let pid = std::process::id();
        let name = format!("shp{pid}");
        let (a, b) = (20 + pid % 200, (pid / 200 % 60) * 4);
        let (host, inside) = (format!("10.213.{a}.{}", b + 1), format!("10.213.{a}.{}", b + 2));
        let (host_end, inside_end) = (format!("shp{pid}h"), format!("shp{pid}n"));
        let netns = Netns { name: name.clone(), host: host.clone(), inside: inside.clone() };
        sh_ok(&["ip", "netns", "add", &name]);
        sh_ok(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", &inside_end]);
        sh_ok(&["ip", "link", "set", &inside_end, "netns", &name]);
        sh_ok(&["ip", "addr", "add", &format!("{host}/30"), "dev", &host_end]);
        sh_ok(&["ip", "link", "set", &host_end, "up"]);
        sh_ok(&["ip", "netns", "exec", &name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &inside_end]);
        sh_ok(&["ip", "netns", "exec", &name, "ip", "link", "set", &inside_end, "up"]);
        sh_ok(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Drops (`-A`) or lets through again (`-D`) everything the namespace
    /// sends to `port` on the host's end: a partition from that service.
    fn firewall(&self, rule: &str, port: u16) {
        let port = port.to_string();
        sh_ok(&[
            "ip", "netns", "exec", &self.name, "iptables", rule, "OUTPUT", "-p", "tcp", "-d", &self.host, "--dport", &port, "-j", "DROP",
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Forwards TCP connections from `listen` to `to` (PostgreSQL, for a
/// server in the namespace); returns the port it listens on.
async fn tcp_proxy(listen: &str, to: String) -> u16 {
    let listener = tokio::net::TcpListener::bind(format!("{listen}:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// The role a server says it has, if it answers within half a second.
async fn role(client: &reqwest::Client, base: &str) -> Option<String> {
    let response = tokio::time::timeout(Duration::from_millis(500), client.get(format!("{base}/v1/health")).send()).await.ok()?.ok()?;
    let health: Value = tokio::time::timeout(Duration::from_millis(500), response.json()).await.ok()?.ok()?;
    health["server"]["role"].as_str().map(str::to_string)
}

/// Submits a task every 50 ms to the first of `bases` that takes it, until
/// `stop`; returns the ids acknowledged.
async fn submit_anywhere(bases: Vec<String>, markers: std::path::PathBuf, stop: Arc<AtomicBool>) -> Vec<String> {
    let client = common::client();
    let task = json!({
        "image": "busybox",
        "command": ["sh", "-c", format!("echo ran >> {}/$SHEPHERD_TASK_ID", markers.display())],
        "resources": {"cpu_millicores": 10, "memory_mib": 4},
    });
    let mut acknowledged = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for base in &bases {
            let sent = tokio::time::timeout(Duration::from_secs(3), client.post(format!("{base}/v1/tasks")).json(&task).send()).await;
            let Ok(Ok(response)) = sent else { continue };
            if response.status().as_u16() == 201 {
                let body: Value = response.json().await.unwrap_or_default();
                acknowledged.push(body["id"].as_str().expect("an id").to_string());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acknowledged
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Chaos beyond a dead leader: two servers, the leader in a network
/// namespace of the test's own and the follower's clock 30 s behind
/// (libfaketime), one agent heartbeating through the follower.
/// - The skewed follower never takes the lease from a live leader, and the
///   node whose heartbeats it writes is never declared down by the leader.
/// - The leader is cut off from PostgreSQL (its packets to it dropped in
///   its namespace): the follower leads once the lease has run out, and
///   the old leader had stepped down by then; healed, it follows.
/// - The leader is killed while PostgreSQL restarts: the other server
///   takes over once the database is back.
/// Through it all a client submits tasks to whichever server answers:
/// every acknowledged task succeeds, and runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_from_postgres_a_restart_during_a_leader_change_and_a_skewed_follower() {
    let _ = common::fresh_postgres_database().await;
    assert!(std::path::Path::new(FAKETIME).exists(), "libfaketime is needed (apt-get install faketime; scripts/test.sh does)");
    let postgres = Arc::new(OwnPostgres::start());
    let netns = Netns::make();
    let pg_port = postgres.url.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_string();
    let proxy = tcp_proxy(&netns.host, format!("127.0.0.1:{pg_port}")).await;
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let token = "chaos-join-token";
    let server_args = |store: &str, listen: &str, data: &str| -> Vec<String> {
        [
            "server",
            "--store",
            store,
            "--listen",
            listen,
            "--data-dir",
            data,
            "--join-token",
            token,
            "--leader-lease",
            "2s",
            "--node-timeout",
            "8s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // The leader-to-be, in the namespace, reaching PostgreSQL through the proxy.
    let inside_url = format!("postgres://shepherd@{}:{proxy}/postgres", netns.host);
    let inside_listen = format!("{}:{}", netns.inside, common::free_port());
    let inside_base = format!("http://{inside_listen}");
    let args = server_args(&inside_url, &inside_listen, dir.path().join("s0").to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _s0 = common::Process::start_in(
        &["ip", "netns", "exec", &netns.name],
        &[],
        &args,
        &dir.path().join("s0.log"),
        "shepherd: API listening on ",
    );
    let client = common::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while role(&client, &inside_base).await.as_deref() != Some("leader") {
        assert!(std::time::Instant::now() < deadline, "the server in the namespace did not lead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The follower, its clock 30 s behind.
    let host_listen = format!("127.0.0.1:{}", common::free_port());
    let host_base = format!("http://{host_listen}");
    let start_follower = |log: &str| {
        let args = server_args(&postgres.url, &host_listen, dir.path().join("s1").to_str().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("LD_PRELOAD", FAKETIME), ("FAKETIME", "-30s"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
        common::Process::start_in(&[], &env, &args, &dir.path().join(log), "shepherd: API listening on ")
    };
    let mut s1 = Some(start_follower("s1.log"));
    let agent_data = dir.path().join("agent");
    let join = format!("{host_base},{inside_base}");
    let agent_args = [
        "agent",
        "--join",
        &join,
        "--join-token",
        token,
        "--data-dir",
        agent_data.to_str().unwrap(),
        "--driver",
        "process",
        "--max-tasks",
        "30",
    ];
    let _agent = common::Process::start(&agent_args, &dir.path().join("agent.log"), "shepherd agent: node ");
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(submit_anywhere(vec![host_base.clone(), inside_base.clone()], markers.clone(), stop.clone()));

    // Past a node timeout and many leases: the leader stays, the node stays ready.
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(role(&client, &inside_base).await.as_deref(), Some("leader"), "the skewed follower took the lease");
    }
    let http = Http { base: inside_base.clone(), client: client.clone() };
    let (_, nodes) = http.get("/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["state"], "ready", "a node beating through the skewed follower was declared down: {nodes}");
    let s0_log = dir.path().join("s0.log");
    let logged = std::fs::read_to_string(&s0_log).unwrap_or_default();
    assert!(!logged.contains("missed its heartbeats"), "a node beating through the skewed follower was declared down: {logged}");

    // The partition: the leader steps down before the follower can lead.
    netns.firewall("-A", proxy);
    let cut = std::time::Instant::now();
    let (mut stepped_down, mut follower_led) = (None, None);
    while follower_led.is_none() {
        if stepped_down.is_none() && std::fs::read_to_string(&s0_log).unwrap_or_default().contains("cannot renew the lease") {
            stepped_down = Some(cut.elapsed());
        }
        if role(&client, &host_base).await.as_deref() == Some("leader") {
            follower_led = Some(cut.elapsed());
        }
        assert!(cut.elapsed() < Duration::from_secs(30), "the follower did not lead after the partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stepped_down = stepped_down.expect("the cut-off leader stepped down before another led");
    eprintln!("partition: leader stepped down after {stepped_down:?}, the follower led after {follower_led:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    netns.firewall("-D", proxy);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while role(&client, &inside_base).await.as_deref() != Some("follower") {
        assert!(std::time::Instant::now() < deadline, "the healed server did not follow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leader dies while PostgreSQL restarts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(mut leader) = s1.take() {
        leader.kill();
    }
    let pg = postgres.clone();
    tokio::task::spawn_blocking(move || pg.restart("immediate", Duration::from_secs(1))).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while role(&client, &inside_base).await.as_deref() != Some("leader") {
        assert!(std::time::Instant::now() < deadline, "no leader after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _s1 = start_follower("s1-2.log");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = submitter.await.unwrap();
    assert!(acknowledged.len() > 100, "the load went on: {}", acknowledged.len());

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for id in &acknowledged {
        loop {
            let (status, task) = http.get(&format!("/v1/tasks/{id}")).await;
            if status == 200 && task["state"] == "succeeded" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "acknowledged task {id} did not succeed: {status} {task}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ran = std::fs::read_to_string(markers.join(id)).unwrap_or_default();
        assert_eq!(ran.lines().count(), 1, "task {id} ran {} times", ran.lines().count());
    }
}

//! Several servers on one PostgreSQL, three agents, and chaos (issue 12):
//! the leader SIGKILLed twice and a follower once, the leader frozen past its
//! lease and resumed (it must find itself fenced and step down without
//! writing). Every acknowledged task ends exactly once, no task ever has two
//! attempts running at once, no agent is left without a server, and the
//! API keeps answering from the surviving servers.

mod common;

use common::{free_port, Http, Process};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "ha-join-token";
const LEASE: Duration = Duration::from_secs(2);

struct Servers {
    dir: PathBuf,
    store: String,
    ports: Vec<u16>,
    procs: Vec<Option<Process>>,
}

impl Servers {
    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn start(&mut self, i: usize) {
        let data = self.dir.join(format!("server{i}"));
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let args = [
            "server",
            "--store",
            &self.store,
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--join-token",
            TOKEN,
            "--leader-lease",
            "2s",
            "--node-timeout",
            "8s",
        ];
        // A restarted server gets a log of its own: server1.log, server1-2.log, …
        let mut log = self.dir.join(format!("server{i}.log"));
        for n in 2.. {
            if !log.exists() {
                break;
            }
            log = self.dir.join(format!("server{i}-{n}.log"));
        }
        self.procs[i] = Some(Process::start(&args, &log, "shepherd: API listening on "));
    }

    fn http(&self, i: usize) -> Http {
        Http { base: self.url(i), client: common::client() }
    }

    /// The index of the server that says it leads, once exactly one does.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for i in 0..self.ports.len() {
                if self.procs[i].is_none() {
                    continue;
                }
                if let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(1), common::client().get(format!("{}/v1/health", self.url(i))).send()).await
                {
                    let health: Value = response.json().await.unwrap_or_default();
                    if health["server"]["role"] == "leader" {
                        leaders.push(i);
                    }
                }
            }
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader counts `target` succeeded tasks.
    async fn wait_done(&self, target: u64) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (_, health) = self.http(self.leader().await).get("/v1/health").await;
            if health["tasks"]["succeeded"].as_u64().unwrap_or(0) >= target {
                return;
            }
            assert!(Instant::now() < deadline, "stuck below {target} succeeded: {health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn task(markers: &Path) -> Value {
    // Each attempt notes its start and its end (nanoseconds), so two
    // attempts of one task running at once would show.
    let script = format!(
        "echo \"start $(date +%s%N) $SHEPHERD_ATTEMPT\" >> {m}/$SHEPHERD_TASK_ID; sleep 0.2; echo \"end $(date +%s%N) $SHEPHERD_ATTEMPT\" >> {m}/$SHEPHERD_TASK_ID",
        m = markers.display()
    );
    json!({
        "image": "busybox",
        "command": ["sh", "-c", script],
        "resources": {"cpu_millicores": 10, "memory_mib": 4},
        "retry": {"max_attempts": 5, "backoff_seconds": 0},
    })
}

/// What the API watcher saw.
#[derive(Debug, Default)]
struct ApiRecord {
    requests: u64,
    /// Requests to a live server that failed (any way), to be retried.
    failed: u64,
    /// The longest run of 5xx answers from one live server.
    worst_5xx: Duration,
    /// The longest run of failures of any kind (timeouts, refused
    /// connections) from one live server.
    worst_failing: Duration,
}

/// Polls every live server's task list, noting failures.
fn watch_api(servers: Vec<String>, up: Arc<Mutex<Vec<bool>>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<ApiRecord> {
    tokio::spawn(async move {
        let client = common::client();
        let mut record = ApiRecord::default();
        let mut failing_since: HashMap<usize, Instant> = HashMap::new();
        let mut erring_since: HashMap<usize, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            for (i, url) in servers.iter().enumerate() {
                if !up.lock().unwrap()[i] {
                    failing_since.remove(&i);
                    erring_since.remove(&i);
                    continue;
                }
                record.requests += 1;
                let status = match tokio::time::timeout(Duration::from_secs(2), client.get(format!("{url}/v1/tasks?limit=1")).send()).await
                {
                    Ok(Ok(r)) => Some(r.status()),
                    _ => None,
                };
                let ok = status.is_some_and(|s| s.is_success());
                let server_error = status.is_some_and(|s| s.is_server_error());
                if !ok {
                    record.failed += 1;
                }
                for (since, failing) in [(&mut failing_since, !ok), (&mut erring_since, server_error)] {
                    if failing {
                        since.entry(i).or_insert_with(Instant::now);
                    } else {
                        since.remove(&i);
                    }
                }
                if let Some(since) = failing_since.get(&i) {
                    record.worst_failing = record.worst_failing.max(since.elapsed());
                }
                if let Some(since) = erring_since.get(&i) {
                    record.worst_5xx = record.worst_5xx.max(since.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        record
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_survive_losing_their_leader_twice_a_follower_and_a_frozen_leader() {
    let dir = tempfile::tempdir().unwrap();
    // SHEPHERD_TEST_KEEP=1 keeps the servers' and agents' logs for a look after a failure.
    let dir_path = dir.path().to_path_buf();
    let _dir = match std::env::var_os("SHEPHERD_TEST_KEEP") {
        Some(_) => {
            let _ = dir.keep();
            None
        }
        None => Some(dir),
    };
    eprintln!("logs in {}", dir_path.display());
    // The leaders' in-memory views are checked against the store every 2 s.
    std::env::set_var("SHEPHERD_VIEW_CHECK", "2");
    let store = common::fresh_postgres_database().await;
    let mut servers = Servers { dir: dir_path.clone(), store, ports: (0..3).map(|_| free_port()).collect(), procs: vec![None, None, None] };
    for i in 0..3 {
        servers.start(i);
    }
    let urls: Vec<String> = (0..3).map(|i| servers.url(i)).collect();
    let mut agents = Vec::new();
    for a in 0..3 {
        // Each agent lists the servers starting from a different one.
        let join: Vec<String> = (0..3).map(|k| urls[(a + k) % 3].clone()).collect();
        let data = dir_path.join(format!("agent{a}"));
        let args = [
            "agent",
            "--join",
            &join.join(","),
            "--join-token",
            TOKEN,
            "--data-dir",
            data.to_str().unwrap(),
            "--driver",
            "process",
            "--max-tasks",
            "30",
            "--stop-grace",
            "1s",
        ];
        agents.push(Process::start(&args, &dir_path.join(format!("agent{a}.log")), "shepherd agent: node "));
    }
    let markers = dir_path.join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let up = Arc::new(Mutex::new(vec![true; 3]));
    let stop = Arc::new(AtomicBool::new(false));
    let api = watch_api(urls.clone(), up.clone(), stop.clone());

    // 3,000 tasks, through different servers.
    let mut ids = Vec::new();
    for batch in 0..6 {
        let (status, created) = servers.http(batch % 3).post("/v1/tasks/batch", &json!({"tasks": vec![task(&markers); 500]})).await;
        assert_eq!(status, 201, "{created}");
        ids.extend(created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    // Chaos: SIGKILL the leader, twice (restarting it after a while), then a follower.
    for (round, target) in [(0, 400u64), (1, 1000)] {
        servers.wait_done(target).await;
        let leader = servers.leader().await;
        eprintln!("round {round}: killing leader {leader}");
        up.lock().unwrap()[leader] = false;
        servers.procs[leader].as_mut().unwrap().kill();
        servers.procs[leader] = None;
        let next = servers.leader().await;
        assert_ne!(next, leader);
        tokio::time::sleep(LEASE).await;
        servers.start(leader);
        up.lock().unwrap()[leader] = true;
    }
    servers.wait_done(1600).await;
    let leader = servers.leader().await;
    let follower = (leader + 1) % 3;
    eprintln!("killing follower {follower}");
    up.lock().unwrap()[follower] = false;
    servers.procs[follower].as_mut().unwrap().kill();
    servers.procs[follower] = None;
    tokio::time::sleep(LEASE).await;
    servers.start(follower);
    up.lock().unwrap()[follower] = true;

    // Freeze the leader past its lease, then let it go on: it must find
    // itself fenced and follow, without a placement of its own.
    servers.wait_done(2200).await;
    let frozen = servers.leader().await;
    eprintln!("freezing leader {frozen}");
    up.lock().unwrap()[frozen] = false;
    servers.procs[frozen].as_ref().unwrap().signal(libc::SIGSTOP);
    tokio::time::sleep(LEASE * 3).await;
    let next = servers.leader().await;
    assert_ne!(next, frozen);
    servers.procs[frozen].as_ref().unwrap().signal(libc::SIGCONT);
    up.lock().unwrap()[frozen] = true;
    tokio::time::sleep(LEASE).await;
    let (_, health) = servers.http(frozen).get("/v1/health").await;
    assert_eq!(health["server"]["role"], "follower", "the frozen leader stepped down: {health}");

    // Every task ends, succeeded, exactly once; no two attempts of a task overlapped.
    servers.wait_done(3000).await;
    stop.store(true, Ordering::Relaxed);
    let api = api.await.unwrap();
    eprintln!("API: {api:?}");
    let http = servers.http(servers.leader().await);
    let (_, health) = http.get("/v1/health").await;
    assert_eq!(health["tasks"]["succeeded"], 3000, "{health}");
    for id in &ids {
        let lines = std::fs::read_to_string(markers.join(id)).unwrap_or_default();
        let attempts = attempts(&lines);
        let completed = attempts.iter().filter(|a| a.end.is_some()).count();
        assert_eq!(completed, 1, "task {id} completed {completed} times: {lines}");
        assert!(attempts.last().is_some_and(|a| a.end.is_some()), "task {id} ran again after it finished: {lines}");
        if let Some((a, b)) = overlapping(&attempts) {
            panic!("task {id}: attempts {a} and {b} ran at once: {lines}");
        }
    }
    assert!(api.worst_5xx <= LEASE, "a live server answered 5xx for longer than the lease: {api:?}");
    assert!(api.worst_failing <= LEASE * 2, "a live server failed requests for too long: {api:?}");
    // No agent was left without a server: all three are connected and ready.
    let (_, nodes) = http.get("/v1/nodes").await;
    let nodes = nodes["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{nodes:?}");
    // The views never held less than the store (releases from followers may
    // arrive late, which only holds capacity back for a moment).
    let mut checks = 0;
    for entry in std::fs::read_dir(&dir_path).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("server") && name.ends_with(".log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            checks += text.matches("scheduler view matches the store").count();
            for line in text.lines().filter(|l| l.contains("scheduler view differs")) {
                assert!(!line.contains("held too little"), "{name}: {line}");
            }
        }
    }
    assert!(checks > 0, "the leaders' views were checked");
    for mut agent in agents {
        agent.kill();
    }
}

/// One attempt as its marker lines tell it: when it started, and when it
/// ended if it got that far (an attempt that was stopped has no end).
#[derive(Debug, PartialEq)]
struct Attempt {
    number: String,
    start: u128,
    end: Option<u128>,
}

fn attempts(lines: &str) -> Vec<Attempt> {
    let mut attempts: Vec<Attempt> = Vec::new();
    for line in lines.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [kind, at, number] = parts[..] else { panic!("bad marker line {line:?}") };
        let at: u128 = at.parse().unwrap();
        match kind {
            "start" => attempts.push(Attempt { number: number.to_string(), start: at, end: None }),
            "end" => {
                let attempt = attempts.iter_mut().rev().find(|a| a.number == number && a.end.is_none());
                attempt.unwrap_or_else(|| panic!("an end without a start: {lines}")).end = Some(at);
            }
            other => panic!("bad marker {other:?}"),
        }
    }
    attempts
}

/// Two attempts whose runs overlap: one started while a finished one ran.
/// (An attempt without an end was stopped at a time the markers do not
/// show; the test also asks that no attempt starts after the finished one.)
fn overlapping(attempts: &[Attempt]) -> Option<(String, String)> {
    for a in attempts {
        for b in attempts {
            if std::ptr::eq(a, b) {
                continue;
            }
            let b_inside_a = match a.end {
                Some(end) => a.start <= b.start && b.start < end,
                None => false,
            };
            if b_inside_a {
                return Some((a.number.clone(), b.number.clone()));
            }
        }
    }
    None
}

#[test]
fn overlap_check_finds_overlaps_and_only_them() {
    let sequential = "start 10 1\nstart 20 2\nend 30 2\n";
    assert_eq!(overlapping(&attempts(sequential)), None);
    let twice = "start 10 1\nstart 15 2\nend 20 1\nend 30 2\n";
    assert!(overlapping(&attempts(twice)).is_some());
    let inside_unfinished = "start 10 1\nend 20 1\nstart 12 2\n";
    assert!(overlapping(&attempts(inside_unfinished)).is_some());
}

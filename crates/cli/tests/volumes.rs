//! What a project's tasks may use beyond CPU and memory, on the real
//! Docker Engine: a named volume keeps its data from one task of its
//! project to the next and is invisible to other projects; host paths and
//! the Docker socket are refused; 200 tasks with volumes leave no container
//! and no volume behind; internal project networks reach their own
//! project's tasks and nothing else; a node's device reaches only the tasks
//! that ask for it and whose project may.

mod common;

use common::{containers_of, ensure_test_image, run_to_end as run, submit, Http, Server, TEST_IMAGE};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// Removes what the test made on the engine however it ends.
struct Leftovers {
    volumes: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for name in &self.volumes {
            let _ = Command::new("docker").args(["volume", "rm", "-f", name]).output();
        }
        for name in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", name]).output();
        }
    }
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}x{nanos}", std::process::id())
}

async fn project(admin: &Http, name: &str) -> String {
    let (status, created) = admin.post("/v1/projects", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{created}");
    created["token"]["token"].as_str().unwrap().to_string()
}

fn task(script: &str) -> Value {
    json!({ "image": TEST_IMAGE, "command": ["sh", "-c", script], "timeout_seconds": 120 })
}

fn engine_volumes(project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label=io.shepherd.project={project}"))
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

async fn node_id(http: &Http) -> String {
    let (_, nodes) = http.get("/v1/nodes").await;
    nodes["nodes"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_volume_keeps_its_data_for_its_own_project_only() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let s = suffix();
    let (name_a, name_b) = (format!("vola{s}"), format!("volb{s}"));
    let _cleanup = Leftovers { volumes: vec![format!("shepherd-vol-{name_a}-cache")], networks: Vec::new() };
    let token_a = project(&admin, &name_a).await;
    let a = server.http_as(Some(&token_a));
    let b = server.http_as(Some(&project(&admin, &name_b).await));

    // Made with the CLI by the project's own token.
    let out = server.cli_as(&token_a, &["volume", "create", "cache"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("shepherd-vol-{name_a}-cache")));
    let out = server.cli_as(&token_a, &["volume", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cache"), "{}", String::from_utf8_lossy(&out.stdout));

    // One task writes, the next reads, as a non-root user too.
    let mut write = task("echo kept > /cache/f && id -u > /cache/who");
    write["volumes"] = json!([{ "name": "cache", "target": "/cache" }]);
    let (done, logs) = run(&a, write).await;
    assert_eq!(done["state"], "succeeded", "{done} {logs}");
    let mut read = task("cat /cache/f; touch /cache/x 2>/dev/null || echo read-only");
    read["volumes"] = json!([{ "name": "cache", "target": "/cache", "read_only": true }]);
    let (done, logs) = run(&a, read).await;
    assert_eq!(done["state"], "succeeded", "{done} {logs}");
    assert_eq!(logs.lines().collect::<Vec<_>>(), ["kept", "read-only"], "{logs}");
    let (_, volume) = a.get(&format!("/v1/projects/{name_a}/volumes/cache")).await;
    assert_eq!(volume["node_id"].as_str(), Some(node_id(&admin).await.as_str()), "bound to the node of its first task: {volume}");
    let inspect = Command::new("docker").args(["volume", "inspect", &format!("shepherd-vol-{name_a}-cache")]).output().unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains(&format!("\"io.shepherd.project\": \"{name_a}\"")), "{inspect}");

    // Another project: its name is invisible, and mounting it is refused.
    let (status, _) = b.get(&format!("/v1/projects/{name_a}/volumes/cache")).await;
    assert_eq!(status, 404);
    let (status, _) = b.get(&format!("/v1/projects/{name_b}/volumes/cache")).await;
    assert_eq!(status, 404);
    let mut steal = task("cat /cache/f");
    steal["volumes"] = json!([{ "name": "cache", "target": "/cache" }]);
    let (status, body) = b.post("/v1/tasks", &steal).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("volumes[0].name")), "{body}");
    // Nor can the admin put a task of b on a's volume by naming it.
    steal["project"] = json!(name_b);
    let (status, _) = admin.post("/v1/tasks", &steal).await;
    assert_eq!(status, 400);

    // Host paths and the Docker socket: refused, in the API and the CLI.
    for name in ["/var/run/docker.sock", "/etc", "../x"] {
        let mut t = task("true");
        t["volumes"] = json!([{ "name": name, "target": "/x" }]);
        let (status, body) = a.post("/v1/tasks", &t).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("volumes[0].name")), "{name}: {body}");
    }
    let out = server.cli_as(&token_a, &["run", "-v", "/var/run/docker.sock:/sock", TEST_IMAGE, "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host path"), "{}", String::from_utf8_lossy(&out.stderr));
    for options in [json!({"type": "none", "o": "bind", "device": "/var/run"}), json!({"o": "rbind"})] {
        let (status, body) = a.post(&format!("/v1/projects/{name_a}/volumes"), &json!({ "name": "host", "options": options })).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("options")), "{body}");
    }
    // Drivers: local only unless the admin allows more.
    let (status, body) = a.post(&format!("/v1/projects/{name_a}/volumes"), &json!({ "name": "x", "driver": "rexray" })).await;
    assert_eq!((status, body["error"]["field"].as_str()), (403, Some("driver")), "{body}");
    // Quotas: volumes per project.
    let (status, _) =
        admin.send(reqwest::Method::PATCH, &format!("/v1/projects/{name_a}"), &json!({ "limits": { "max_volumes": 1 } })).await;
    assert_eq!(status, 200);
    let (status, body) = a.post(&format!("/v1/projects/{name_a}/volumes"), &json!({ "name": "second" })).await;
    assert_eq!(status, 429, "{body}");
    // A duplicate name.
    let (status, _) = admin.send(reqwest::Method::PATCH, &format!("/v1/projects/{name_a}"), &json!({ "limits": {} })).await;
    assert_eq!(status, 200);
    let (status, _) = a.post(&format!("/v1/projects/{name_a}/volumes"), &json!({ "name": "cache" })).await;
    assert_eq!(status, 409);

    // Removed while a task mounts it: refused; after: gone from the engine.
    let mut hold = task("sleep 30");
    hold["volumes"] = json!([{ "name": "cache", "target": "/cache" }]);
    let holder = submit(&a, hold).await;
    let (status, body) = a.delete(&format!("/v1/projects/{name_a}/volumes/cache")).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = a.post(&format!("/v1/tasks/{holder}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    a.wait_terminal(&holder, Duration::from_secs(90)).await;
    let out = server.cli_as(&token_a, &["volume", "rm", "cache"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine_volumes(&name_a).is_empty() {
        assert!(Instant::now() < deadline, "the engine volume stayed: {:?}", engine_volumes(&name_a));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A task that names a removed volume is refused at once.
    let mut gone = task("true");
    gone["volumes"] = json!([{ "name": "cache", "target": "/cache" }]);
    let (status, _) = a.post("/v1/tasks", &gone).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn two_hundred_tasks_with_volumes_leave_no_container_and_no_volume() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let name = format!("voll{}", suffix());
    let _cleanup = Leftovers { volumes: vec![format!("shepherd-vol-{name}-log")], networks: Vec::new() };
    let p = server.http_as(Some(&project(&admin, &name).await));
    let (status, body) = p.post(&format!("/v1/projects/{name}/volumes"), &json!({ "name": "log" })).await;
    assert_eq!(status, 201, "{body}");
    let all_before = Command::new("docker").args(["volume", "ls", "-q"]).output().unwrap().stdout;
    let tasks: Vec<Value> = (0..200)
        .map(|i| {
            let mut t = task(&format!("echo {i} >> /log/lines; ls -A /work | wc -l"));
            t["volumes"] = json!([{ "name": "log", "target": "/log" }]);
            t["scratch"] = json!({ "target": "/work", "size_mib": 4 });
            t["resources"] = json!({ "cpu_millicores": 50, "memory_mib": 32 });
            t
        })
        .collect();
    let (status, body) = p.post("/v1/tasks/batch", &json!({ "tasks": tasks })).await;
    assert_eq!(status, 201, "{body}");
    let ids: Vec<String> = body["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    for id in &ids {
        let done = p.wait_terminal(id, Duration::from_secs(300)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let (done, logs) = run(&p, {
        let mut t = task("wc -l < /log/lines");
        t["volumes"] = json!([{ "name": "log", "target": "/log" }]);
        t
    })
    .await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "200"), "every task wrote its line");
    // On the engine: the one named volume, no scratch volume, no container.
    assert!(containers_of(&node_id(&admin).await).is_empty());
    assert_eq!(engine_volumes(&name), [format!("shepherd-vol-{name}-log")]);
    let all_after = Command::new("docker").args(["volume", "ls", "-q"]).output().unwrap().stdout;
    let added = String::from_utf8_lossy(&all_after).lines().count() as i64 - String::from_utf8_lossy(&all_before).lines().count() as i64;
    assert!(added <= 1, "{added} volumes appeared");
    let (status, _) = p.delete(&format!("/v1/projects/{name}/volumes/log")).await;
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine_volumes(&name).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", engine_volumes(&name));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the engine's network is internal (`true`/`false`).
fn internal(network: &str) -> String {
    let out = Command::new("docker").args(["network", "inspect", "--format", "{{.Internal}}", network]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn internal_project_networks_reach_their_own_project_only() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let s = suffix();
    let (name_a, name_b) = (format!("neta{s}"), format!("netb{s}"));
    let _cleanup = Leftovers {
        volumes: Vec::new(),
        networks: vec![
            format!("shepherd-net-{name_a}.back"),
            format!("shepherd-net-{name_b}.back"),
            format!("shepherd-net-{name_a}"),
            format!("shepherd-net-{name_b}._isolated"),
        ],
    };
    let a = server.http_as(Some(&project(&admin, &name_a).await));
    let b = server.http_as(Some(&project(&admin, &name_b).await));
    // The admin gives each project an internal network `back` (the CLI).
    for name in [&name_a, &name_b] {
        let out = server.cli(&["project", "network", name, "back", "--internal"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("back (bridge, internal)"), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // A project may not set its own policy, nor name another's network.
    let (status, _) = a.send(reqwest::Method::PUT, &format!("/v1/projects/{name_a}/policy"), &json!({})).await;
    assert_eq!(status, 403);
    let mut t = task("true");
    t["networks"] = json!(["front"]);
    let (status, body) = a.post("/v1/tasks", &t).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("networks[0]")), "{body}");

    let on_back = |script: &str| {
        let mut t = task(script);
        t["networks"] = json!(["back"]);
        t
    };
    // A listener of project a on `back`.
    let listener = submit(&a, on_back("ip -4 -o addr show eth0; while true; do echo hello | nc -l -p 8080; done")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        let (_, logs) = a.text(&format!("/v1/tasks/{listener}/logs")).await;
        if let Some(address) = logs.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            break address.split('/').next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the listener never printed its address: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let probe = format!("nc -w 3 {address} 8080 && echo connected");
    // Its own project's task on `back` reaches it; the network routes nothing out.
    let (done, logs) = run(&a, on_back(&probe)).await;
    assert_eq!(done["state"], "succeeded", "{logs}");
    assert!(logs.contains("hello") && logs.contains("connected"), "{logs}");
    assert_eq!(internal(&format!("shepherd-net-{name_a}.back")), "true");
    // Project b's task on its own `back` cannot.
    let (_, logs) = run(&b, on_back(&probe)).await;
    assert!(!logs.contains("hello") && !logs.contains("connected"), "project b reached project a: {logs}");
    // Nor can a task of a on its plain bridge (another network).
    let mut bridged = task(&probe);
    bridged["network"] = json!("bridge");
    let (_, logs) = run(&a, bridged).await;
    assert!(!logs.contains("hello"), "the bridge reached the internal network: {logs}");
    assert_eq!(internal(&format!("shepherd-net-{name_a}")), "false", "egress allowed: the plain bridge routes out");

    // Egress none: even the plain bridge of project b is internal.
    let out = server.cli(&["project", "policy", &name_b, "--egress", "none"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bridged = task("ip -4 -o addr show eth0 | grep -c inet");
    bridged["network"] = json!("bridge");
    let (done, logs) = run(&b, bridged).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "1"), "{logs}");
    assert_eq!(internal(&format!("shepherd-net-{name_b}._isolated")), "true", "no egress: its bridge is internal");

    let (status, _) = a.post(&format!("/v1/tasks/{listener}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    a.wait_terminal(&listener, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_node_s_device_reaches_only_the_tasks_that_ask_for_it_and_may() {
    ensure_test_image();
    // /dev/fuse where the host has it (no container gets it by default);
    // else /dev/null under a name no container has.
    let (flag, name, path) = if std::path::Path::new("/dev/fuse").exists() {
        ("/dev/fuse", "fuse", "/dev/fuse")
    } else {
        ("/dev/null:/dev/shepherd-null", "null", "/dev/shepherd-null")
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker", "--device", flag]);
    let admin = server.http();
    let (_, nodes) = admin.get("/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["labels"]["shepherd.devices"], name, "{nodes}");
    let project_name = format!("dev{}", suffix());
    let p = server.http_as(Some(&project(&admin, &project_name).await));
    let with_device = |script: &str, device: &str| {
        let mut t = task(script);
        t["devices"] = json!([device]);
        t
    };
    // Not allowed for the project yet.
    let (status, body) = p.post("/v1/tasks", &with_device("true", name)).await;
    assert_eq!((status, body["error"]["field"].as_str()), (403, Some("devices[0]")), "{body}");
    let out = server.cli(&["project", "policy", &project_name, "--device", name, "--device", "kvm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Asked for and allowed: a character device; not asked for: absent.
    let (done, logs) = run(&p, with_device(&format!("test -c {path} && echo char-device"), name)).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "char-device"), "{done} {logs}");
    let (done, logs) = run(&p, task(&format!("test -e {path} || echo absent"))).await;
    assert_eq!((done["state"].as_str(), logs.trim()), (Some("succeeded"), "absent"), "{logs}");
    // One no node offers: it waits, saying so. So does a GPU task here.
    let waiting = submit(&p, with_device("true", "kvm")).await;
    let mut gpu = task("true");
    gpu["gpus"] = json!(1);
    let gpu = submit(&p, gpu).await;
    for (id, why) in [(&waiting, "no device kvm"), (&gpu, "too few gpus in all")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, t) = p.get(&format!("/v1/tasks/{id}")).await;
            if t["reason"].as_str().unwrap_or_default().contains(why) {
                assert_eq!(t["state"], "queued");
                break;
            }
            assert!(Instant::now() < deadline, "{why}: {t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _) = p.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, 200);
    }
}

/// Issue 27, item 1: a `local` volume's options are an allow-list (none, a
/// tmpfs, NFS from a server the admin listed), at the API and again on the
/// node. An overlay over host directories (the attack: lowerdir=/etc, an
/// upperdir under /etc/cron.d) and every other shape are refused with 400
/// naming `options`; a volume stored with such options (an older version,
/// a store written by hand) is refused by the node before the engine sees
/// it, and nothing is mounted.
#[tokio::test]
async fn local_volume_options_are_an_allow_list_checked_again_on_the_node() {
    ensure_test_image();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let admin = server.http();
    let s = suffix();
    let name = format!("volopt{s}");
    let _cleanup =
        Leftovers { volumes: ["scratch", "sneaky"].iter().map(|v| format!("shepherd-vol-{name}-{v}")).collect(), networks: Vec::new() };
    let token = project(&admin, &name).await;
    let a = server.http_as(Some(&token));
    let path = format!("/v1/projects/{name}/volumes");
    let overlay = json!({"type": "overlay", "device": "overlay", "o": "lowerdir=/etc,upperdir=/etc/cron.d,workdir=/tmp/w"});
    for options in [
        overlay.clone(),
        json!({"type": "ext4", "device": "../dev/sda"}),
        json!({"type": "ext4", "device": "/dev/sda1"}),
        json!({"type": "tmpfs", "device": "/etc"}),
        json!({"type": "tmpfs", "device": "tmpfs", "o": "size=16m,bind"}),
        json!({"type": "TMPFS", "device": "tmpfs"}),
        json!({"Type": "tmpfs", "device": "tmpfs"}),
        json!({"device": "overlay", "o": "lowerdir=/"}),
        json!({"type": "nfs", "device": ":/export", "o": "addr=10.0.0.5"}),
        json!({"type": "nfs", "device": ":/export", "o": "addr=127.1"}),
        json!({"type": "cifs", "device": "//10.0.0.5/share"}),
    ] {
        let (status, body) = a.post(&path, &json!({ "name": "bad", "options": options })).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("options")), "{options}: {body}");
    }
    // NFS from a server the admin lists (not mounted here: there is none).
    let (status, body) =
        admin.send(reqwest::Method::PUT, &format!("/v1/projects/{name}/policy"), &json!({ "nfs_servers": ["10.0.0.5"] })).await;
    assert_eq!(status, 200, "{body}");
    let nfs = json!({"type": "nfs", "device": ":/export", "o": "addr=10.0.0.5,nfsvers=4.1,ro"});
    let (status, body) = a.post(&path, &json!({ "name": "shared", "options": nfs })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scope"], "cluster", "NFS is the same data everywhere: {body}");
    // A sized tmpfs owned by the task's user works end to end.
    let tmpfs = json!({"type": "tmpfs", "device": "tmpfs", "o": "size=16m,uid=1000,gid=1000,mode=0700"});
    let (status, body) = a.post(&path, &json!({ "name": "scratch", "options": tmpfs })).await;
    assert_eq!(status, 201, "{body}");
    let mut write = task("echo ok > /s/f && cat /s/f && stat -c %u /s");
    write["user"] = json!("1000");
    write["volumes"] = json!([{ "name": "scratch", "target": "/s" }]);
    let (done, logs) = run(&a, write).await;
    assert_eq!(done["state"], "succeeded", "{done} {logs}");
    assert_eq!(logs.lines().collect::<Vec<_>>(), ["ok", "1000"], "{logs}");

    // A record with the attack's options, as an older version stored it.
    server.stop();
    {
        let store = shepherd_store::SqliteStore::open(dir.path().join("data/shepherd.db"), Default::default()).unwrap();
        let mut spec = shepherd_core::VolumeSpec::local("sneaky");
        spec.options = serde_json::from_value(overlay).unwrap();
        let volume = shepherd_core::Volume::new(&name, spec, shepherd_core::Timestamp::now());
        assert!(shepherd_store::Store::create_volume(&store, volume).await.unwrap());
    }
    let server = Server::start(&dir.path().join("data"), &["--driver", "docker"]);
    let a = server.http_as(Some(&token));
    let mut reach = task("ls /host");
    reach["volumes"] = json!([{ "name": "sneaky", "target": "/host" }]);
    reach["retry"] = json!({ "max_attempts": 1 });
    let (done, logs) = run(&a, reach).await;
    assert_eq!(done["state"], "failed", "{done} {logs}");
    assert!(done["reason"].as_str().unwrap_or_default().contains("refusing to mount"), "{done}");
    assert!(!engine_volumes(&name).iter().any(|v| v.ends_with("-sneaky")), "the engine never made it: {:?}", engine_volumes(&name));
}

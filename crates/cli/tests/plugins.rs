//! Run-time scheduling plugins in a running server: a WebAssembly filter
//! (examples/plugins, built by examples/plugins/build.sh) holds tasks with
//! its reason, a changed config file is picked up without a restart, a
//! broken one is refused with the old version kept, SIGHUP and the API
//! reload it, and the plugin shows in /v1/plugins and the metrics.

mod common;

use common::{sh, Server};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins").join(name);
    assert!(path.exists(), "{name} is missing: run examples/plugins/build.sh (the test command does)");
    path.canonicalize().unwrap().display().to_string()
}

fn config(label: &str) -> String {
    format!(
        "[plugins.licences]\nwasm = \"{}\"\n[profiles.licensed]\nfilters = [\"resources\", \"licences\"]\nscores = {{ spread = 1.0 }}\n[profiles.licensed.args.licences]\nlabel = \"{label}\"\n",
        example("label_filter.wasm")
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<serde_json::Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_wasm_filter_holds_tasks_with_its_reason_and_reloads_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scheduler.toml");
    std::fs::write(&file, config("licence.matlab")).unwrap();
    let server = Server::start(&dir.path().join("data"), &["--scheduler-config", file.to_str().unwrap(), "--node-label", "zone=a"]);
    let http = server.http();
    // The banner names the plugins (read from its stdout as it comes).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.printed().contains("plugins: licences (wasm)") {
        assert!(Instant::now() < deadline, "banner: {}", server.printed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut licensed = sh("true");
    licensed["profile"] = json!("licensed");
    let (status, task) = http.post("/v1/tasks", &licensed).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let waiting = eventually("the reason", || async {
        let (_, t) = http.get(&format!("/v1/tasks/{id}")).await;
        t["reason"].is_string().then_some(t)
    })
    .await;
    assert_eq!(waiting["state"], "queued");
    assert_eq!(
        waiting["reason"],
        "no node can ever run this task (0/1 fit even with nothing running): 1 rejected by licences: no licence.matlab left"
    );
    // Tasks of other profiles run meanwhile.
    let (_, other) = http.post("/v1/tasks", &sh("true")).await;
    assert_eq!(http.wait_terminal(other["id"].as_str().unwrap(), Duration::from_secs(30)).await["state"], "succeeded");

    let (status, plugins) = http.get("/v1/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(plugins["version"], 1);
    let plugin = &plugins["plugins"][0];
    assert_eq!((plugin["name"].as_str(), plugin["kind"].as_str(), plugin["state"].as_str()), (Some("licences"), Some("wasm"), Some("ok")));
    assert!(plugin["calls"].as_u64().unwrap() >= 1 && plugin["digest"].as_str().unwrap().len() == 64, "{plugins}");
    // Admin only.
    let (project, _) = http.post("/v1/projects", &json!({"name": "team"})).await;
    assert_eq!(project, 201);
    let (_, token) = http.post("/v1/projects/team/tokens", &json!({})).await;
    let tenant = server.http_as(Some(token["token"].as_str().unwrap()));
    assert_eq!(tenant.get("/v1/plugins").await.0, 403);
    assert_eq!(tenant.post("/v1/plugins/reload", &json!({})).await.0, 403);

    // The file changes: picked up without a restart, and the task runs.
    std::fs::write(&file, config("zone")).unwrap();
    let done = http.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(http.get("/v1/plugins").await.1["version"], 2);

    // A broken config is refused by the API with the field named; the old version stays.
    std::fs::write(&file, "[plugins.licences]\nwasm = \"/nonexistent.wasm\"\n").unwrap();
    let (status, error) = http.post("/v1/plugins/reload", &json!({})).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "config");
    assert!(error["error"]["message"].as_str().unwrap().contains("/nonexistent.wasm"), "{error}");
    let plugins = http.get("/v1/plugins").await.1;
    assert_eq!(plugins["version"], 2);
    assert_eq!(plugins["last_reload"]["ok"], false);
    let (_, again) = http.post("/v1/tasks", &licensed).await;
    assert_eq!(http.wait_terminal(again["id"].as_str().unwrap(), Duration::from_secs(30)).await["state"], "succeeded");

    // SIGHUP reloads it once it is fixed (the watcher may too: version 3 or more).
    std::fs::write(&file, config("licence.matlab")).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    let reloaded = eventually("the reload", || async {
        let p = http.get("/v1/plugins").await.1;
        (p["version"].as_u64() >= Some(3)).then_some(p)
    })
    .await;
    // Two reloads racing: one at a time, both counted, both answered.
    let empty = json!({});
    let (a, b) = tokio::join!(http.post("/v1/plugins/reload", &empty), http.post("/v1/plugins/reload", &empty));
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    let version = reloaded["version"].as_u64().unwrap();
    assert_eq!(http.get("/v1/plugins").await.1["version"].as_u64(), Some(version + 2));
    let (_, held) = http.post("/v1/tasks", &licensed).await;
    let held = held["id"].as_str().unwrap().to_string();
    eventually("the reason again", || async {
        let (_, t) = http.get(&format!("/v1/tasks/{held}")).await;
        t["reason"].as_str().is_some_and(|r| r.contains("rejected by licences")).then_some(t)
    })
    .await;
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("shepherd_sched_plugin_calls_total{plugin=\"licences\"}"), "{metrics}");
    assert!(metrics.contains("shepherd_sched_plugin_disabled{plugin=\"licences\"} 0"));
}

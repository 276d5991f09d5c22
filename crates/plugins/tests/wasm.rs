//! WebAssembly plugins on the real interpreter: the example plugins (built
//! by `examples/plugins/build.sh` with Debian's rustc and clang) obey what
//! they say; hostile plugins are contained; reloads swap versions between
//! passes and lose nothing.

use shepherd_core::{Resources, TaskId};
use shepherd_plugins::{load, Scheduling};
use shepherd_sched::{NodeSnapshot, PendingTask, PlacementPlan};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins");
    for f in ["label_filter.wasm", "prefer_values.wasm", "label_filter_c.wasm"] {
        assert!(dir.join(f).exists(), "{f} is missing: run examples/plugins/build.sh (the test command does)");
    }
    dir.canonicalize().unwrap()
}

fn node(i: usize, labels: &[(&str, &str)]) -> NodeSnapshot {
    let mut n = NodeSnapshot::new(format!("n{i:03}"), Resources { cpu_millicores: 4000, memory_mib: 4096 });
    for (k, v) in labels {
        n.labels.insert(k.to_string(), v.to_string());
    }
    n
}

fn tasks(from: u128, count: u128, profile: &str) -> Vec<PendingTask> {
    (from..from + count)
        .map(|i| {
            let mut t = PendingTask::new(TaskId(ulid::Ulid(i + 1)), Resources { cpu_millicores: 1000, memory_mib: 512 });
            t.profile = Some(profile.into());
            t
        })
        .collect()
}

fn place(engine: &shepherd_sched::Engine, nodes: &[NodeSnapshot], tasks: Vec<PendingTask>) -> PlacementPlan {
    engine.place_batch(nodes.to_vec(), tasks, &HashMap::new(), 3)
}

/// A cluster of 30 nodes: every third has the licence; zones a, b, c in turn.
fn cluster() -> Vec<NodeSnapshot> {
    (0..30)
        .map(|i| {
            let zone = ["a", "b", "c"][i % 3];
            if i % 3 == 1 {
                node(i, &[("licence.matlab", "yes"), ("zone", zone)])
            } else {
                node(i, &[("zone", zone)])
            }
        })
        .collect()
}

#[test]
fn the_examples_filter_and_score_as_they_say() {
    let dir = examples();
    let config = format!(
        r#"
[plugins.licences]
wasm = "{dir}/label_filter.wasm"
[plugins.licences_c]
wasm = "{dir}/label_filter_c.wasm"
[plugins.zones]
wasm = "{dir}/prefer_values.wasm"

[profiles.licensed]
filters = ["node_ready", "resources", "licences"]
scores = {{ binpack = 1.0 }}
[profiles.licensed.args.licences]
label = "licence.matlab"

[profiles.licensed-c]
filters = ["resources", "licences_c"]
scores = {{ spread = 1.0 }}
[profiles.licensed-c.args.licences_c]
label = "licence.matlab"

[profiles.zone-b]
scores = {{ zones = 5.0, spread = 1.0 }}
candidates = 30
[profiles.zone-b.args.zones]
label = "zone"
values = ["b"]
"#,
        dir = dir.display()
    );
    let loaded = load(&config, Path::new("/")).unwrap();
    let nodes = cluster();
    let licensed: Vec<String> = nodes.iter().filter(|n| n.labels.contains_key("licence.matlab")).map(|n| n.id.clone()).collect();
    for profile in ["licensed", "licensed-c"] {
        // 10 licensed nodes with room for 4 tasks each: 40 placed, 10 wait.
        let plan = place(&loaded.engine, &nodes, tasks(0, 50, profile));
        assert_eq!(plan.placements.len(), 40, "{profile}");
        assert!(plan.placements.iter().all(|p| licensed.contains(&p.node_id)), "{profile}: a filtered node was chosen");
        assert_eq!(plan.unplaced.len(), 10);
        assert_eq!(
            plan.unplaced[0].hold.to_string(),
            "0/30 nodes fit: 20 rejected by licences".to_string()
                + if profile == "licensed" { "" } else { "_c" }
                + ": no licence.matlab left, 10 insufficient cpu"
        );
    }
    // The preferred zone wins while it has room, then the others.
    let plan = place(&loaded.engine, &nodes, tasks(100, 40, "zone-b"));
    assert!(plan.placements.iter().all(|p| nodes.iter().find(|n| n.id == p.node_id).unwrap().labels["zone"] == "b"));
    let plan = place(&loaded.engine, &nodes, tasks(100, 41, "zone-b"));
    assert_eq!(plan.placements.iter().filter(|p| nodes.iter().find(|n| n.id == p.node_id).unwrap().labels["zone"] != "b").count(), 1);
    // Each plugin counted its calls: a few per task, not one per node.
    let calls: u64 = loaded.plugins.iter().find(|p| p.name() == "licences").unwrap().status().calls;
    assert!(calls > 0 && calls < 50 * 8, "{calls} calls");
}

#[test]
fn settings_a_plugin_refuses_fail_the_load_with_its_words() {
    let dir = examples();
    let config = format!(
        "[plugins.licences]\nwasm = \"{}/label_filter.wasm\"\n[profiles.p]\nfilters = [\"licences\"]\nscores = {{ spread = 1.0 }}\n",
        dir.display()
    );
    let err = load(&config, Path::new("/")).err().unwrap().to_string();
    assert!(err.contains("licences") && err.contains("refused its settings"), "{err}");
    for (bad, words) in [
        ("[plugins.x]\nwasm = \"/nonexistent.wasm\"\n", "reading /nonexistent.wasm"),
        ("[plugins.x]\nwasm = \"a\"\nhttp = \"http://127.0.0.1:1/\"\n", "exactly one of"),
        ("[plugins.spread]\nhttp = \"http://127.0.0.1:1/\"\nfilter = true\n", "built-in"),
        ("[plugins.Bad]\nhttp = \"http://127.0.0.1:1/\"\nfilter = true\n", "a plugin name"),
        ("[plugins.x]\nhttp = \"https://example.com/\"\nfilter = true\n", "only http://"),
        ("[plugins.x]\nhttp = \"http://127.0.0.1:1/\"\n", "filter = true"),
        ("[plugins.x]\nwasm = \"a.wasm\"\ncolour = 1\n", "unknown field"),
    ] {
        let err = load(bad, Path::new("/")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(words), "{bad}: {err}");
    }
}

/// A module with the ABI's exports whose `shepherd_filter` and
/// `shepherd_score` run `body` (WebAssembly text).
fn hostile(body: &str, data: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "shepherd" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 4096) "{data}")
  (func (export "shepherd_abi_v1"))
  (func (export "shepherd_alloc") (param i32) (result i32) (i32.const 16384))
  (func (export "shepherd_filter") (param i32 i32) (result i64) {body})
  (func (export "shepherd_score") (param i32 i32) (result i64) {body}))"#
    ))
    .unwrap()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[test]
fn hostile_plugins_are_contained_and_other_profiles_keep_placing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("spin", hostile("(loop $l (br $l)) (i64.const 0)", ""), "out of fuel"),
        ("hog", hostile("(drop (memory.grow (i32.const 65534))) (i64.const 0)", ""), "memory cap of 64 MiB"),
        ("trap", hostile("unreachable", ""), "trapped"),
        // Two verdicts (or scores) for one node.
        (
            "liar",
            hostile("(i64.const 17592186044428)", "\\02\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00"),
            "answered garbage",
        ),
        // One score of NaN.
        ("nan", hostile("(i64.const 17592186044428)", "\\01\\00\\00\\00\\00\\00\\00\\00\\00\\00\\f8\\7f"), "answered garbage"),
        // An answer pointing outside its memory.
        ("wild", hostile("(i64.const -1)", ""), "answered garbage"),
    ];
    let mut config = String::new();
    for (name, bytes, _) in &cases {
        std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).unwrap();
        config += &format!("[plugins.{name}]\nwasm = \"{name}.wasm\"\nfuel = 5000000\n");
        config += &format!("[profiles.f-{name}]\nfilters = [\"{name}\"]\nscores = {{ spread = 1.0 }}\n");
        config += &format!("[profiles.s-{name}]\nscores = {{ {name} = 1.0 }}\n");
    }
    let loaded = load(&config, dir.path()).unwrap();
    let nodes = vec![node(0, &[])];
    let before = rss_kib();
    for round in 0..8u128 {
        for (name, _, words) in &cases {
            let mut batch = tasks(round * 1000, 1, &format!("f-{name}"));
            batch.extend(tasks(round * 1000 + 1, 1, &format!("s-{name}")));
            batch.extend(tasks(round * 1000 + 2, 1, "spread"));
            let plan = place(&loaded.engine, &nodes, batch);
            assert_eq!(plan.placements.len(), 1, "{name}: the built-in profile's task is placed");
            assert_eq!(plan.placements[0].task_id, TaskId(ulid::Ulid(round * 1000 + 3)));
            for u in &plan.unplaced {
                let reason = u.hold.to_string();
                let expected = if round < 2 { *words } else { "disabled after 5 failures in a row" };
                assert!(reason.contains(&format!("rejected by {name}: ")) && reason.contains(expected), "{name} round {round}: {reason}");
            }
        }
    }
    for (name, _, words) in &cases {
        let status = loaded.plugins.iter().find(|p| p.name() == *name).unwrap().status();
        assert_eq!(status.state, "disabled", "{name}");
        assert!(status.last_error.as_deref().unwrap_or("").contains(words), "{name}: {:?}", status.last_error);
        assert!(status.failures >= 5);
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 256 * 1024, "memory grew by {grown} KiB");
}

#[test]
fn a_reload_swaps_versions_between_passes_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples();
    let wasm = dir.path().join("gate.wasm");
    std::fs::copy(examples.join("label_filter.wasm"), &wasm).unwrap();
    let config = dir.path().join("scheduler.toml");
    let write_config = |value: &str| {
        std::fs::write(
            &config,
            format!("[plugins.gate]\nwasm = \"gate.wasm\"\n[profiles.gated]\nfilters = [\"resources\", \"gate\"]\nscores = {{ spread = 1.0 }}\n[profiles.gated.args.gate]\nlabel = \"v\"\nvalue = \"{value}\"\n"),
        )
        .unwrap()
    };
    write_config("1");
    let scheduling = std::sync::Arc::new(Scheduling::from_file(&config).unwrap());
    // 40 nodes of each version, room for plenty of tasks each.
    let nodes: Vec<NodeSnapshot> = (0..80)
        .map(|i| {
            let mut n = node(i, &[("v", if i % 2 == 0 { "1" } else { "2" })]);
            n.capacity = Resources { cpu_millicores: 1_000_000, memory_mib: 1_000_000 };
            n
        })
        .collect();
    let version_of = |id: &str| nodes.iter().find(|n| n.id == id).unwrap().labels["v"].clone();
    // Passes of 100 tasks while another thread flips the config.
    // Each flip waits until a whole pass ran after the one before, so both
    // versions place passes however long a reload takes (with a fixed
    // period, passes and reloads fell into step and one version could
    // place every pass).
    let passes_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flipper = {
        let scheduling = scheduling.clone();
        let config = config.clone();
        let passes_done = passes_done.clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                let seen = passes_done.load(std::sync::atomic::Ordering::SeqCst);
                let waited = std::time::Instant::now();
                while passes_done.load(std::sync::atomic::Ordering::SeqCst) < seen + 2
                    && waited.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                std::fs::write(
                    &config,
                    format!("[plugins.gate]\nwasm = \"gate.wasm\"\n[profiles.gated]\nfilters = [\"resources\", \"gate\"]\nscores = {{ spread = 1.0 }}\n[profiles.gated.args.gate]\nlabel = \"v\"\nvalue = \"{}\"\n", 2 - i % 2),
                )
                .unwrap();
                scheduling.reload().unwrap();
            }
        })
    };
    let mut placed = std::collections::HashSet::new();
    let mut versions_seen = std::collections::HashSet::new();
    // At least 100 passes, and passes for as long as the flipper runs (a
    // loaded machine may take longer over its reloads than 100 passes take).
    let mut pass = 0u128;
    while pass < 100 || !flipper.is_finished() {
        let engine = scheduling.engine().get();
        let plan = place(&engine, &nodes, tasks(pass * 100, 100, "gated"));
        assert_eq!(plan.placements.len(), 100);
        let versions: std::collections::HashSet<String> = plan.placements.iter().map(|p| version_of(&p.node_id)).collect();
        assert_eq!(versions.len(), 1, "pass {pass} was placed by one version");
        versions_seen.extend(versions);
        for p in plan.placements {
            assert!(placed.insert(p.task_id), "placed twice");
        }
        std::thread::sleep(std::time::Duration::from_millis(3));
        pass += 1;
        passes_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    flipper.join().unwrap();
    assert_eq!(placed.len(), pass as usize * 100);
    assert_eq!(versions_seen.len(), 2, "both versions placed some passes");
    let version = scheduling.report().version;
    // A broken plugin file: the reload fails, says why, and the old version stays.
    std::fs::write(&wasm, b"not wasm").unwrap();
    let err = scheduling.reload_if_changed().unwrap().unwrap_err();
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
    let report = scheduling.report();
    assert_eq!(report.version, version);
    assert!(!report.last_reload.unwrap().ok);
    assert_eq!(place(&scheduling.engine().get(), &nodes, tasks(50_000, 10, "gated")).placements.len(), 10);
    // Not retried until a file changes again; then it loads.
    assert!(scheduling.reload_if_changed().is_none());
    std::fs::copy(examples.join("label_filter.wasm"), &wasm).unwrap();
    assert_eq!(scheduling.reload_if_changed().unwrap().unwrap(), version + 1);
}

//! Replays of histories built here (the CLI's tests replay one recorded
//! from a real server): what the replay reproduces, and changes whose
//! effect is known.

use shepherd_core::history::*;
use shepherd_sched::{Engine, SchedulerConfig};
use shepherd_sim::{replay, Overlay, ReplayConfig, ReplayReport};
use std::collections::BTreeMap;
use std::io::Read as _;

fn node(id: &str, at: i64, state: NodeHistoryState, cpu: u32, pool: Option<&str>) -> HistoryRecord {
    let labels: BTreeMap<String, String> = pool.map(|p| [("pool".to_string(), p.to_string())].into()).unwrap_or_default();
    HistoryRecord::Node(NodeRecord { node: id.into(), at, state, cpu, memory: 65_536, gpus: 0, max_tasks: 0, labels })
}

/// A task that really arrived at `at`, waited `wait` and ran `run` ms.
fn task(project: &str, at: i64, wait: i64, run: i64, cpu: u32) -> TaskRecord {
    TaskRecord {
        project: project.into(),
        at,
        cpu,
        memory: 256,
        gpus: 0,
        priority: 0,
        constraints: Vec::new(),
        pool: None,
        profile: None,
        attempts: vec![AttemptRecord {
            node: "n0".into(),
            placed: at + wait,
            ended: Some(at + wait + run),
            outcome: Some("succeeded".into()),
        }],
    }
}

fn history(nodes: Vec<HistoryRecord>, mut tasks: Vec<TaskRecord>) -> Vec<Result<HistoryRecord, HistoryError>> {
    tasks.sort_by_key(|t| t.at);
    let to = tasks.iter().map(|t| t.at).max().unwrap_or(0) + 1;
    let mut out = vec![Ok(HistoryRecord::Header(HistoryHeader { version: VERSION, from: 0, to, projects: Vec::new() }))];
    out.extend(nodes.into_iter().map(Ok));
    out.extend(tasks.into_iter().map(|t| Ok(HistoryRecord::Task(t))));
    out
}

fn wait_of<'a>(report: &'a shepherd_sim::ProfileReport, project: &str) -> &'a shepherd_sim::report::Wait {
    report.waits.iter().find(|w| w.project == project).expect("the project's waits")
}

fn run(engine: &Engine, records: Vec<Result<HistoryRecord, HistoryError>>, overlay: Overlay) -> ReplayReport {
    replay(engine, records, &ReplayConfig { overlay, ..Default::default() }).expect("a replay")
}

/// With room for everything, the replay places each task when it arrives
/// and holds the same CPU as the real run did, within a pass.
#[test]
fn an_uncontended_history_replays_as_it_happened() {
    let nodes = (0..4).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 8000, None)).collect();
    let tasks: Vec<TaskRecord> =
        (0..400).map(|i| task(if i % 3 == 0 { "b" } else { "a" }, i * 100, 0, 2_000 + (i % 7) * 300, 500)).collect();
    let report = run(&Engine::default(), history(nodes, tasks), Overlay::default());
    assert_eq!((report.replay.placed, report.real.placed, report.never_ran), (400, 400, 0));
    for project in ["a", "b"] {
        let (real, replayed) = (wait_of(&report.real, project), wait_of(&report.replay, project));
        assert_eq!(real.p99_seconds, 0.0);
        assert!(replayed.max_seconds <= 0.05, "{project}: a task waits one pass at most, not {}", replayed.max_seconds);
    }
    let gap = (report.real.mean_cpu_utilization - report.replay.mean_cpu_utilization).abs();
    assert!(gap < 0.01, "utilization real {} replay {}", report.real.mean_cpu_utilization, report.replay.mean_cpu_utilization);
    assert!(report.real.peak_cpu_utilization > 0.2);
}

/// Under contention, a project whose fair-share weight doubles waits less.
#[test]
fn a_heavier_weight_lowers_a_projects_wait_under_contention() {
    let nodes = (0..2).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 4000, None)).collect::<Vec<_>>();
    let mut tasks: Vec<TaskRecord> = (0..400).map(|i| task("big", i, 0, 5_000, 1000)).collect();
    tasks.extend((0..200).map(|i| task("small", 1_000 + i * 10, 0, 5_000, 1000)));
    let records = history(nodes, tasks);
    let equal = run(&Engine::default(), records.clone(), Overlay::default());
    let config = SchedulerConfig::from_toml("[projects.small]\nweight = 2.0\n").unwrap();
    let weighted = run(&Engine::new(&config).unwrap(), records, Overlay::default());
    let (before, after) = (wait_of(&equal.replay, "small"), wait_of(&weighted.replay, "small"));
    assert!(after.p99_seconds < before.p99_seconds, "small's p99: weight 1 {} s, weight 2 {} s", before.p99_seconds, after.p99_seconds);
    assert!(after.p50_seconds < before.p50_seconds);
    assert!(wait_of(&weighted.replay, "big").p50_seconds >= wait_of(&equal.replay, "big").p50_seconds, "big pays for it");
    assert_eq!(weighted.replay.placed, 600);
}

/// Half of a pool's nodes: its tasks wait longer; an overlay's added
/// nodes: they wait less.
#[test]
fn resizing_a_pool_moves_waits_the_expected_way() {
    let nodes: Vec<HistoryRecord> = (0..4).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 4000, Some("batch"))).collect();
    let tasks: Vec<TaskRecord> = (0..300)
        .map(|i| {
            let mut t = task("a", i * 50, 0, 3_000, 1000);
            t.pool = Some("batch".into());
            t
        })
        .collect();
    let records = history(nodes, tasks);
    let base = run(&Engine::default(), records.clone(), Overlay::default());
    let halved = run(&Engine::default(), records.clone(), toml::from_str("[scale_pools]\nbatch = 0.5\n").unwrap());
    let grown: Overlay = toml::from_str("[[add_nodes]]\ncount = 4\ncpu = 4000\nmemory = 65536\nlabels = { pool = \"batch\" }\n").unwrap();
    let grown = run(&Engine::default(), records, grown);
    assert_eq!((halved.replay_nodes, grown.replay_nodes), (2, 8));
    let p99 = |r: &ReplayReport| wait_of(&r.replay, "a").p99_seconds;
    assert!(
        p99(&halved) > p99(&base) && p99(&base) > p99(&grown),
        "p99: halved {} base {} grown {}",
        p99(&halved),
        p99(&base),
        p99(&grown)
    );
    assert_eq!(halved.replay.placed, 300);
}

/// A node that goes away loses what the replay ran there: those tasks go
/// back to the queue and run on the node left, after what holds it.
#[test]
fn a_node_that_goes_away_puts_its_tasks_back_in_the_queue() {
    let nodes = vec![
        node("n0", -1, NodeHistoryState::Ready, 4000, None),
        node("n1", -1, NodeHistoryState::Ready, 4000, None),
        node("n1", 5_000, NodeHistoryState::Gone, 4000, None),
    ];
    let tasks: Vec<TaskRecord> = (0..8).map(|i| task("a", i, 0, 20_000, 1000)).collect();
    let report = run(&Engine::default(), history(nodes, tasks), Overlay::default());
    assert_eq!(report.replay.placed, 8, "every task placed once at first");
    // The four lost at 5 s start again when n0 frees up at 20 s, and run 20 s more.
    assert!(report.replay.makespan_seconds >= 39.9, "makespan {}", report.replay.makespan_seconds);
    let samples = &report.replay.samples;
    let at = |t: f64| samples.iter().rev().find(|s| s.at_seconds <= t).expect("a sample");
    assert_eq!((at(4.0).running, at(6.0).running, at(6.0).queued), (8, 4, 4));
}

/// A history that breaks the format's rules is refused, not half-replayed.
#[test]
fn a_malformed_history_is_refused() {
    let engine = Engine::default();
    let no_header = vec![Ok(node("n0", 0, NodeHistoryState::Ready, 1000, None))];
    assert!(replay(&engine, no_header, &ReplayConfig::default()).is_err());
    let mut late_node = history(vec![node("n0", 0, NodeHistoryState::Ready, 1000, None)], vec![task("a", 0, 0, 100, 100)]);
    late_node.push(Ok(node("n1", 0, NodeHistoryState::Ready, 1000, None)));
    let err = replay(&engine, late_node, &ReplayConfig::default()).unwrap_err();
    assert!(err.0.contains("they come first"), "{err}");
    let no_nodes = history(Vec::new(), vec![task("a", 0, 0, 100, 100)]);
    assert!(replay(&engine, no_nodes, &ReplayConfig::default()).is_err());
    let bad_line = vec![
        Ok(HistoryRecord::Header(HistoryHeader { version: VERSION, from: 0, to: 1, projects: Vec::new() })),
        Err(HistoryError("line 2: nope".into())),
    ];
    assert!(replay(&engine, bad_line, &ReplayConfig::default()).is_err());
}

/// A history file is read a bounded line at a time: a line past the limit
/// (even one with no end), bad UTF-8 or a time out of range is an error
/// naming the line; an overlay that would make too many nodes is refused.
#[test]
fn reading_a_history_is_bounded_and_names_the_line() {
    use shepherd_sim::read_history;
    let header = r#"{"kind":"header","version":1,"from":0,"to":1}"#;
    let ok: Vec<_> = read_history(format!("{header}\n").as_bytes()).collect();
    assert!(matches!(ok.as_slice(), [Ok(HistoryRecord::Header(_))]));
    // 100 MiB of one line: refused after the limit, never held whole.
    let first = format!("{header}\n");
    let huge = std::io::Read::chain(first.as_bytes(), std::io::repeat(b'x').take(100 << 20));
    let records: Vec<_> = read_history(std::io::BufReader::new(huge)).collect();
    assert_eq!(records.len(), 2);
    assert!(records[1].as_ref().unwrap_err().0.starts_with("line 2: longer than"), "{:?}", records[1]);
    let bad_utf8: Vec<u8> = [header.as_bytes(), b"\n\xff\xfe\n"].concat();
    let records: Vec<_> = read_history(bad_utf8.as_slice()).collect();
    assert!(records[1].as_ref().unwrap_err().0.starts_with("line 2:"));
    let far = format!("{header}\n{}\n", r#"{"kind":"task","project":"a","at":9000000000000000000,"cpu":1,"memory":1}"#);
    assert!(read_history(far.as_bytes()).nth(1).unwrap().is_err());
    let engine = Engine::default();
    for overlay in
        ["[[add_nodes]]\ncount = 4294967295\ncpu = 1\nmemory = 1\n", "[scale_pools]\nbatch = 1e9\n", "[scale_pools]\nbatch = -1\n"]
    {
        let overlay: Overlay = toml::from_str(overlay).unwrap();
        let records = history(vec![node("n0", 0, NodeHistoryState::Ready, 1000, Some("batch"))], vec![task("a", 0, 0, 100, 100)]);
        assert!(replay(&engine, records, &ReplayConfig { overlay, ..Default::default() }).is_err());
    }
}

/// A draining node takes no new task but keeps what runs there; a node
/// that comes back takes tasks again.
#[test]
fn a_draining_node_finishes_its_tasks_and_a_node_back_takes_new_ones() {
    let nodes = vec![
        node("n0", -1, NodeHistoryState::Ready, 4000, None),
        node("n0", 5_000, NodeHistoryState::Draining, 4000, None),
        node("n0", 30_000, NodeHistoryState::Ready, 4000, None),
    ];
    // Four at once (all of n0), four more at 6 s: they wait for n0 to be back.
    let mut tasks: Vec<TaskRecord> = (0..4).map(|i| task("a", i, 0, 10_000, 1000)).collect();
    tasks.extend((0..4).map(|i| task("a", 6_000 + i, 0, 10_000, 1000)));
    let report = run(&Engine::default(), history(nodes, tasks), Overlay::default());
    assert_eq!(report.replay.placed, 8);
    let w = wait_of(&report.replay, "a");
    assert!(w.max_seconds >= 23.9, "the last four wait for n0 to be back at 30 s: max {}", w.max_seconds);
    // Lost at the drain, the first four would run again from 30 s and end at 50 s.
    assert!((report.replay.makespan_seconds - 40.0).abs() < 0.2, "makespan {}", report.replay.makespan_seconds);
}

/// A recorded quota holds the replay's tasks as it held the real ones; an
/// overlay's quota changes it (a looser one: shorter waits; an empty
/// table: none).
#[test]
fn quotas_are_replayed_and_an_overlay_changes_them() {
    let mut head: Vec<HistoryRecord> = (0..5).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 8000, None)).collect();
    head.push(HistoryRecord::Quota(QuotaRecord { project: "a".into(), max_running: Some(2), ..Default::default() }));
    let mut tasks: Vec<TaskRecord> = (0..20).map(|i| task("a", i, 0, 5_000, 1000)).collect();
    tasks.extend((0..20).map(|i| task("b", i, 0, 5_000, 1000)));
    let records = history(head, tasks);
    let p99 = |r: &ReplayReport, p: &str| wait_of(&r.replay, p).p99_seconds;
    let recorded = run(&Engine::default(), records.clone(), Overlay::default());
    // Two at a time: the last of 20 starts after 9 rounds of 5 s.
    assert!(p99(&recorded, "a") >= 44.0, "a's p99 under max_running 2: {}", p99(&recorded, "a"));
    assert!(p99(&recorded, "b") < 1.0, "b has no quota: {}", p99(&recorded, "b"));
    assert_eq!(recorded.quotas.iter().map(|q| (q.project.as_str(), q.max_running)).collect::<Vec<_>>(), [("a", Some(2))]);
    let looser = run(&Engine::default(), records.clone(), toml::from_str("[quotas.a]\nmax_running = 10\n").unwrap());
    assert!(p99(&looser, "a") < p99(&recorded, "a") && p99(&looser, "a") >= 4.0, "max_running 10: {}", p99(&looser, "a"));
    let none = run(&Engine::default(), records.clone(), toml::from_str("[quotas.a]\n").unwrap());
    assert!(p99(&none, "a") < 1.0 && none.quotas.is_empty(), "no quota: {}", p99(&none, "a"));
    let cpu = run(&Engine::default(), records, toml::from_str("[quotas.b]\nmax_cpu_millicores = 5000\n").unwrap());
    assert!(p99(&cpu, "b") >= 14.0, "b at 5 tasks of 1000m at once: {}", p99(&cpu, "b"));
    assert_eq!(cpu.replay.placed, 40);
    assert!(toml::from_str::<Overlay>("[quotas.a]\nmax_running = -1\n").is_err());
    assert!(toml::from_str::<Overlay>("[quotas.a]\nmax_queued = 1\n").is_err(), "only the limits a replay models");
}

/// An autoscaled pool: two machines asked for at 0, joined at 10 s, gone at 100 s.
fn autoscaled_history(tasks: usize) -> Vec<Result<HistoryRecord, HistoryError>> {
    let mut head = vec![HistoryRecord::Pool(PoolRecord {
        pool: "burst".into(),
        min: 0,
        max: 4,
        max_creating: 4,
        cpu: 2000,
        memory: 4096,
        max_tasks: 10,
        labels: BTreeMap::new(),
        cooldown_seconds: 0.0,
        idle_seconds: 30.0,
        interval_seconds: 1.0,
    })];
    for m in ["m1", "m2"] {
        head.push(HistoryRecord::Machine(MachineRecord {
            machine: m.into(),
            pool: "burst".into(),
            asked: 0,
            joined: Some(10_000),
            gone: Some(100_000),
        }));
        head.push(node(&format!("node-{m}"), 10_000, NodeHistoryState::Ready, 2000, Some("burst")));
        head.push(node(&format!("node-{m}"), 100_000, NodeHistoryState::Gone, 2000, Some("burst")));
    }
    let tasks = (0..tasks)
        .map(|i| {
            let mut t = task("a", i as i64, 10_000, 20_000, 1000);
            t.pool = Some("burst".into());
            t.attempts[0].node = format!("node-m{}", 1 + i % 2);
            t
        })
        .collect();
    history(head, tasks)
}

/// As recorded, the pool's machines come and go as they did; scaled by the
/// replay (`[autoscale.burst]`), its autoscaler asks for what the queue
/// needs, up to max, and retires idle machines: a smaller max waits
/// longer, a longer idle time pays more machine-hours.
#[test]
fn the_replay_scales_an_autoscaled_pool_itself_when_asked() {
    let hours = |r: &ReplayReport| r.pools.iter().find(|p| p.pool == "burst").cloned().expect("the pool's hours");
    let recorded = run(&Engine::default(), autoscaled_history(16), Overlay::default());
    let h = hours(&recorded);
    assert!(!h.scaled_by_replay);
    assert!((h.real_machine_hours - 2.0 * 100.0 / 3600.0).abs() < 1e-3, "{h:?}");
    assert_eq!((h.real_machines, h.real_peak, h.replay_machine_hours), (2, 2, h.real_machine_hours));
    assert_eq!(recorded.replay_nodes, 2);

    let scaled = run(&Engine::default(), autoscaled_history(16), toml::from_str("[autoscale.burst]\n").unwrap());
    let s = hours(&scaled);
    assert!(s.scaled_by_replay);
    assert_eq!(scaled.replay.placed, 16);
    // Eight machines' worth of tasks, four allowed: four made at once,
    // taking tasks after the recorded 10 s, in two waves of 20 s.
    assert_eq!((s.replay_machines, s.replay_peak), (4, 4), "{s:?}");
    let p99 = |r: &ReplayReport| wait_of(&r.replay, "a").p99_seconds;
    assert!((29.0..=32.0).contains(&p99(&scaled)), "second wave waits 10 s + 20 s: {}", p99(&scaled));
    // Four machines from 0 to the end of the second wave (50 s) and 30 s idle.
    assert!((4.0 * 80.0 / 3600.0..=4.0 * 83.0 / 3600.0).contains(&s.replay_machine_hours), "{s:?}");

    let smaller = run(&Engine::default(), autoscaled_history(16), toml::from_str("[autoscale.burst]\nmax = 2\n").unwrap());
    assert_eq!(hours(&smaller).replay_peak, 2);
    assert!(p99(&smaller) > p99(&scaled) + 15.0, "max 2: {} s, max 4: {} s", p99(&smaller), p99(&scaled));
    let lingering = run(&Engine::default(), autoscaled_history(16), toml::from_str("[autoscale.burst]\nidle_seconds = 600\n").unwrap());
    assert!(hours(&lingering).replay_machine_hours > s.replay_machine_hours + 4.0 * 500.0 / 3600.0, "{:?}", hours(&lingering));
    let faster = run(&Engine::default(), autoscaled_history(16), toml::from_str("[autoscale.burst]\nprovision_seconds = 1\n").unwrap());
    assert!(p99(&faster) < p99(&scaled) - 8.0, "provisioned in 1 s: {} s", p99(&faster));
    let kept = run(&Engine::default(), autoscaled_history(2), toml::from_str("[autoscale.burst]\nmin = 1\n").unwrap());
    assert!(wait_of(&kept.replay, "a").p50_seconds < 1.0, "a machine kept up runs the first tasks at once");

    // Bad overlays name what is wrong.
    for (bad, says) in [
        ("[autoscale.other]\nmax = 2\n", "autoscale.other"),
        ("[autoscale.burst]\nmin = 5\n", "autoscale.burst"),
        ("[autoscale.burst]\nidle_seconds = -1\n", "autoscale.burst"),
        ("[autoscale.burst]\nmax_creating = 0\n", "autoscale.burst"),
        ("[autoscale.burst]\nmax = 100000\n[autoscale.other]\nmax = 100000\ncpu = 1\nmemory = 1\n", "more than"),
        ("[autoscale.burst]\n[scale_pools]\nburst = 2.0\n", "autoscale.burst"),
    ] {
        let overlay: Overlay = toml::from_str(bad).unwrap();
        let err = replay(&Engine::default(), autoscaled_history(4), &ReplayConfig { overlay, ..Default::default() }).err();
        assert!(err.as_ref().is_some_and(|e| e.0.contains(says)), "{bad}: {err:?}");
    }
    assert!(toml::from_str::<Overlay>("[autoscale.burst]\nnope = 1\n").is_err());
}

/// A contended pass is read lazily (only as far as it gets); it places
/// exactly what reading each pass's whole batch at once places: five
/// projects with weights, priorities and quotas, the cluster full for
/// long stretches, a node going away. (A queue longer than a pass is cut
/// the same way on both: `pass::allotment`'s own test.)
#[test]
fn reading_a_pass_lazily_places_what_the_whole_batch_places() {
    let mut head: Vec<HistoryRecord> =
        (0..6).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 4000 + 1000 * (i as u32 % 3), None)).collect();
    head.push(node("n0", 40_000, NodeHistoryState::Gone, 4000, None));
    head.push(HistoryRecord::Quota(QuotaRecord { project: "p3".into(), max_running: Some(3), ..Default::default() }));
    let mut state = 7u64;
    let mut unit = move || {
        state = shepherd_sched::rng::mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut tasks = Vec::new();
    for i in 0..3_000i64 {
        let project = format!("p{}", (unit() * 5.0) as u32);
        let at = if i < 2_000 { i * 4 } else { 8_000 + i * 20 };
        let mut t = task(&project, at, 0, 200 + (unit() * 3_000.0) as i64, 250 * (1 + (unit() * 4.0) as u32));
        t.priority = if unit() < 0.1 { 5 } else { 0 };
        tasks.push(t);
    }
    let records = history(head, tasks);
    let config = SchedulerConfig::from_toml("[projects.p1]\nweight = 3.0\n[projects.p4]\nweight = 0.5\n").unwrap();
    let engine = Engine::new(&config).unwrap();
    let lazy = replay(&engine, records.clone(), &ReplayConfig::default()).unwrap();
    let whole = replay(&engine, records, &ReplayConfig { whole_batches: true, ..Default::default() }).unwrap();
    assert_eq!(lazy.replay.placed, 3_000);
    eprintln!("{:?}\n{:?}", lazy.replay.waits, whole.replay.waits);
    assert_eq!(serde_json::to_value(&lazy.replay.waits).unwrap(), serde_json::to_value(&whole.replay.waits).unwrap());
    assert_eq!(lazy.replay.makespan_seconds, whole.replay.makespan_seconds);
    assert_eq!(lazy.replay.mean_cpu_utilization, whole.replay.mean_cpu_utilization);
    assert!(lazy.replay.decisions < whole.replay.decisions * 2, "the same tries: {} {}", lazy.replay.decisions, whole.replay.decisions);
    assert!(wait_of(&lazy.replay, "p0").p99_seconds > 5.0, "contended: {:?}", wait_of(&lazy.replay, "p0"));
}

/// Fragmentation over time on both sides: free CPU on nodes without room
/// for a typical task. Two nodes of 4 cores, tasks of 3 cores: each node
/// keeps one core nobody can use.
#[test]
fn fragmentation_is_measured_on_both_sides() {
    let nodes = (0..2).map(|i| node(&format!("n{i}"), -1, NodeHistoryState::Ready, 4000, None)).collect();
    let tasks: Vec<TaskRecord> = (0..20)
        .map(|i| {
            let mut t = task("a", i * 5_000, 0, 4_900, 3000);
            t.attempts[0].node = format!("n{}", i % 2);
            t
        })
        .collect();
    let report = run(&Engine::default(), history(nodes, tasks), Overlay::default());
    for side in [&report.real, &report.replay] {
        // While one node runs a task, its free core is stranded; the idle one's 4 are not.
        let busy = side.samples.iter().filter(|s| s.running == 1).collect::<Vec<_>>();
        assert!(!busy.is_empty());
        assert!(busy.iter().all(|s| (s.fragmentation - 0.2).abs() < 1e-9), "{}: {:?}", side.profile, busy[0]);
        assert!(side.mean_fragmentation > 0.1 && side.mean_fragmentation < 0.25, "{}: {}", side.profile, side.mean_fragmentation);
        assert!(busy.iter().all(|s| (s.memory_utilization - 256.0 / 131_072.0).abs() < 1e-9));
    }
}

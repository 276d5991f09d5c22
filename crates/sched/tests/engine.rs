//! The placement engine on hand-built clusters: profiles, filters, scores,
//! reasons, fairness and configuration.

use shepherd_core::{Constraint, Resources, TaskId};
use shepherd_sched::*;
use std::collections::HashMap;

fn res(cpu: u32, mem: u32) -> Resources {
    Resources { cpu_millicores: cpu, memory_mib: mem }
}

fn node(id: &str, cpu: u32, mem: u32) -> NodeSnapshot {
    NodeSnapshot::new(id, res(cpu, mem))
}

fn task(n: u128, cpu: u32, mem: u32) -> PendingTask {
    PendingTask::new(TaskId(ulid::Ulid(n + 1)), res(cpu, mem))
}

fn with_profile(mut t: PendingTask, profile: &str) -> PendingTask {
    t.profile = Some(profile.into());
    t
}

fn counts(plan: &PlacementPlan) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for p in &plan.placements {
        *counts.entry(p.node_id.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn spread_evens_out_and_binpack_fills_nodes_one_by_one() {
    let engine = Engine::default();
    let nodes: Vec<_> = (0..4).map(|i| node(&format!("n{i}"), 4000, 4000)).collect();
    let tasks: Vec<_> = (0..8).map(|i| with_profile(task(i, 500, 500), "spread")).collect();
    let plan = engine.place_batch(nodes.clone(), tasks, &HashMap::new(), 1);
    assert!(counts(&plan).values().all(|&c| c == 2), "{:?}", counts(&plan));
    let tasks: Vec<_> = (0..8).map(|i| with_profile(task(i, 500, 500), "binpack")).collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), 1);
    assert_eq!(counts(&plan).len(), 1, "binpack used one node: {:?}", counts(&plan));
}

#[test]
fn unplaced_tasks_say_why() {
    let engine = Engine::default();
    let mut eu = node("eu", 1000, 1000);
    eu.labels.insert("region".into(), "eu".into());
    let mut down = node("down", 8000, 8000);
    down.ready = false;
    let nodes = vec![node("small", 1000, 1000), eu, down];
    let mut big = task(1, 2000, 100);
    big.constraints = vec![];
    let mut ap = task(2, 100, 100);
    ap.constraints = vec![Constraint::parse("node.labels.region==ap").unwrap()];
    let plan = engine.place_batch(nodes, vec![big, ap], &HashMap::new(), 1);
    let reasons: HashMap<_, _> = plan.unplaced.into_iter().map(|u| (u.task_id, u.hold.to_string())).collect();
    assert_eq!(reasons[&TaskId(ulid::Ulid(2))], "0/3 nodes fit: 2 insufficient cpu, 1 not ready");
    // No node matches the constraint, busy or not: said plainly, and marked as never fitting.
    assert_eq!(
        reasons[&TaskId(ulid::Ulid(3))],
        "no node can ever run this task (0/3 fit even with nothing running): 3 constraint node.labels.region==ap"
    );
    let plan = engine.place_batch(vec![], vec![task(9, 1, 4)], &HashMap::new(), 1);
    assert_eq!(plan.unplaced[0].hold.to_string(), "no nodes in the cluster");
    assert_eq!(plan.unplaced[0].wait(), Wait::Room, "nodes may join");
}

#[test]
fn a_task_bigger_than_every_node_says_so_and_one_waiting_for_room_does_not() {
    let engine = Engine::default();
    let mut busy = node("busy", 8000, 8000);
    busy.allocated = res(7000, 100);
    busy.task_count = 3;
    let nodes = vec![node("small", 1000, 1000), busy];
    let huge = task(1, 256_000, 100);
    let waits = task(2, 4000, 100);
    let plan = engine.place_batch(nodes, vec![huge, waits], &HashMap::new(), 1);
    let by_id: HashMap<_, _> = plan.unplaced.iter().map(|u| (u.task_id, u)).collect();
    let huge = by_id[&TaskId(ulid::Ulid(2))];
    assert_eq!(huge.wait(), Wait::NeverFits);
    assert_eq!(
        huge.hold.to_string(),
        "no node can ever run this task (0/2 fit even with nothing running): \
         2 too little cpu in all (the task asks 256000 millicores; the largest node has 8000)"
    );
    let waits = by_id[&TaskId(ulid::Ulid(3))];
    assert_eq!(waits.wait(), Wait::Room);
    assert_eq!(waits.hold.to_string(), "0/2 nodes fit: 2 insufficient cpu");
    // Structured: the counts per reason, for any other renderer.
    let Hold::Unfit(unfit) = &waits.hold else { panic!("{waits:?}") };
    assert_eq!(unfit.rejections, vec![(Rejection::InsufficientCpu, 2)]);
}

#[test]
fn a_pass_places_page_after_page_and_charges_quota_only_for_placed_tasks() {
    let engine = Engine::default();
    let limits = HashMap::from([("p".to_string(), shepherd_core::ProjectLimits { max_running: Some(1), ..Default::default() })]);
    let mut pass = engine.pass(vec![node("n", 2000, 2000)], HashMap::new(), QuotaLedger::new(HashMap::new(), limits), 1);
    let in_project = |n, cpu| {
        let mut t = task(n, cpu, 10);
        t.project = "p".into();
        t
    };
    // The first page's task fits nowhere: it must not use the project's only running slot.
    let first = pass.place(vec![in_project(1, 5000)]);
    assert_eq!(first.unplaced[0].wait(), Wait::NeverFits);
    let second = pass.place(vec![in_project(2, 1500), in_project(3, 100)]);
    assert_eq!(second.placements.len(), 1, "{second:?}");
    assert_eq!(second.unplaced[0].wait(), Wait::Quota);
    assert_eq!(second.unplaced[0].hold.to_string(), "project quota: 1 of 1 running tasks in use");
    // The node as the first page left it: 1500 of 2000 millicores taken.
    let third = pass.place(vec![task(4, 600, 10)]);
    assert_eq!(third.unplaced[0].hold.to_string(), "0/1 nodes fit: 1 insufficient cpu");
}

#[test]
fn pools_and_dedicated_nodes() {
    let engine = Engine::default();
    let mut gpu = node("gpu", 8000, 8000);
    gpu.pool = Some("gpu".into());
    let mut dedicated = node("acme-only", 8000, 8000);
    dedicated.dedicated_to = vec!["acme".into()];
    let nodes = vec![gpu, dedicated, node("shared", 4000, 4000)];
    let mut wants_gpu = task(1, 100, 100);
    wants_gpu.pool = Some("gpu".into());
    let mut globex = task(2, 3000, 100);
    globex.project = "globex".into();
    let mut too_big = task(3, 3000, 100);
    too_big.project = "globex".into();
    let mut acme = task(4, 6000, 100);
    acme.project = "acme".into();
    let plan = engine.place_batch(nodes, vec![wants_gpu, globex, too_big, acme], &HashMap::new(), 1);
    let placed: HashMap<_, _> = plan.placements.iter().map(|p| (p.task_id, p.node_id.as_str())).collect();
    assert_eq!(placed[&TaskId(ulid::Ulid(2))], "gpu");
    assert_eq!(placed[&TaskId(ulid::Ulid(3))], "shared");
    assert_eq!(placed[&TaskId(ulid::Ulid(5))], "acme-only");
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].hold.to_string(), "0/3 nodes fit: 1 insufficient cpu, 1 other pool, 1 dedicated to other projects");
}

#[test]
fn anti_affinity_keeps_replicas_apart() {
    let engine = Engine::default();
    let nodes: Vec<_> = (0..3).map(|i| node(&format!("n{i}"), 8000, 8000)).collect();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let mut t = with_profile(task(i, 100, 100), "binpack");
            t.anti_affinity = Some(AntiAffinity { label: "app=web".into(), max_per_node: 1 });
            t
        })
        .collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), 1);
    assert_eq!(counts(&plan).len(), 3);
    assert_eq!(plan.unplaced.len(), 1);
    assert!(plan.unplaced[0].hold.to_string().contains("3 anti-affinity app=web"), "{}", plan.unplaced[0].hold.to_string());
}

#[test]
fn priorities_first_then_fair_share_across_projects() {
    let engine = Engine::default();
    let nodes = vec![node("n", 2000, 100_000)];
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut t = task(i, 100, 10);
        t.project = "flood".into();
        tasks.push(t);
    }
    for i in 1000..1010 {
        let mut t = task(i, 100, 10);
        t.project = "small".into();
        tasks.push(t);
    }
    let mut urgent = task(5000, 100, 10);
    urgent.project = "flood".into();
    urgent.priority = 10;
    tasks.push(urgent);
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), 1);
    assert_eq!(plan.placements.len(), 20);
    assert_eq!(plan.placements[0].task_id, TaskId(ulid::Ulid(5001)), "the high-priority task goes first");
    let small = plan.placements.iter().filter(|p| (1001..=1010).contains(&p.task_id.0 .0)).count();
    assert!(small >= 9, "the small project got {small} of 20 slots");
}

#[test]
fn weights_tilt_the_fair_share() {
    let config = SchedulerConfig::from_toml("[projects.gold]\nweight = 3.0\n").unwrap();
    let engine = Engine::new(&config).unwrap();
    let mut tasks = Vec::new();
    for (project, base) in [("gold", 0), ("bronze", 1000)] {
        for i in 0..100 {
            let mut t = task(base + i, 100, 10);
            t.project = project.into();
            tasks.push(t);
        }
    }
    let plan = engine.place_batch(vec![node("n", 4000, 100_000)], tasks, &HashMap::new(), 1);
    let gold = plan.placements.iter().filter(|p| p.task_id.0 .0 <= 100).count();
    assert_eq!(plan.placements.len(), 40);
    assert!((28..=32).contains(&gold), "gold got {gold} of 40 with weight 3:1");
}

#[test]
fn image_locality_and_topology_spread_in_a_configured_profile() {
    let config = SchedulerConfig::from_toml(
        r#"
        default_profile = "local"
        [profiles.local]
        order = "scan"
        candidates = 100
        scores = { image_locality = 1.0 }
        [profiles.zones]
        order = "scan"
        candidates = 100
        scores = { topology_spread = 1.0 }
        "#,
    )
    .unwrap();
    let engine = Engine::new(&config).unwrap();
    let mut warm = node("warm", 4000, 4000);
    warm.images = vec!["app:1".into()];
    let mut t = task(1, 100, 100);
    t.image = "app:1".into();
    let plan = engine.place_batch(vec![node("cold", 4000, 4000), warm], vec![t], &HashMap::new(), 1);
    assert_eq!(plan.placements[0].node_id, "warm");

    let nodes: Vec<_> = ["a", "a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, zone)| {
            let mut n = node(&format!("n{i}"), 8000, 8000);
            n.labels.insert("zone".into(), zone.to_string());
            n
        })
        .collect();
    let tasks: Vec<_> = (0..6).map(|i| with_profile(task(i, 100, 100), "zones")).collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), 1);
    let mut per_zone: HashMap<&str, usize> = HashMap::new();
    for p in &plan.placements {
        let zone = match p.node_id.as_str() {
            "n0" | "n1" => "a",
            "n2" => "b",
            _ => "c",
        };
        *per_zone.entry(zone).or_default() += 1;
    }
    assert_eq!(per_zone.values().copied().collect::<std::collections::BTreeSet<_>>(), [2].into(), "{per_zone:?}");
}

#[test]
fn the_built_in_profiles_prefer_a_node_with_an_idle_warm_container_of_the_task_key() {
    let engine = Engine::default();
    for profile in ["spread", "binpack"] {
        // The warm node is the busier one: spread alone would pick the other.
        let mut warm = node("warm", 4000, 4000);
        warm.allocated = res(1000, 1000);
        warm.task_count = 1;
        warm.images = vec!["busybox".into(), "warm=00000000000000aa".into()];
        let idle = node("idle", 4000, 4000);
        let mut t = with_profile(task(1, 100, 100), profile);
        t.warm_key = Some("warm=00000000000000aa".into());
        let plan = engine.place_batch(vec![idle.clone(), warm.clone()], vec![t.clone()], &HashMap::new(), 1);
        assert_eq!(plan.placements[0].node_id, "warm", "{profile}");
        // Another key, or no reuse: the profile's own choice.
        t.warm_key = Some("warm=00000000000000bb".into());
        let other = engine.place_batch(vec![idle.clone(), warm.clone()], vec![t.clone()], &HashMap::new(), 1);
        t.warm_key = None;
        let none = engine.place_batch(vec![idle, warm], vec![t], &HashMap::new(), 1);
        assert_eq!(other.placements[0].node_id, none.placements[0].node_id, "{profile}");
        if profile == "spread" {
            assert_eq!(none.placements[0].node_id, "idle");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_placements() {
    let engine = Engine::default();
    let nodes: Vec<_> = (0..50).map(|i| node(&format!("n{i}"), 4000, 4000)).collect();
    let tasks: Vec<_> = (0..100).map(|i| with_profile(task(i, 300, 300), "random")).collect();
    let a = engine.place_batch(nodes.clone(), tasks.clone(), &HashMap::new(), 7);
    let b = engine.place_batch(nodes.clone(), tasks.clone(), &HashMap::new(), 7);
    let c = engine.place_batch(nodes, tasks, &HashMap::new(), 8);
    assert_eq!(a.placements, b.placements);
    assert_ne!(a.placements, c.placements);
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let err = |text: &str| Engine::new(&SchedulerConfig::from_toml(text).unwrap()).err().unwrap().to_string();
    assert!(err("[profiles.x]\nscores = { nope = 1.0 }").contains("unknown score plugin `nope`"));
    assert!(err("[profiles.x]\nfilters = [\"nope\"]\nscores = { spread = 1.0 }").contains("unknown filter `nope`"));
    assert!(err("[profiles.x]\nscores = {}").contains("at least one score plugin"));
    assert!(err("[profiles.x]\nscores = { spread = -1.0 }").contains("positive"));
    assert!(err("default_profile = \"ghost\"").contains("unknown profile `ghost`"));
    assert!(SchedulerConfig::from_toml("[profiles.x]\nscores = { spread = 1.0 }\ncolour = 1").is_err());
}

#[test]
fn gpus_are_a_resource_with_reasons_and_quotas() {
    let engine = Engine::default();
    let mut a = node("a", 8000, 8000);
    a.gpus = 2;
    let b = node("b", 8000, 8000);
    let gpu_task = |n| {
        let mut t = task(n, 100, 100);
        t.gpus = 1;
        t
    };
    let plan = engine.place_batch(vec![a.clone(), b.clone()], (0..3).map(gpu_task).collect(), &HashMap::new(), 1);
    assert_eq!(plan.placements.len(), 2);
    assert!(plan.placements.iter().all(|p| p.node_id == "a"));
    let reason = plan.unplaced[0].hold.to_string();
    assert!(reason.contains("insufficient gpu"), "{reason}");
    // More than any node has: never fits, and says so.
    let mut big = task(9, 100, 100);
    big.gpus = 3;
    let plan = engine.place_batch(vec![a.clone(), b], vec![big], &HashMap::new(), 1);
    let reason = plan.unplaced[0].hold.to_string();
    assert!(reason.contains("no node can ever run") && reason.contains("too few gpus in all"), "{reason}");
    // A project quota on GPUs.
    let limits = HashMap::from([("default".to_string(), shepherd_core::ProjectLimits { max_gpus: Some(1), ..Default::default() })]);
    let mut pass = engine.pass(vec![a], HashMap::new(), QuotaLedger::new(HashMap::new(), limits), 1);
    let plan = pass.place((0..2).map(gpu_task).collect());
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.unplaced[0].hold.to_string(), "project quota: 1 of 1 gpus in use");
}

#[test]
fn devices_and_volumes_filter_with_reasons_even_in_profiles_that_list_no_such_filter() {
    let config: SchedulerConfig = toml::from_str(
        r#"
        [profiles.bare]
        filters = ["resources"]
        scores = { spread = 1.0 }
        "#,
    )
    .unwrap();
    let engine = Engine::new(&config).unwrap();
    let mut a = node("a", 8000, 8000);
    a.devices = vec!["fuse".into()];
    let b = node("b", 8000, 8000);
    let mut fuse = with_profile(task(1, 100, 100), "bare");
    fuse.devices = vec!["fuse".into()];
    let mut pinned = with_profile(task(2, 100, 100), "bare");
    pinned.volumes = vec![NodeVolume { name: "cache".into(), node: Some("b".into()) }];
    let mut gone = with_profile(task(3, 100, 100), "bare");
    gone.volumes = vec![NodeVolume { name: "old".into(), node: Some("z".into()) }];
    let plan = engine.place_batch(vec![a, b], vec![fuse, pinned, gone], &HashMap::new(), 1);
    let at: HashMap<u128, String> = plan.placements.iter().map(|p| (p.task_id.0 .0 - 1, p.node_id.clone())).collect();
    assert_eq!(at[&1], "a");
    assert_eq!(at[&2], "b");
    let reason = plan.unplaced[0].hold.to_string();
    assert!(reason.contains("volume old lives on node z"), "{reason}");
}

#[test]
fn no_profile_opens_another_project_s_dedicated_node_or_a_draining_one() {
    // An operator's profile listing only `resources`: the tenant boundary
    // (nodes dedicated to other projects) and readiness hold anyway.
    let config: SchedulerConfig = toml::from_str(
        r#"
        [profiles.bare]
        filters = ["resources"]
        scores = { spread = 1.0 }
        "#,
    )
    .unwrap();
    let engine = Engine::new(&config).unwrap();
    let mut acme_only = node("acme-only", 64000, 64000);
    acme_only.dedicated_to = vec!["acme".into()];
    let mut draining = node("draining", 64000, 64000);
    draining.ready = false;
    let shared = node("shared", 1000, 1000);
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let mut t = with_profile(task(i, 400, 400), "bare");
            t.project = "beta".into();
            t
        })
        .collect();
    let plan = engine.place_batch(vec![acme_only.clone(), draining, shared], tasks, &HashMap::new(), 1);
    assert!(plan.placements.iter().all(|p| p.node_id == "shared"), "{:?}", plan.placements);
    assert_eq!(plan.placements.len(), 2, "the third fits only on nodes it may not use");
    let reason = plan.unplaced[0].hold.to_string();
    assert!(reason.contains("dedicated"), "{reason}");
    // acme's own task may use its node through the same profile.
    let mut own = with_profile(task(9, 400, 400), "bare");
    own.project = "acme".into();
    let plan = engine.place_batch(vec![acme_only], vec![own], &HashMap::new(), 1);
    assert_eq!(plan.placements.len(), 1);
}

#[test]
fn an_unbound_local_volume_is_bound_by_its_first_placement_in_the_pass() {
    let engine = Engine::default();
    let nodes: Vec<_> = (0..4).map(|i| node(&format!("n{i}"), 8000, 8000)).collect();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let mut t = with_profile(task(i, 100, 100), "spread");
            t.volumes = vec![NodeVolume { name: "cache".into(), node: None }];
            t
        })
        .collect();
    let plan = engine.place_batch(nodes, tasks, &HashMap::new(), 7);
    assert_eq!(plan.placements.len(), 12);
    assert_eq!(counts(&plan).len(), 1, "spread, yet all on the volume's node: {:?}", counts(&plan));
}

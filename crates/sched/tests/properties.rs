//! Properties of placement over random clusters and batches: no node is
//! over-committed, no constraint is violated, a dedicated node never takes
//! another project's task, a task naming a pool lands only in it, and the
//! same seed gives the same placements.

use proptest::prelude::*;
use shepherd_core::{Constraint, Resources, TaskId};
use shepherd_sched::*;
use std::collections::HashMap;

fn arb_node(i: usize) -> impl Strategy<Value = NodeSnapshot> {
    (1u32..16, 1u32..64, 0usize..3, prop::option::of(0usize..2), prop::bool::weighted(0.15), prop::bool::weighted(0.9), 1u32..40).prop_map(
        move |(cores, gib, region, pool, dedicated, ready, max_tasks)| {
            let mut n = NodeSnapshot::new(format!("n{i}"), Resources { cpu_millicores: cores * 1000, memory_mib: gib * 1024 });
            n.labels.insert("region".into(), ["eu", "us", "ap"][region].into());
            n.pool = pool.map(|p| ["gpu", "batch"][p].to_string());
            if dedicated {
                n.dedicated_to = vec!["acme".into()];
            }
            n.ready = ready;
            n.max_tasks = max_tasks;
            n
        },
    )
}

fn arb_task(i: usize) -> impl Strategy<Value = PendingTask> {
    (1u32..4000, 4u32..16_384, 0usize..4, prop::option::of(0usize..3), 0usize..3, 0usize..4, prop::option::of(1u32..3)).prop_map(
        move |(cpu, mem, project, region, pool, profile, anti)| {
            let mut t = PendingTask::new(TaskId(ulid::Ulid(i as u128 + 1)), Resources { cpu_millicores: cpu, memory_mib: mem });
            t.project = ["acme", "globex", "initech", "umbrella"][project].into();
            if let Some(r) = region {
                t.constraints.push(Constraint::parse(&format!("node.labels.region=={}", ["eu", "us", "ap"][r])).unwrap());
            }
            t.pool = [None, Some("gpu".to_string()), Some("batch".to_string())][pool].clone();
            t.profile = [None, Some("spread".into()), Some("binpack".into()), Some("random".into())][profile].clone();
            t.anti_affinity = anti.map(|max| AntiAffinity { label: "app=web".into(), max_per_node: max });
            t
        },
    )
}

fn arb_case() -> impl Strategy<Value = (Vec<NodeSnapshot>, Vec<PendingTask>, u64)> {
    (1usize..40, 1usize..200, any::<u64>()).prop_flat_map(|(n, t, seed)| {
        let nodes: Vec<_> = (0..n).map(arb_node).collect();
        let tasks: Vec<_> = (0..t).map(arb_task).collect();
        (nodes, tasks, Just(seed))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn placements_respect_capacity_constraints_pools_and_seeds((nodes, tasks, seed) in arb_case()) {
        let engine = Engine::default();
        let plan = engine.place_batch(nodes.clone(), tasks.clone(), &HashMap::new(), seed);
        let by_id: HashMap<_, _> = tasks.iter().map(|t| (t.id, t)).collect();
        let mut nodes_by_id: HashMap<String, NodeSnapshot> = nodes.iter().map(|n| (n.id.clone(), n.clone())).collect();
        prop_assert_eq!(plan.placements.len() + plan.unplaced.len(), tasks.len());
        for p in &plan.placements {
            let task = by_id[&p.task_id];
            let node = nodes_by_id.get_mut(&p.node_id).unwrap();
            prop_assert!(node.ready);
            for c in &task.constraints {
                prop_assert!(c.matches(|a| node.attribute(a)), "constraint {} violated on {}", c, node.id);
            }
            if !node.dedicated_to.is_empty() {
                prop_assert!(node.dedicated_to.contains(&task.project), "{} on a node dedicated to {:?}", task.project, node.dedicated_to);
            }
            if let Some(pool) = &task.pool {
                prop_assert_eq!(node.pool.as_ref(), Some(pool));
            }
            node.allocated.cpu_millicores += task.resources.cpu_millicores;
            node.allocated.memory_mib += task.resources.memory_mib;
            node.task_count += 1;
            if let Some(rule) = &task.anti_affinity {
                let count = node.label_counts.entry(rule.label.clone()).or_default();
                *count += 1;
                prop_assert!(*count <= rule.max_per_node);
            }
            prop_assert!(node.allocated.cpu_millicores <= node.capacity.cpu_millicores, "cpu over-committed on {}", node.id);
            prop_assert!(node.allocated.memory_mib <= node.capacity.memory_mib, "memory over-committed on {}", node.id);
            prop_assert!(node.task_count <= node.max_tasks);
        }
        let again = engine.place_batch(nodes, tasks, &HashMap::new(), seed);
        prop_assert_eq!(plan.placements, again.placements);
    }
}

/// A cluster with GPUs and devices, and tasks that mount node-scoped
/// volumes (some already bound to a node, some to a node that is gone) and
/// ask for GPUs and devices.
fn arb_volume_case() -> impl Strategy<Value = (Vec<NodeSnapshot>, Vec<PendingTask>, u64)> {
    let node = |i: usize| {
        (0u32..4, prop::bool::ANY, prop::bool::weighted(0.9)).prop_map(move |(gpus, fuse, ready)| {
            let mut n = NodeSnapshot::new(format!("n{i}"), Resources { cpu_millicores: 8000, memory_mib: 16_384 });
            n.gpus = gpus;
            n.devices = if fuse { vec!["fuse".into(), "null".into()] } else { vec!["null".into()] };
            n.ready = ready;
            n
        })
    };
    let task = |i: usize| {
        (0usize..2, prop::collection::vec((0usize..4, prop::option::of(0usize..6)), 0..3), 0u32..3, prop::bool::weighted(0.2), 0usize..3)
            .prop_map(move |(project, volumes, gpus, fuse, profile)| {
                let mut t = PendingTask::new(TaskId(ulid::Ulid(i as u128 + 1)), Resources { cpu_millicores: 500, memory_mib: 512 });
                t.project = ["acme", "globex"][project].into();
                let mut names: Vec<usize> = Vec::new();
                for (v, bound) in volumes {
                    if names.contains(&v) {
                        continue;
                    }
                    names.push(v);
                    // A volume's binding is the same for every task of the
                    // project that reads it in one pass: by its name.
                    let node = bound.filter(|_| v % 2 == 0).map(|b| format!("n{}", (v + b) % 5));
                    t.volumes.push(NodeVolume { name: format!("v{v}"), node });
                }
                t.gpus = gpus;
                if fuse {
                    t.devices.push("fuse".into());
                }
                t.profile = [None, Some("binpack".into()), Some("random".into())][profile].clone();
                t
            })
    };
    (1usize..6, 1usize..80, any::<u64>()).prop_flat_map(move |(n, t, seed)| {
        let nodes: Vec<_> = (0..n).map(node).collect();
        let tasks: Vec<_> = (0..t).map(task).collect();
        (nodes, tasks, Just(seed))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A task using a node-scoped volume never runs anywhere but where the
    /// volume lives (or, unbound, where the pass's first task of it went);
    /// GPUs are never over-committed; devices are always there.
    #[test]
    fn local_volumes_pin_tasks_and_gpus_and_devices_fit((nodes, mut tasks, seed) in arb_volume_case()) {
        // Bindings are per volume, not per task: make them agree (as the
        // server gives them: the store's binding of that volume).
        let mut binding: HashMap<(String, String), Option<String>> = HashMap::new();
        for t in &mut tasks {
            for v in &mut t.volumes {
                let key = (t.project.clone(), v.name.clone());
                v.node = binding.entry(key).or_insert_with(|| v.node.clone()).clone();
            }
        }
        let engine = Engine::default();
        let plan = engine.place_batch(nodes.clone(), tasks.clone(), &HashMap::new(), seed);
        prop_assert_eq!(plan.placements.len() + plan.unplaced.len(), tasks.len());
        let by_id: HashMap<_, _> = tasks.iter().map(|t| (t.id, t)).collect();
        let mut gpus_used: HashMap<String, u32> = HashMap::new();
        let mut lives: HashMap<(String, String), String> = HashMap::new();
        for p in &plan.placements {
            let task = by_id[&p.task_id];
            let node = nodes.iter().find(|n| n.id == p.node_id).unwrap();
            for v in &task.volumes {
                if let Some(bound) = &v.node {
                    prop_assert_eq!(bound, &p.node_id, "volume {} bound to {} but its task ran on {}", v.name, bound, p.node_id);
                }
                let at = lives.entry((task.project.clone(), v.name.clone())).or_insert_with(|| p.node_id.clone());
                prop_assert_eq!(&*at, &p.node_id, "two tasks of volume {} on two nodes", v.name);
            }
            let used = gpus_used.entry(p.node_id.clone()).or_default();
            *used += task.gpus;
            prop_assert!(*used <= node.gpus, "gpus over-committed on {}", node.id);
            for d in &task.devices {
                prop_assert!(node.devices.contains(d));
            }
        }
        // A task whose volume lives on a node that is not there never runs, and says why.
        for u in &plan.unplaced {
            let task = by_id[&u.task_id];
            if task.volumes.iter().any(|v| v.node.as_ref().is_some_and(|n| !nodes.iter().any(|x| &x.id == n))) {
                prop_assert!(u.hold.to_string().contains("lives on node") || u.hold.to_string().contains("quota"), "{}", u.hold);
            }
        }
    }
}

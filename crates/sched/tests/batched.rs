//! Batched plugins (the seam run-time plugins use): the same placements as
//! the same logic called node by node, reasons in the words of the plugin,
//! and a failing plugin holding only the tasks of its profiles.

use proptest::prelude::*;
use shepherd_core::{Resources, TaskId};
use shepherd_sched::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Keeps nodes whose label `tier` is `gold`; batched or not; counts calls.
struct Tier {
    batched: bool,
    calls: Arc<AtomicUsize>,
}

impl FilterPlugin for Tier {
    fn name(&self) -> &str {
        "tier"
    }
    fn filter(&self, _: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        if !self.batched {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        match node.labels.get("tier").map(String::as_str) {
            Some("gold") => Ok(()),
            _ => Err(Rejection::Other { filter: "tier".into(), reason: "not gold".into() }),
        }
    }
    fn batched(&self) -> bool {
        self.batched
    }
    fn filter_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], out: &mut Vec<Result<(), Rejection>>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let batched = Tier { batched: false, calls: Arc::new(AtomicUsize::new(0)) };
        out.extend(nodes.iter().map(|n| batched.filter(task, n)));
    }
}

/// Prefers a lower `cost` label; batched or not; or failing.
struct Cost {
    batched: bool,
    fail: bool,
}

impl ScorePlugin for Cost {
    fn name(&self) -> &str {
        "cost"
    }
    fn score(&self, _: &PendingTask, node: &NodeSnapshot, _: &ClusterView<'_>) -> f64 {
        let cost: f64 = node.labels.get("cost").and_then(|c| c.parse().ok()).unwrap_or(9.0);
        1.0 - cost / 10.0
    }
    fn batched(&self) -> bool {
        self.batched
    }
    fn score_batch(
        &self,
        task: &PendingTask,
        nodes: &[&NodeSnapshot],
        view: &ClusterView<'_>,
        out: &mut Vec<f64>,
    ) -> Result<(), Rejection> {
        if self.fail {
            return Err(Rejection::Other { filter: "cost".into(), reason: "out of fuel".into() });
        }
        out.extend(nodes.iter().map(|n| self.score(task, n, view)));
        Ok(())
    }
}

fn engine(batched: bool, fail: bool, calls: Arc<AtomicUsize>) -> Engine {
    let registry = Registry::builtin()
        .with_filter("tier", move |_| Ok(Arc::new(Tier { batched, calls: calls.clone() }) as Arc<dyn FilterPlugin>))
        .with_scorer("cost", move |_| Ok(Arc::new(Cost { batched, fail }) as Arc<dyn ScorePlugin>));
    let config = SchedulerConfig::from_toml(
        "[profiles.gold]\nfilters = [\"resources\", \"tier\"]\nscores = { cost = 2.0, spread = 1.0 }\ncandidates = 4\n",
    )
    .unwrap();
    Engine::with_registry(&config, &registry).unwrap()
}

fn nodes(count: usize, gold_every: usize) -> Vec<NodeSnapshot> {
    (0..count)
        .map(|i| {
            let mut n = NodeSnapshot::new(format!("n{i}"), Resources { cpu_millicores: 2000, memory_mib: 2048 });
            if i % gold_every == 0 {
                n.labels.insert("tier".into(), "gold".into());
            }
            n.labels.insert("cost".into(), (i % 10).to_string());
            n
        })
        .collect()
}

fn tasks(count: u128, profile: &str) -> Vec<PendingTask> {
    (0..count)
        .map(|i| {
            let mut t = PendingTask::new(TaskId(ulid::Ulid(i + 1)), Resources { cpu_millicores: 500, memory_mib: 256 });
            t.profile = Some(profile.into());
            t
        })
        .collect()
}

proptest! {
    #[test]
    fn batched_plugins_place_exactly_as_the_same_logic_node_by_node(count in 1usize..200, gold_every in 1usize..40, n in 1u128..120, seed in any::<u64>()) {
        let one_by_one = engine(false, false, Arc::new(AtomicUsize::new(0)));
        let batched = engine(true, false, Arc::new(AtomicUsize::new(0)));
        let a = one_by_one.place_batch(nodes(count, gold_every), tasks(n, "gold"), &HashMap::new(), seed);
        let b = batched.place_batch(nodes(count, gold_every), tasks(n, "gold"), &HashMap::new(), seed);
        prop_assert_eq!(&a.placements, &b.placements);
        let reasons = |p: &PlacementPlan| p.unplaced.iter().map(|u| (u.task_id, u.hold.to_string())).collect::<Vec<_>>();
        prop_assert_eq!(reasons(&a), reasons(&b));
    }
}

#[test]
fn a_batched_filter_crosses_its_boundary_a_few_times_per_task_not_per_node() {
    let calls = Arc::new(AtomicUsize::new(0));
    let engine = engine(true, false, calls.clone());
    // One node in 50 is gold: a node-by-node filter would be called ~200 times per task.
    let plan = engine.place_batch(nodes(10_000, 50), tasks(100, "gold"), &HashMap::new(), 7);
    assert_eq!(plan.placements.len(), 100);
    let per_task = calls.load(Ordering::Relaxed) as f64 / 100.0;
    assert!(per_task <= 8.0, "{per_task} calls per task");
}

#[test]
fn reasons_name_the_plugin_and_a_failing_scorer_holds_only_its_profile() {
    let engine = engine(true, true, Arc::new(AtomicUsize::new(0)));
    let mut all = tasks(3, "gold");
    all.extend(tasks(3, "spread").into_iter().map(|mut t| {
        t.id = TaskId(ulid::Ulid(t.id.0 .0 + 100));
        t
    }));
    let plan = engine.place_batch(nodes(10, 5), all, &HashMap::new(), 1);
    assert_eq!(plan.placements.len(), 3, "the spread tasks are placed");
    assert!(plan.placements.iter().all(|p| p.task_id.0 .0 > 100));
    for u in &plan.unplaced {
        assert_eq!(u.hold.to_string(), "0/10 nodes fit: 2 rejected by cost: out of fuel");
    }
    // No gold node at all: the filter's own words, counted per node.
    let engine = engine_ok();
    let plan = engine.place_batch(nodes(10, 1000).into_iter().skip(1).collect(), tasks(1, "gold"), &HashMap::new(), 1);
    assert_eq!(
        plan.unplaced[0].hold.to_string(),
        "no node can ever run this task (0/9 fit even with nothing running): 9 rejected by tier: not gold"
    );
}

fn engine_ok() -> Engine {
    engine(true, false, Arc::new(AtomicUsize::new(0)))
}

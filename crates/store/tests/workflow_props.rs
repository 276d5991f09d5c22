//! A property of dependencies, on random graphs with random outcomes: no
//! task starts before its dependencies are met, every task ends in exactly
//! one terminal state, and it is the right one (its own outcome if it ran,
//! `cancelled` with `dependency_failed` if a dependency never could be met).
//! Runs on SQLite (the conformance suite covers PostgreSQL's bookkeeping
//! against the same rules).

use proptest::prelude::*;
use shepherd_core::{
    validate, ClusterEvent, DependOn, Dependency, DependencyTarget, Event, Limits, TaskId, TaskSpec, TaskState, Timestamp,
};
use shepherd_store::*;
use std::collections::HashMap;

/// What a task does if it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Succeed,
    Fail,
    Cancel,
}

#[derive(Debug, Clone)]
struct Node {
    deps: Vec<(usize, DependOn)>,
    outcome: Outcome,
}

fn graph() -> impl Strategy<Value = Vec<Node>> {
    (2usize..24).prop_flat_map(|n| {
        let nodes: Vec<_> = (0..n)
            .map(|i| {
                let deps = proptest::collection::vec(
                    (0..i.max(1), prop_oneof![Just(DependOn::Succeeded), Just(DependOn::Finished)]),
                    0..=i.min(3),
                );
                let outcome = prop_oneof![4 => Just(Outcome::Succeed), 2 => Just(Outcome::Fail), 1 => Just(Outcome::Cancel)];
                (deps, outcome).prop_map(move |(deps, outcome)| {
                    // The first node has none; positions only point backwards; each once.
                    let mut seen = Vec::new();
                    let deps = if i == 0 {
                        Vec::new()
                    } else {
                        deps.into_iter()
                            .filter(|(d, _)| {
                                !seen.contains(d) && {
                                    seen.push(*d);
                                    true
                                }
                            })
                            .collect()
                    };
                    Node { deps, outcome }
                })
            })
            .collect();
        nodes
    })
}

fn end_of(outcome: Outcome) -> TaskState {
    match outcome {
        Outcome::Succeed => TaskState::Succeeded,
        Outcome::Fail => TaskState::Failed,
        Outcome::Cancel => TaskState::Cancelled,
    }
}

async fn check(nodes: Vec<Node>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).unwrap();
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let ids: Vec<TaskId> = (0..nodes.len()).map(|_| TaskId::generate(&mut gen, now)).collect();
    let entries = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
            spec.project = "p".into();
            spec.depends_on =
                node.deps.iter().map(|(d, on)| Dependency { task: DependencyTarget::Id(ids[*d].to_string()), on: *on }).collect();
            Entry::Task(validate(spec, &Limits::default(), ids[i], now).unwrap())
        })
        .collect();
    store.submit(Submission { entries, batch: true, ..Default::default() }).await.unwrap();
    let index: HashMap<TaskId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut ended: HashMap<usize, TaskState> = HashMap::new();
    loop {
        let queue = store.queued_tasks(Timestamp::now(), QueueQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let Some(next) = queue.tasks.first() else { break };
        let i = index[&next.id];
        // None starts before its dependencies are met.
        for (d, on) in &nodes[i].deps {
            let end = ended.get(d).copied();
            assert!(end.is_some_and(|e| on.satisfied_by(e)), "task {i} queued while dependency {d} is {end:?} ({on:?})");
        }
        let t = Timestamp::now();
        let id = next.id;
        match nodes[i].outcome {
            Outcome::Cancel => {
                store.apply(vec![(id, Event::Cancel)], t).await.unwrap().remove(0).unwrap();
            }
            outcome => {
                store.apply(vec![(id, Event::Schedule { node_id: "n".into() })], t).await.unwrap().remove(0).unwrap();
                store.apply(vec![(id, Event::Start { attempt: 1, at: None, runtime: None })], t).await.unwrap().remove(0).unwrap();
                let code = if outcome == Outcome::Succeed { 0 } else { 1 };
                store
                    .apply(vec![(id, Event::Exit { attempt: 1, code, oom_killed: false, at: None, usage: None, result: None })], t)
                    .await
                    .unwrap()
                    .remove(0)
                    .unwrap();
            }
        }
        ended.insert(i, end_of(nodes[i].outcome));
        // Whatever the store ended on its own (dependents that never can run).
        for (j, id) in ids.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = ended.entry(j) {
                let task = store.get_task(*id).await.unwrap().unwrap();
                if task.state.is_terminal() {
                    slot.insert(task.state);
                }
            }
        }
    }
    // Every task ended, exactly once, in the state its graph says.
    let events = store.read_events(None, 100_000).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let task = store.get_task(*id).await.unwrap().unwrap();
        let terminal =
            events.iter().filter(|e| matches!(&e.event, ClusterEvent::Task(t) if t.task == *id && t.state.is_terminal())).count();
        assert_eq!(terminal, 1, "task {i}: {terminal} terminal events");
        let blocked = nodes[i].deps.iter().any(|(d, on)| !on.satisfied_by(ended[d]));
        if blocked {
            assert_eq!(task.state, TaskState::Cancelled, "task {i}");
            assert!(task.reason.as_deref().is_some_and(|r| r.starts_with("dependency_failed: ")), "task {i}: {:?}", task.reason);
            assert!(task.attempts.is_empty(), "task {i} never ran");
        } else {
            assert_eq!(task.state, end_of(nodes[i].outcome), "task {i}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dependencies_hold_on_random_graphs(nodes in graph()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(nodes));
    }
}

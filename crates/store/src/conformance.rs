//! One conformance suite for every [`Store`] implementation, in the manner
//! of quickwit's metastore test suite: each check takes a fresh, empty
//! store and asserts what any backend must do. A backend's tests run them
//! all with [`store_conformance!`](crate::store_conformance):
//!
//! ```ignore
//! async fn fixture() -> shepherd_store::conformance::Fixture { /* a fresh store */ }
//! shepherd_store::store_conformance!(fixture);
//! ```
//!
//! The checks panic on failure, as tests do.

use crate::*;
use shepherd_core::{validate, Event, Limits, NewTask, NodeState, ProjectLimits, Resources, TaskId, TaskSpec, TaskState, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A fresh store and whatever keeps it alive (a temporary directory, a
/// throwaway database).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub keep: Box<dyn std::any::Any + Send>,
}

fn spec(project: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
    spec.project = project.into();
    spec
}

fn new_task(gen: &mut ulid::Generator, spec: TaskSpec) -> NewTask {
    let now = Timestamp::now();
    validate(spec, &Limits::default(), TaskId::generate(gen, now), now).expect("a valid spec")
}

fn dep(id: TaskId, on: shepherd_core::DependOn) -> shepherd_core::Dependency {
    shepherd_core::Dependency { task: shepherd_core::DependencyTarget::Id(id.to_string()), on }
}

fn new_array(gen: &mut ulid::Generator, mut spec: TaskSpec, size: u32, parallelism: Option<u32>, fail_fast: bool) -> NewArray {
    let now = Timestamp::now();
    spec.array = Some(shepherd_core::ArraySpec {
        size,
        parallelism,
        failure_policy: if fail_fast { shepherd_core::FailurePolicy::FailFast } else { shepherd_core::FailurePolicy::FinishAll },
    });
    let task = new_task(gen, spec);
    let children = crate::workflow::Children::all(TaskId::block(now), size);
    NewArray { id: task.id, created_at: task.created_at, spec: task.spec, payload: task.payload, children, retry_of: None }
}

async fn submit_all(store: &dyn Store, entries: Vec<Entry>) {
    let submitted = store.submit(Submission { entries, audit: Vec::new(), batch: true, idempotency: None }).await.unwrap();
    assert_eq!(submitted, Submitted::Created);
}

/// Runs a queued task to its end: placed, started, exited with `code`.
async fn run_to_end(store: &dyn Store, id: TaskId, code: i32) {
    let now = Timestamp::now();
    let placed = store.apply(vec![(id, Event::Schedule { node_id: "n1".into() })], now).await.unwrap().remove(0).expect("placed");
    let attempt = placed.attempt;
    store.apply(vec![(id, Event::Start { attempt, at: None, runtime: None })], now).await.unwrap().remove(0).expect("started");
    let exit = Event::Exit { attempt, code, oom_killed: false, at: None, usage: None, result: None };
    store.apply(vec![(id, exit)], now).await.unwrap().remove(0).expect("exited");
}

async fn state_of(store: &dyn Store, id: TaskId) -> TaskState {
    store.get_task(id).await.unwrap().expect("task").state
}

/// A diamond (A → B, C → D): dependents wait apart from the queue, go to
/// it when their dependencies end as asked, and end `cancelled` with
/// `dependency_failed: ID` when one never can; unknown and other
/// projects' ids are refused naming the field.
pub async fn workflow_dependencies(store: &dyn Store) {
    use shepherd_core::DependOn::*;
    let mut gen = ulid::Generator::new();
    let a = new_task(&mut gen, spec("p"));
    let mut b = new_task(&mut gen, spec("p"));
    b.spec.depends_on = vec![dep(a.id, Succeeded)];
    let mut c = new_task(&mut gen, spec("p"));
    c.spec.depends_on = vec![dep(a.id, Finished)];
    let mut d = new_task(&mut gen, spec("p"));
    d.spec.depends_on = vec![dep(b.id, Succeeded), dep(c.id, Succeeded)];
    let ids = [a.id, b.id, c.id, d.id];
    submit_all(store, vec![Entry::Task(a), Entry::Task(b), Entry::Task(c), Entry::Task(d)]).await;
    assert_eq!(state_of(store, ids[0]).await, TaskState::Queued);
    let waiting = store.get_task(ids[3]).await.unwrap().unwrap();
    assert_eq!(waiting.state, TaskState::Waiting);
    assert_eq!(waiting.reason.as_deref(), Some("waiting for 2 of 2 dependencies"));
    let queue = store.queued_tasks(Timestamp::now(), QueueQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(queue.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![ids[0]], "waiting tasks are not in the queue");
    run_to_end(store, ids[0], 0).await;
    assert_eq!((state_of(store, ids[1]).await, state_of(store, ids[2]).await), (TaskState::Queued, TaskState::Queued));
    assert_eq!(store.get_task(ids[3]).await.unwrap().unwrap().reason.as_deref(), Some("waiting for 2 of 2 dependencies"));
    run_to_end(store, ids[2], 0).await;
    assert_eq!(store.get_task(ids[3]).await.unwrap().unwrap().reason.as_deref(), Some("waiting for 1 of 2 dependencies"));
    run_to_end(store, ids[1], 1).await;
    let d = store.get_task(ids[3]).await.unwrap().unwrap();
    assert_eq!(d.state, TaskState::Cancelled);
    assert_eq!(d.reason, Some(format!("dependency_failed: {}", ids[1])));
    let edges = store.dependency_edges(&ids[3].to_string(), 100).await.unwrap();
    assert_eq!(edges.len(), 2);

    // Refusals, naming the field; nothing is stored.
    let mut e = new_task(&mut gen, spec("p"));
    e.spec.depends_on = vec![dep(ids[0], Succeeded), dep(TaskId(ulid::Ulid::new()), Succeeded)];
    let err = store
        .submit(Submission { entries: vec![Entry::Task(e.clone())], audit: Vec::new(), batch: false, idempotency: None })
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "depends_on[1].task"), "{err}");
    assert!(store.get_task(e.id).await.unwrap().is_none());
    let mut other = new_task(&mut gen, spec("q"));
    other.spec.depends_on = vec![dep(ids[0], Finished)];
    let err = store
        .submit(Submission { entries: vec![Entry::Task(other)], audit: Vec::new(), batch: true, idempotency: None })
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "tasks[0].depends_on[0].task"), "{err}");
    // A dependency that already failed ends its new dependent at once.
    let mut late = new_task(&mut gen, spec("p"));
    late.spec.depends_on = vec![dep(ids[1], Succeeded)];
    let late_id = late.id;
    submit_all(store, vec![Entry::Task(late)]).await;
    assert_eq!(state_of(store, late_id).await, TaskState::Cancelled);
    // A dependency that already succeeded is met at once.
    let mut met = new_task(&mut gen, spec("p"));
    met.spec.depends_on = vec![dep(ids[0], Succeeded)];
    let met_id = met.id;
    submit_all(store, vec![Entry::Task(met)]).await;
    assert_eq!(state_of(store, met_id).await, TaskState::Queued);
}

/// A failing task's 1,000 transitive dependents end `cancelled` with
/// `dependency_failed` in the transaction that ends it.
pub async fn workflow_cascade(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let root = new_task(&mut gen, spec("p"));
    let root_id = root.id;
    let mut entries = vec![Entry::Task(root)];
    let mut ids = Vec::new();
    // A tree: each task depends on the one at half its position.
    for i in 1..=1000usize {
        let parent = entries[i / 2].id();
        let mut t = new_task(&mut gen, spec("p"));
        t.spec.depends_on = vec![dep(parent, shepherd_core::DependOn::Succeeded)];
        ids.push(t.id);
        entries.push(Entry::Task(t));
    }
    for chunk in entries.chunks(500) {
        submit_all(store, chunk.to_vec()).await;
    }
    let cursor = store.latest_event().await.unwrap();
    run_to_end(store, root_id, 2).await;
    let page = store
        .list_tasks(TaskFilter { project: Some("p".into()), states: vec![TaskState::Cancelled], limit: 2000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 1000);
    assert!(page.tasks.iter().all(|t| t.reason.as_deref().is_some_and(|r| r.starts_with("dependency_failed: "))));
    // Every one of them is in the event stream (on PostgreSQL once every
    // transaction older than the cascade's has ended: other tests' too).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = store.read_events(cursor, 10_000).await.unwrap();
        let cancelled =
            events.iter().filter(|e| matches!(&e.event, shepherd_core::ClusterEvent::Task(t) if t.state == TaskState::Cancelled)).count();
        if cancelled == 1000 || std::time::Instant::now() > deadline {
            assert_eq!(cancelled, 1000);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An array stores one spec; children get their index; parallelism caps
/// how many are queued or on a node; the array ends when its children do.
pub async fn workflow_arrays(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let mut s = spec("p");
    s.payload = Some("aGk=".into());
    s.labels.insert("team".into(), "blue".into());
    let array = new_array(&mut gen, s, 10, Some(3), false);
    let (array_id, children) = (array.id, array.children.iter().collect::<Vec<_>>());
    submit_all(store, vec![Entry::Array(array)]).await;
    let status = store.get_array(&array_id.to_string()).await.unwrap().expect("array");
    assert_eq!((status.state.as_str(), status.size, status.children), ("running", 10, 10));
    assert_eq!((status.counts["queued"], status.counts["waiting"]), (3, 7));
    let child = store.get_task(children[4].0).await.unwrap().unwrap();
    assert_eq!(child.array.as_ref().map(|m| (m.index, m.size)), Some((4, 10)));
    assert_eq!(child.env["SHEPHERD_ARRAY_INDEX"], "4");
    let launch = store.launch_spec(children[0].0).await.unwrap().unwrap();
    assert_eq!((launch.spec.env["SHEPHERD_ARRAY_SIZE"].as_str(), launch.payload.as_deref()), ("10", Some(&b"hi"[..])));
    let page = store.list_tasks(TaskFilter { array: Some(array_id.to_string()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(page.tasks.len(), 10);
    // The array's labels are its children's: a list by label finds them.
    let by_label = |value: &str| TaskFilter { labels: vec![("team".into(), value.into())], limit: 100, ..Default::default() };
    let page = store.list_tasks(by_label("blue")).await.unwrap();
    assert_eq!(page.tasks.len(), 10, "the children, by their array's label");
    assert!(page.tasks.iter().all(|t| t.labels.get("team").map(String::as_str) == Some("blue")));
    assert!(store.list_tasks(by_label("red")).await.unwrap().tasks.is_empty());
    let mut ran = Vec::new();
    loop {
        let queue = store.queued_tasks(Timestamp::now(), QueueQuery { limit: 100, ..Default::default() }).await.unwrap();
        assert!(queue.tasks.len() <= 3, "parallelism 3, {} queued", queue.tasks.len());
        let Some(next) = queue.tasks.first() else { break };
        let index = children.iter().find(|(id, _)| *id == next.id).map(|(_, i)| *i).unwrap();
        // The queue's spec is what an agent may get as it is: with its index.
        assert_eq!(next.spec.env["SHEPHERD_ARRAY_INDEX"], index.to_string());
        run_to_end(store, next.id, i32::from(index == 6)).await;
        ran.push(index);
    }
    ran.sort_unstable();
    assert_eq!(ran, (0..10).collect::<Vec<_>>(), "every index ran once");
    let status = store.get_array(&array_id.to_string()).await.unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.counts["succeeded"], status.failed_indices.clone()), ("failed", 9, vec![6]));
    let source = store.array_source(&array_id.to_string()).await.unwrap().unwrap();
    assert_eq!((source.failed, source.payload.as_deref()), (vec![6], Some(&b"hi"[..])));
    assert_eq!(store.list_arrays(Some("p".into()), None, 10).await.unwrap().len(), 1);
    assert!(store.list_arrays(Some("q".into()), None, 10).await.unwrap().is_empty());
}

/// `each` pairs children by index; a task waits for a whole array; a
/// fail-fast array stops at its first failure; a cancelled array ends.
pub async fn workflow_array_dependencies(store: &dyn Store) {
    use shepherd_core::DependOn::*;
    let mut gen = ulid::Generator::new();
    let a = new_array(&mut gen, spec("p"), 3, None, false);
    let mut b = new_array(&mut gen, spec("p"), 3, None, false);
    b.spec.depends_on = vec![dep(a.id, Each)];
    let mut t = new_task(&mut gen, spec("p"));
    t.spec.depends_on = vec![dep(a.id, Finished)];
    let (a_children, b_children, t_id, b_id) = (a.children.iter().collect::<Vec<_>>(), b.children.iter().collect::<Vec<_>>(), t.id, b.id);
    submit_all(store, vec![Entry::Array(a.clone()), Entry::Array(b), Entry::Task(t)]).await;
    assert_eq!(state_of(store, b_children[0].0).await, TaskState::Waiting);
    run_to_end(store, a_children[0].0, 0).await;
    assert_eq!(state_of(store, b_children[0].0).await, TaskState::Queued, "b[0] follows a[0]");
    assert_eq!(state_of(store, b_children[1].0).await, TaskState::Waiting);
    run_to_end(store, a_children[1].0, 1).await;
    let b1 = store.get_task(b_children[1].0).await.unwrap().unwrap();
    assert_eq!((b1.state, b1.reason.clone()), (TaskState::Cancelled, Some(format!("dependency_failed: {}", a_children[1].0))));
    assert_eq!(state_of(store, t_id).await, TaskState::Waiting);
    run_to_end(store, a_children[2].0, 0).await;
    assert_eq!(store.get_array(&a.id.to_string()).await.unwrap().unwrap().state, "failed");
    assert_eq!(state_of(store, t_id).await, TaskState::Queued, "`finished` is met by a failed array");
    // An `each` between arrays of different sizes is refused.
    let mut c = new_array(&mut gen, spec("p"), 4, None, false);
    c.spec.depends_on = vec![dep(a.id, Each)];
    let err =
        store.submit(Submission { entries: vec![Entry::Array(c)], audit: Vec::new(), batch: false, idempotency: None }).await.unwrap_err();
    assert!(matches!(&err, StoreError::Invalid { field, .. } if field == "depends_on[0].on"), "{err}");

    // Fail fast: the first failure ends the rest.
    let f = new_array(&mut gen, spec("p"), 5, Some(2), true);
    let (f_id, f_children) = (f.id, f.children.iter().collect::<Vec<_>>());
    submit_all(store, vec![Entry::Array(f)]).await;
    run_to_end(store, f_children[0].0, 3).await;
    let status = store.get_array(&f_id.to_string()).await.unwrap().unwrap();
    assert_eq!(status.counts["failed"], 1);
    // The other admitted child was queued: it ends at once, like the waiting ones.
    assert_eq!(status.counts["cancelled"], 4, "{status:?}");
    assert_eq!(status.state, "failed");

    // Cancel: every child that has not ended, the array with them.
    let g = new_array(&mut gen, spec("p"), 4, None, false);
    let (g_id, g_children) = (g.id, g.children.iter().collect::<Vec<_>>());
    submit_all(store, vec![Entry::Array(g)]).await;
    run_to_end(store, g_children[0].0, 0).await;
    let placed = store.apply(vec![(g_children[1].0, Event::Schedule { node_id: "n1".into() })], Timestamp::now()).await.unwrap();
    assert!(placed[0].is_ok());
    assert!(store.cancel_array(Some("q".into()), &g_id.to_string(), Timestamp::now()).await.unwrap().is_none(), "another project's");
    let results = store.cancel_array(Some("p".into()), &g_id.to_string(), Timestamp::now()).await.unwrap().expect("cancelled");
    assert!(results.iter().flatten().any(|r| r.decision.request_cancel), "the one on a node is asked to stop");
    let status = store.get_array(&g_id.to_string()).await.unwrap().unwrap();
    assert_eq!((status.counts["cancelled"], status.counts["scheduled"], status.state.as_str()), (2, 1, "running"));
    store.apply(vec![(g_children[1].0, Event::Cancelled { attempt: 1, usage: None })], Timestamp::now()).await.unwrap();
    assert_eq!(store.get_array(&g_id.to_string()).await.unwrap().unwrap().state, "cancelled");
    let _ = b_id;
}

/// Runs whole queue pages to their ends (each placed, started and exited
/// in one call per step) until the queue is empty or `rounds` pages ran;
/// `code` says each task's exit code. What ran, in order.
async fn drain(store: &dyn Store, rounds: usize, code: &dyn Fn(TaskId) -> i32, check: &dyn Fn(&[QueuedTask])) -> Vec<TaskId> {
    let mut ran = Vec::new();
    for _ in 0..rounds {
        let page = store.queued_tasks(Timestamp::now(), QueueQuery { limit: 1000, ..Default::default() }).await.unwrap();
        if page.tasks.is_empty() {
            break;
        }
        check(&page.tasks);
        let ids: Vec<TaskId> = page.tasks.iter().map(|t| t.id).collect();
        let now = Timestamp::now();
        let placed = store.apply(ids.iter().map(|id| (*id, Event::Schedule { node_id: "n1".into() })).collect(), now).await.unwrap();
        let attempts: Vec<u32> = placed.into_iter().map(|r| r.expect("placed").attempt).collect();
        let starts = ids.iter().zip(&attempts).map(|(id, a)| (*id, Event::Start { attempt: *a, at: None, runtime: None })).collect();
        store.apply(starts, now).await.unwrap().into_iter().for_each(|r| drop(r.expect("started")));
        let exits = ids
            .iter()
            .zip(&attempts)
            .map(|(id, a)| (*id, Event::Exit { attempt: *a, code: code(*id), oom_killed: false, at: None, usage: None, result: None }))
            .collect();
        store.apply(exits, now).await.unwrap().into_iter().for_each(|r| drop(r.expect("exited")));
        ran.extend(ids);
    }
    ran
}

/// Arrays larger than the rows a store makes ahead of the queue
/// ([`crate::ARRAY_WINDOW`]): every index runs exactly once, `each`
/// pairs hold past the window (a failure there ends its pair), counts and
/// the queue quota see every child, parallelism holds, and a cancelled or
/// fail-fast array ends children it never made as `cancelled`.
pub async fn workflow_arrays_beyond_the_window(store: &dyn Store) {
    use shepherd_core::DependOn::Each;
    let n = crate::ARRAY_WINDOW * 2 + crate::ARRAY_WINDOW / 2;
    let bad = n - 3;
    let mut gen = ulid::Generator::new();
    let a = new_array(&mut gen, spec("p"), n, None, false);
    let mut b = new_array(&mut gen, spec("p"), n, None, false);
    b.spec.depends_on = vec![dep(a.id, Each)];
    let (a_id, b_id, a_kids, b_kids) = (a.id.to_string(), b.id.to_string(), a.children.clone(), b.children.clone());
    submit_all(store, vec![Entry::Array(a), Entry::Array(b)]).await;
    let status = store.get_array(&a_id).await.unwrap().unwrap();
    assert_eq!((status.counts["queued"], status.children), (u64::from(n), n), "every child counts, made or not");
    assert_eq!(store.get_array(&b_id).await.unwrap().unwrap().counts["waiting"], u64::from(n));
    assert_eq!(store.count_queued("p").await.unwrap(), 2 * u64::from(n), "the quota sees every child");
    let by_state: BTreeMap<TaskState, u64> = store.count_by_state(Some("p".into())).await.unwrap().into_iter().collect();
    assert_eq!((by_state.get(&TaskState::Queued), by_state.get(&TaskState::Waiting)), (Some(&u64::from(n)), Some(&u64::from(n))));
    let active = store.active_counts().await.unwrap();
    assert!(active.contains(&("p".to_string(), TaskState::Queued, u64::from(n))), "the metrics see every child: {active:?}");
    let fails = |id: TaskId| i32::from(id == a_kids.id(bad));
    let ran = drain(store, 200, &fails, &|_| {}).await;
    let mut a_ran: Vec<u32> = ran.iter().filter_map(|id| id.position_after(a_kids.first, n)).collect();
    let mut b_ran: Vec<u32> = ran.iter().filter_map(|id| id.position_after(b_kids.first, n)).collect();
    assert_eq!(a_ran.len() + b_ran.len(), ran.len(), "only their children ran");
    a_ran.sort_unstable();
    b_ran.sort_unstable();
    assert!(a_ran == (0..n).collect::<Vec<_>>(), "every index of a ran once: {} of {n} ran", a_ran.len());
    let b_all = (0..n).filter(|i| *i != bad).collect::<Vec<_>>();
    assert!(b_ran == b_all, "every index of b ran once but the failed pair's: {} of {} ran", b_ran.len(), n - 1);
    let a_status = store.get_array(&a_id).await.unwrap().unwrap();
    assert_eq!((a_status.state.as_str(), a_status.failed_indices.clone()), ("failed", vec![bad]));
    let b_status = store.get_array(&b_id).await.unwrap().unwrap();
    assert_eq!((b_status.counts["succeeded"], b_status.counts["cancelled"]), (u64::from(n) - 1, 1));
    let b_bad = store.get_task(b_kids.id(bad)).await.unwrap().expect("the pair of a failed child");
    assert_eq!((b_bad.state, b_bad.reason), (TaskState::Cancelled, Some(format!("dependency_failed: {}", a_kids.id(bad)))));
    assert_eq!(store.count_queued("p").await.unwrap(), 0);

    // Parallelism past the window; a cancel ends what was never made.
    let c = new_array(&mut gen, spec("p"), n, Some(700), false);
    let (c_id, c_kids) = (c.id.to_string(), c.children.clone());
    submit_all(store, vec![Entry::Array(c)]).await;
    let ran = drain(store, 20, &|_| 0, &|page| assert!(page.len() <= 700, "parallelism 700, {} queued", page.len())).await;
    assert_eq!(ran.len(), 20 * 700);
    assert!(ran.iter().all(|id| id.position_after(c_kids.first, n).is_some()));
    store.cancel_array(Some("p".into()), &c_id, Timestamp::now()).await.unwrap().expect("cancelled");
    let status = store.get_array(&c_id).await.unwrap().unwrap();
    assert_eq!(
        (status.state.as_str(), status.counts["succeeded"], status.counts["cancelled"]),
        ("cancelled", 14_000, u64::from(n) - 14_000)
    );
    assert_eq!(store.count_queued("p").await.unwrap(), 0, "nothing of it is left to queue");
    assert!(drain(store, 1, &|_| 0, &|_| {}).await.is_empty());

    // Fail fast past the window: what was never made ends cancelled.
    let d = new_array(&mut gen, spec("p"), n, None, true);
    let (d_id, d_kids) = (d.id.to_string(), d.children.clone());
    submit_all(store, vec![Entry::Array(d)]).await;
    let stop = crate::ARRAY_WINDOW + 5;
    let ran = drain(store, 200, &|id| i32::from(id == d_kids.id(stop)), &|_| {}).await;
    let status = store.get_array(&d_id).await.unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.counts["failed"]), ("failed", 1));
    assert_eq!(status.counts["succeeded"] + status.counts["cancelled"] + 1, u64::from(n), "{status:?}");
    assert_eq!(status.counts["succeeded"] as usize, ran.len() - 1);
    assert_eq!(store.count_queued("p").await.unwrap(), 0);
}

/// The history a replay reads: tasks in order of creation within a time
/// window, each with its attempts' nodes and times, page by page.
pub async fn history_pages(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let mut s = spec("p");
    s.constraints = vec!["node.labels.zone==a".into()];
    s.priority = 3;
    let tasks: Vec<NewTask> = (0..3).map(|_| new_task(&mut gen, s.clone())).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    run_to_end(store, ids[0], 0).await;
    let now = Timestamp::now();
    let (after, until) = crate::history::window(Timestamp(now.millis() - 60_000), Timestamp(now.millis() + 60_000));
    let page = store.history_tasks(after, until, 2).await.unwrap();
    assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids[..2].to_vec(), "in order of creation, a page at a time");
    let first = &page[0].1;
    assert_eq!((first.project.as_str(), first.cpu, first.memory, first.priority), ("p", 100, 128, 3));
    assert_eq!(first.constraints, vec!["node.labels.zone==a".to_string()]);
    assert_eq!(first.attempts.len(), 1);
    assert_eq!((first.attempts[0].node.as_str(), first.attempts[0].outcome.as_deref()), ("n1", Some("succeeded")));
    assert!(first.attempts[0].ended.is_some() && first.wait_ms().is_some());
    assert!(page[1].1.attempts.is_empty(), "a queued task has no attempt yet");
    let rest = store.history_tasks(page[1].0, until, 2).await.unwrap();
    assert_eq!(rest.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![ids[2]]);
    // The inventory over time: every state change, with the node's
    // capacity then, kept after the node is removed.
    let node = |id: &str, state: NodeState, at: i64| NodeRecord {
        id: id.into(),
        hostname: id.into(),
        state,
        driver: "process".into(),
        capacity: Resources { cpu_millicores: 4000, memory_mib: 8192 },
        max_tasks: 16,
        labels: [("zone".to_string(), "a".to_string())].into(),
        images: Vec::new(),
        registered_at: Timestamp(at),
        last_heartbeat_at: Timestamp(at),
    };
    let before = store.node_history(Timestamp::now()).await.unwrap().len();
    store.upsert_node(node("h1", NodeState::Ready, 1_000)).await.unwrap();
    assert!(store.set_node_state("h1", NodeState::Down).await.unwrap());
    store.upsert_node(node("h1", NodeState::Ready, Timestamp::now().millis())).await.unwrap();
    assert!(store.set_node_state("h1", NodeState::Draining).await.unwrap());
    store.delete_node("h1").await.unwrap();
    let history = store.node_history(Timestamp(Timestamp::now().millis() + 1)).await.unwrap();
    let h1: Vec<_> = history.iter().skip(before).filter(|r| r.node == "h1").map(|r| (r.state, r.at)).collect();
    use shepherd_core::history::NodeHistoryState as S;
    assert_eq!(h1.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![S::Ready, S::Gone, S::Ready, S::Draining], "{history:?}");
    assert_eq!(h1[1].1, 1_000, "a node found down went away with its last heartbeat");
    let first = history.iter().find(|r| r.node == "h1").unwrap();
    assert_eq!((first.at, first.cpu, first.max_tasks, first.labels.get("zone").map(String::as_str)), (1_000, 4000, 16, Some("a")));
    assert!(store.node_history(Timestamp(1_000)).await.unwrap().iter().all(|r| r.node != "h1"), "only what came before");
    // Outside the window: nothing.
    let (after, until) = crate::history::window(Timestamp(now.millis() - 120_000), Timestamp(now.millis() - 60_000));
    assert!(store.history_tasks(after, until, 10).await.unwrap().is_empty());
}

/// Retry rules by outcome: a lost attempt retried without spending one,
/// an exit code that ends the task with attempts left.
pub async fn retry_rules(store: &dyn Store) {
    use shepherd_core::{FailureReason, RetryAction, RetryRule};
    let mut gen = ulid::Generator::new();
    let mut s = spec("p");
    s.retry = shepherd_core::RetryPolicy {
        max_attempts: 3,
        backoff_seconds: 0,
        on: vec![
            RetryRule { exit_codes: vec![3], reason: None, action: RetryAction::Fail },
            RetryRule { exit_codes: vec![], reason: Some(FailureReason::Lost), action: RetryAction::RetryFree },
        ],
    };
    let plain = new_task(&mut gen, s.clone());
    let child = new_array(&mut gen, s, 1, None, false);
    let child_id = child.children.id(0);
    let id = plain.id;
    store.create_tasks(vec![plain]).await.unwrap();
    submit_all(store, vec![Entry::Array(child)]).await;
    for id in [id, child_id] {
        let now = Timestamp::now();
        store.apply(vec![(id, Event::Schedule { node_id: "n1".into() })], now).await.unwrap().remove(0).unwrap();
        let lost = store.apply(vec![(id, Event::Lost { attempt: 1, reason: "node down".into() })], now).await.unwrap().remove(0).unwrap();
        assert_eq!((lost.decision.to, lost.decision.charge_attempt), (TaskState::Queued, false), "lost: retried free");
        run_to_end(store, id, 3).await;
        let task = store.get_task(id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Failed, "exit 3 ends it with attempts left");
        assert_eq!(task.attempts.len(), 2);
        assert_eq!(task.retry.on.len(), 2, "the rules are shown");
    }
}

/// A task's result is stored with its attempt (cut at 64 KiB) and given
/// to its dependents in their launch specs.
pub async fn results_and_inputs(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let a = new_task(&mut gen, spec("p"));
    let big = new_task(&mut gen, spec("p"));
    let mut b = new_task(&mut gen, spec("p"));
    b.spec.depends_on = vec![dep(a.id, shepherd_core::DependOn::Succeeded), dep(big.id, shepherd_core::DependOn::Succeeded)];
    let (a_id, big_id, b_id) = (a.id, big.id, b.id);
    submit_all(store, vec![Entry::Task(a), Entry::Task(big), Entry::Task(b)]).await;
    let finish = |id: TaskId, result: Vec<u8>| async move {
        let now = Timestamp::now();
        store.apply(vec![(id, Event::Schedule { node_id: "n1".into() })], now).await.unwrap().remove(0).unwrap();
        store.apply(vec![(id, Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap().remove(0).unwrap();
        let exit = Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: Some(result) };
        store.apply(vec![(id, exit)], now).await.unwrap().remove(0).unwrap();
    };
    finish(a_id, b"from a".to_vec()).await;
    finish(big_id, vec![7u8; 70_000]).await;
    assert_eq!(store.task_result(a_id).await.unwrap().as_deref(), Some(&b"from a"[..]));
    assert_eq!(store.task_result(big_id).await.unwrap().map(|r| r.len()), Some(64 * 1024), "cut at 64 KiB");
    assert_eq!(store.get_task(a_id).await.unwrap().unwrap().attempts[0].result_bytes, Some(6));
    assert_eq!(store.task_result(b_id).await.unwrap(), None);
    let launch = store.launch_spec(b_id).await.unwrap().unwrap();
    assert_eq!(launch.inputs.get(&a_id.to_string()).map(Vec::as_slice), Some(&b"from a"[..]));
    assert_eq!(launch.inputs.get(&big_id.to_string()).map(Vec::len), Some(64 * 1024));
}

/// An idempotency key stands for its first answer for 24 hours: the same
/// request stores nothing again, another request with it is refused.
pub async fn idempotency_keys(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let key = |request: &str, response: &str| IdempotencyKey {
        project: "p".into(),
        key: "k-1".into(),
        request: request.into(),
        status: 201,
        response: response.into(),
        at: now,
    };
    let first = new_task(&mut gen, spec("p"));
    let sub = |task: NewTask, k: IdempotencyKey| Submission {
        entries: vec![Entry::Task(task)],
        audit: Vec::new(),
        batch: false,
        idempotency: Some(k),
    };
    assert_eq!(store.submit(sub(first.clone(), key("r1", "{\"id\":1}"))).await.unwrap(), Submitted::Created);
    let again = new_task(&mut gen, spec("p"));
    let replayed = store.submit(sub(again.clone(), key("r1", "ignored"))).await.unwrap();
    assert_eq!(replayed, Submitted::Replayed { status: 201, response: "{\"id\":1}".into() });
    assert!(store.get_task(again.id).await.unwrap().is_none(), "nothing stored twice");
    let err = store.submit(sub(again.clone(), key("r2", "x"))).await.unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyConflict(_)), "{err}");
    assert_eq!(store.idempotent_answer("p", "k-1", now).await.unwrap().map(|a| a.0), Some("r1".to_string()));
    assert_eq!(store.idempotent_answer("q", "k-1", now).await.unwrap(), None, "keys are per project");
    assert_eq!(store.prune_idempotency(Timestamp(now.millis() + 1)).await.unwrap(), 1);
    assert_eq!(store.idempotent_answer("p", "k-1", now).await.unwrap(), None);
}

/// Tasks are stored whole and read back; a batch with a duplicate id stores nothing.
pub async fn create_get_and_batches(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let mut s = spec("p");
    s.labels.insert("team".into(), "data".into());
    s.env.insert("K".into(), "v".into());
    s.payload = Some("aGk=".into());
    let task = new_task(&mut gen, s);
    store.create_tasks(vec![task.clone()]).await.unwrap();
    let got = store.get_task(task.id).await.unwrap().expect("stored");
    assert_eq!((got.state, got.project.as_str(), got.payload_bytes), (TaskState::Queued, "p", 2));
    assert_eq!(got.labels["team"], "data");
    assert_eq!(got.env["K"], "v");
    let launch = store.launch_spec(task.id).await.unwrap().expect("launch spec");
    assert_eq!(launch.payload.as_deref(), Some(&b"hi"[..]));
    let fresh = new_task(&mut gen, spec("p"));
    let err = store.create_tasks(vec![fresh.clone(), task.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(id) if id == task.id), "{err}");
    assert!(store.get_task(fresh.id).await.unwrap().is_none(), "all or nothing");
    assert!(store.get_task(TaskId(ulid::Ulid::new())).await.unwrap().is_none());
}

/// Every event through the state machine, with the fields it changes; a
/// report about a stale attempt or an ended task is refused.
pub async fn apply_every_event(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let mut s = spec("p");
    s.retry = shepherd_core::RetryPolicy { max_attempts: 2, backoff_seconds: 0, on: Vec::new() };
    let task = new_task(&mut gen, s);
    let id = task.id;
    store.create_tasks(vec![task]).await.unwrap();
    let now = Timestamp::now();
    let apply = |event: Event| async move { store.apply(vec![(id, event)], now).await.unwrap().remove(0) };
    let scheduled = apply(Event::Schedule { node_id: "n1".into() }).await.unwrap();
    assert_eq!(
        (scheduled.from, scheduled.decision.to, scheduled.attempt, scheduled.node_id.as_deref()),
        (TaskState::Queued, TaskState::Scheduled, 1, Some("n1"))
    );
    let started_at = Timestamp(now.millis() - 5000);
    apply(Event::Start { attempt: 1, at: Some(started_at), runtime: None }).await.unwrap();
    assert!(
        matches!(
            apply(Event::Exit { attempt: 7, code: 0, oom_killed: false, at: None, usage: None, result: None }).await,
            Err(ApplyError::Illegal(_))
        ),
        "stale attempt"
    );
    let lost = apply(Event::Lost { attempt: 1, reason: "node n1 missed its heartbeats".into() }).await.unwrap();
    assert_eq!(lost.decision.to, TaskState::Queued, "retried");
    let task = store.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.attempts[0].started_at, Some(started_at), "a start keeps its own time");
    assert_eq!(task.attempts[0].reason.as_deref(), Some("node n1 missed its heartbeats"));
    assert_eq!(task.reason.as_deref(), Some("lost"));
    apply(Event::Schedule { node_id: "n2".into() }).await.unwrap();
    let warm = shepherd_core::AttemptRuntime {
        container: "shepherd-warm-1".into(),
        warm: true,
        image_digest: Some("127.0.0.1:5000/app@sha256:0123abcd".into()),
    };
    apply(Event::Start { attempt: 2, at: None, runtime: Some(warm.clone()) }).await.unwrap();
    let cancel = apply(Event::Cancel).await.unwrap();
    assert!(cancel.decision.request_cancel);
    assert_eq!(store.active_tasks().await.unwrap().iter().find(|t| t.id == id).map(|t| t.cancel_requested), Some(true));
    let exited_at = Timestamp(now.millis() - 1000);
    apply(Event::Exit { attempt: 2, code: 3, oom_killed: false, at: Some(exited_at), usage: None, result: None }).await.unwrap();
    let task = store.get_task(id).await.unwrap().unwrap();
    assert_eq!((task.state, task.exit_code, task.node_id.as_deref()), (TaskState::Cancelled, Some(3), Some("n2")), "{task:?}");
    assert_eq!(task.finished_at, Some(exited_at), "an exit keeps the engine's time");
    assert_eq!(task.attempts.len(), 2);
    assert_eq!((task.attempts[0].runtime.as_ref(), task.attempts[1].runtime.as_ref()), (None, Some(&warm)), "where each attempt ran");
    assert!(matches!(apply(Event::Cancel).await, Err(ApplyError::Illegal(_))), "already ended");
    let missing = store.apply(vec![(TaskId(ulid::Ulid::new()), Event::Cancel)], now).await.unwrap();
    assert!(matches!(missing[0], Err(ApplyError::NotFound(_))));
    // Several events in one call: each succeeds or fails on its own.
    let (a, b) = (new_task(&mut gen, spec("p")), new_task(&mut gen, spec("p")));
    store.create_tasks(vec![a.clone(), b.clone()]).await.unwrap();
    let results =
        store.apply(vec![(a.id, Event::Cancel), (b.id, Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap();
    assert!(results[0].is_ok() && results[1].is_err());

    // A whole life in one call (two attempts, a retry between them) leaves
    // the same rows as the same events one call each.
    let mut s = spec("p");
    s.retry = shepherd_core::RetryPolicy { max_attempts: 3, backoff_seconds: 0, on: Vec::new() };
    let (one, all) = (new_task(&mut gen, s.clone()), new_task(&mut gen, s));
    store.create_tasks(vec![one.clone(), all.clone()]).await.unwrap();
    let life = vec![
        Event::Schedule { node_id: "n1".into() },
        Event::Start { attempt: 1, at: Some(Timestamp(now.millis() - 900)), runtime: None },
        Event::Exit { attempt: 1, code: 137, oom_killed: true, at: Some(Timestamp(now.millis() - 800)), usage: None, result: None },
        Event::Start { attempt: 1, at: None, runtime: None },
        Event::Schedule { node_id: "n2".into() },
        Event::Start {
            attempt: 2,
            at: Some(Timestamp(now.millis() - 700)),
            runtime: Some(shepherd_core::AttemptRuntime {
                container: "shepherd-x-2".into(),
                warm: false,
                image_digest: Some("sha256:feed".into()),
            }),
        },
        Event::Exit { attempt: 2, code: 0, oom_killed: false, at: Some(Timestamp(now.millis() - 600)), usage: None, result: None },
    ];
    let mut each = Vec::new();
    for event in &life {
        each.push(store.apply(vec![(one.id, event.clone())], now).await.unwrap().remove(0));
    }
    let mut batch: Vec<(TaskId, Event)> = life.iter().map(|e| (all.id, e.clone())).collect();
    batch.insert(3, (TaskId(ulid::Ulid::new()), Event::Cancel));
    let mut together = store.apply(batch, now).await.unwrap();
    assert!(matches!(together.remove(3), Err(ApplyError::NotFound(_))));
    let summary = |results: &[ApplyResult]| -> Vec<String> {
        results
            .iter()
            .map(|r| r.as_ref().map(|a| format!("{:?} {} {:?}", a.decision.to, a.attempt, a.node_id)).map_err(|_| ()))
            .map(|r| format!("{r:?}"))
            .collect()
    };
    assert_eq!(summary(&each), summary(&together));
    assert!(each[3].is_err(), "a second start of an ended attempt is refused");
    let (one, all) = (store.get_task(one.id).await.unwrap().unwrap(), store.get_task(all.id).await.unwrap().unwrap());
    let rows = |t: &shepherd_core::Task| {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            t.state, t.exit_code, t.reason, t.node_id, t.scheduled_at, t.started_at, t.finished_at, t.cancel_requested, t.attempts
        )
    };
    assert_eq!(rows(&one), rows(&all));
    assert_eq!((all.state, all.attempts.len(), all.exit_code), (TaskState::Succeeded, 2, Some(0)), "{all:?}");
    assert_eq!(all.attempts[0].reason.as_deref(), Some("oom_killed"), "{all:?}");
    assert_eq!(
        all.attempts[1].runtime.as_ref().map(|r| (r.container.as_str(), r.warm, r.image_digest.as_deref())),
        Some(("shepherd-x-2", false, Some("sha256:feed"))),
        "{all:?}"
    );
}

/// A node's reports count only for tasks whose current attempt is on it,
/// checked with the write; the others are refused and change nothing.
pub async fn reports_from_their_node(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let (here, there, queued) = (new_task(&mut gen, spec("p")), new_task(&mut gen, spec("p")), new_task(&mut gen, spec("p")));
    store.create_tasks(vec![here.clone(), there.clone(), queued.clone()]).await.unwrap();
    let now = Timestamp::now();
    let placed = store
        .apply(vec![(here.id, Event::Schedule { node_id: "n1".into() }), (there.id, Event::Schedule { node_id: "n2".into() })], now)
        .await
        .unwrap();
    assert!(placed.iter().all(Result::is_ok));
    let start = Event::Start { attempt: 1, at: None, runtime: None };
    let missing = TaskId(ulid::Ulid::new());
    let results = store
        .apply_reported(
            "n1".into(),
            vec![(here.id, start.clone()), (there.id, start.clone()), (queued.id, start.clone()), (missing, start.clone())],
            now,
        )
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(ApplyError::NotOnNode(id)) if id == there.id), "{results:?}");
    assert!(matches!(results[2], Err(ApplyError::NotOnNode(id)) if id == queued.id), "{results:?}");
    assert!(matches!(results[3], Err(ApplyError::NotFound(_)) | Err(ApplyError::NotOnNode(_))), "{results:?}");
    let states = |id| async move { store.get_task(id).await.unwrap().unwrap().state };
    assert_eq!(
        (states(here.id).await, states(there.id).await, states(queued.id).await),
        (TaskState::Running, TaskState::Scheduled, TaskState::Queued)
    );
    // Nor may a node place a task or ask for its cancel, even one it last ran.
    let results = store
        .apply_reported("n1".into(), vec![(here.id, Event::Cancel), (queued.id, Event::Schedule { node_id: "n1".into() })], now)
        .await
        .unwrap();
    assert!(results.iter().all(|r| matches!(r, Err(ApplyError::NotOnNode(_)))), "{results:?}");
    assert_eq!(states(queued.id).await, TaskState::Queued);
    assert!(!store.get_task(here.id).await.unwrap().unwrap().cancel_requested);
    // Its own node may report it.
    let results = store.apply_reported("n2".into(), vec![(there.id, start)], now).await.unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert!(store.apply_reported("n2".into(), vec![], now).await.unwrap().is_empty());
}

/// The queue: a share per project, priority then age, pages after a
/// cursor, shapes skipped, retry backoff respected.
pub async fn queue_pages_shares_and_shapes(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let make = |gen: &mut ulid::Generator, project: &str, cpu: u32, priority: i32| {
        let mut s = spec(project);
        s.resources = Resources { cpu_millicores: cpu, memory_mib: 64 };
        s.priority = priority;
        new_task(gen, s)
    };
    let mut tasks: Vec<NewTask> = (0..20).map(|_| make(&mut gen, "big", 9000, 5)).collect();
    tasks.extend((0..20).map(|_| make(&mut gen, "big", 9000, 0)));
    let small = make(&mut gen, "big", 100, 0);
    tasks.push(small.clone());
    let other = make(&mut gen, "other", 100, 0);
    tasks.push(other.clone());
    store.create_tasks(tasks.clone()).await.unwrap();
    // Every task above is ready now (its creation time has passed).
    let now = Timestamp::now();
    let big_shape = tasks[0].spec.placement_shape(store.shape_key());

    let first = store.queued_tasks(now, QueueQuery { limit: 32, ..Default::default() }).await.unwrap();
    let big: Vec<TaskId> = first.tasks.iter().filter(|t| t.spec.project == "big").map(|t| t.id).collect();
    assert_eq!(big, tasks[..16].iter().map(|t| t.id).collect::<Vec<_>>(), "a share of 16 each, priority then age");
    assert!(first.tasks.iter().any(|t| t.id == other.id), "the other project gets its share");
    assert!(first.tasks.iter().filter(|t| t.spec.project == "big").all(|t| t.shape == big_shape));
    let cursor = first.more["big"];
    assert!(!first.more.contains_key("other"));
    let projects = Some(BTreeMap::from([("big".to_string(), Some(cursor))]));
    let second = store.queued_tasks(now, QueueQuery { limit: 16, projects, skip_shapes: vec![] }).await.unwrap();
    assert_eq!(second.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), tasks[16..32].iter().map(|t| t.id).collect::<Vec<_>>());
    let skipped = store.queued_tasks(now, QueueQuery { limit: 100, projects: None, skip_shapes: vec![big_shape] }).await.unwrap();
    let ids: Vec<TaskId> = skipped.tasks.iter().map(|t| t.id).collect();
    assert!(ids.contains(&small.id) && ids.contains(&other.id) && ids.len() == 2, "{ids:?}");
    assert_eq!(store.count_queued("big").await.unwrap(), 41);
    // A task waiting out its retry backoff is not ready.
    let mut s = spec("retry");
    s.retry = shepherd_core::RetryPolicy { max_attempts: 2, backoff_seconds: 600, on: Vec::new() };
    let retried = new_task(&mut gen, s);
    store.create_tasks(vec![retried.clone()]).await.unwrap();
    store.apply(vec![(retried.id, Event::Schedule { node_id: "n".into() })], now).await.unwrap();
    store.apply(vec![(retried.id, Event::StartFailed { attempt: 1, reason: "x".into() })], now).await.unwrap();
    let ready = store.queued_tasks(now, QueueQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(!ready.tasks.iter().any(|t| t.id == retried.id), "still backing off");
    let later =
        store.queued_tasks(now.plus(std::time::Duration::from_secs(601)), QueueQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(later.tasks.iter().any(|t| t.id == retried.id));
    assert!(store.get_task(retried.id).await.unwrap().unwrap().retry_at.is_some());
    // A task submitted with a delay is not ready until then.
    let mut s = spec("later");
    s.delay_seconds = Some(60);
    let delayed = new_task(&mut gen, s);
    store.create_tasks(vec![delayed.clone()]).await.unwrap();
    let ready = |at: Timestamp| async move {
        let page = store.queued_tasks(at, QueueQuery { limit: 100, ..Default::default() }).await.unwrap();
        page.tasks.iter().any(|t| t.id == delayed.id)
    };
    assert!(!ready(now).await, "not before its delay");
    assert!(ready(delayed.created_at.plus(std::time::Duration::from_secs(60))).await, "ready once it is due");
    let read = store.get_task(delayed.id).await.unwrap().unwrap();
    assert_eq!(read.start_at, Some(delayed.created_at.plus(std::time::Duration::from_secs(60))));
}

/// Lists: newest first, pages by cursor, filters by state, project and labels; counts.
pub async fn lists_and_counts(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let tasks: Vec<NewTask> = (0..25)
        .map(|i| {
            let mut s = spec(if i < 20 { "a" } else { "b" });
            s.labels.insert("group".into(), if i % 2 == 0 { "even".into() } else { "odd".into() });
            new_task(&mut gen, s)
        })
        .collect();
    store.create_tasks(tasks.clone()).await.unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_tasks(TaskFilter { before, limit: 10, ..Default::default() }).await.unwrap();
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    let mut expected: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    let even =
        store.list_tasks(TaskFilter { labels: vec![("group".into(), "even".into())], limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(even.tasks.len(), 13);
    let b = store.list_tasks(TaskFilter { project: Some("b".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(b.tasks.len(), 5);
    store.apply(vec![(tasks[0].id, Event::Cancel)], Timestamp::now()).await.unwrap();
    let cancelled = store.list_tasks(TaskFilter { states: vec![TaskState::Cancelled], limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(cancelled.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![tasks[0].id]);
    let counts: BTreeMap<TaskState, u64> = store.count_by_state(Some("a".into())).await.unwrap().into_iter().collect();
    assert_eq!((counts.get(&TaskState::Queued), counts.get(&TaskState::Cancelled)), (Some(&19), Some(&1)));
    let all: u64 = store.count_by_state(None).await.unwrap().into_iter().map(|(_, n)| n).sum();
    assert_eq!(all, 25);
}

/// Logs come back in order, after a position, per task.
pub async fn logs_in_order(store: &dyn Store) {
    let id = TaskId(ulid::Ulid::new());
    let other = TaskId(ulid::Ulid::new());
    let chunk = |task, text: &str| LogChunk { task_id: task, attempt: 1, stream: LogStream::Stdout, data: text.as_bytes().to_vec() };
    store.append_logs(vec![chunk(id, "a"), chunk(other, "x"), chunk(id, "b")]).await.unwrap();
    store.append_logs(vec![LogChunk { stream: LogStream::Stderr, ..chunk(id, "c") }]).await.unwrap();
    let all = store.read_logs(id, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|c| c.data.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(all[2].stream, LogStream::Stderr);
    let rest = store.read_logs(id, all[0].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.read_logs(id, 0, 1).await.unwrap().len(), 1);
}

/// A ready node of 2 cores, 4 GiB and 10 slots, heard from now.
fn ready_node(id: &str) -> NodeRecord {
    let now = Timestamp::now();
    NodeRecord {
        id: id.into(),
        hostname: "host".into(),
        state: NodeState::Ready,
        driver: "docker".into(),
        capacity: Resources { cpu_millicores: 2000, memory_mib: 4096 },
        max_tasks: 10,
        labels: BTreeMap::new(),
        images: Vec::new(),
        registered_at: now,
        last_heartbeat_at: now,
    }
}

/// Nodes: registered, touched without undoing a drain, state changed.
pub async fn nodes(store: &dyn Store) {
    let node = NodeRecord {
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        images: vec!["busybox:latest".into()],
        ..ready_node("n1")
    };
    let now = node.last_heartbeat_at;
    store.upsert_node(node.clone()).await.unwrap();
    assert!(store.set_node_state("n1", NodeState::Draining).await.unwrap());
    let later = now.plus(std::time::Duration::from_secs(2));
    assert_eq!(store.touch_node("n1", later, vec!["x:1".into()]).await.unwrap(), Some(NodeState::Draining));
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].state, nodes[0].last_heartbeat_at, nodes[0].images.clone()),
        (NodeState::Draining, later, vec!["x:1".to_string()])
    );
    assert_eq!(nodes[0].labels["zone"], "a");
    let one = store.get_node("n1").await.unwrap().expect("stored");
    assert_eq!((one.state, one.last_heartbeat_at, one.hostname.as_str()), (NodeState::Draining, later, "host"));
    assert!(store.get_node("nope").await.unwrap().is_none());
    assert_eq!(store.touch_node("nope", later, vec![]).await.unwrap(), None);
    assert!(!store.set_node_state("nope", NodeState::Down).await.unwrap());
    store.upsert_node(NodeRecord { capacity: Resources { cpu_millicores: 8000, memory_mib: 4096 }, ..node.clone() }).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap()[0].capacity.cpu_millicores, 8000);
    // Heartbeats in one batch: images kept where none are sent, an older
    // time never replaces a newer one, unknown nodes answer None.
    store.upsert_node(NodeRecord { id: "n2".into(), ..node }).await.unwrap();
    let latest = later.plus(std::time::Duration::from_secs(3));
    let beats = vec![
        NodeBeat { id: "n1".into(), at: latest, images: None },
        NodeBeat { id: "nope".into(), at: latest, images: None },
        NodeBeat { id: "n2".into(), at: now, images: Some(vec!["y:2".into()]) },
    ];
    assert_eq!(store.touch_nodes(beats).await.unwrap(), vec![Some(NodeState::Ready), None, Some(NodeState::Ready)]);
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!((nodes[0].last_heartbeat_at, nodes[0].images.clone()), (latest, vec!["busybox:latest".to_string()]));
    assert_eq!(nodes[1].images, vec!["y:2".to_string()]);
    store.touch_nodes(vec![NodeBeat { id: "n1".into(), at: later, images: None }]).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap()[0].last_heartbeat_at, latest, "no going back in time");
    assert!(store.touch_nodes(Vec::new()).await.unwrap().is_empty());
}

/// Active tasks by node, nodes of tasks and launch specs in batches.
pub async fn lookups_in_batches(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let tasks: Vec<NewTask> = (0..4).map(|_| new_task(&mut gen, spec("p"))).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    let now = Timestamp::now();
    let placed = vec![
        (ids[0], Event::Schedule { node_id: "a".into() }),
        (ids[1], Event::Schedule { node_id: "b".into() }),
        (ids[2], Event::Schedule { node_id: "a".into() }),
    ];
    assert!(store.apply(placed, now).await.unwrap().iter().all(Result::is_ok));
    store.apply(vec![(ids[2], Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap();
    let mut on_a: Vec<TaskId> = store.active_tasks_on("a").await.unwrap().into_iter().map(|t| t.id).collect();
    on_a.sort();
    assert_eq!(on_a, vec![ids[0], ids[2]]);
    assert!(store.active_tasks_on("nowhere").await.unwrap().is_empty());
    // Ended tasks leave the node's list.
    store
        .apply(vec![(ids[2], Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None })], now)
        .await
        .unwrap();
    assert_eq!(store.active_tasks_on("a").await.unwrap().len(), 1);
    let unknown = TaskId(ulid::Ulid::new());
    let specs = store.launch_specs(vec![ids[1], unknown, ids[0]]).await.unwrap();
    assert_eq!(specs.iter().map(|l| l.as_ref().map(|l| l.id)).collect::<Vec<_>>(), vec![Some(ids[1]), None, Some(ids[0])]);
    assert_eq!(specs[0].as_ref().and_then(|l| l.node_id.clone()).as_deref(), Some("b"));
}

/// Projects, tokens (by hash, revocable), secrets (values only in launch specs).
pub async fn tenants(store: &dyn Store) {
    let now = Timestamp::now();
    let project = Project {
        name: "acme".into(),
        created_at: now,
        limits: ProjectLimits { max_running: Some(3), ..Default::default() },
        policy: Default::default(),
    };
    assert!(store.create_project(project.clone()).await.unwrap());
    assert!(!store.create_project(project).await.unwrap(), "exists");
    assert_eq!(store.get_project("acme").await.unwrap().unwrap().limits.max_running, Some(3));
    assert!(store.set_project_limits("acme", ProjectLimits { max_queued: Some(9), ..Default::default() }).await.unwrap());
    assert_eq!(store.list_projects().await.unwrap()[0].limits, ProjectLimits { max_queued: Some(9), ..Default::default() });
    assert!(!store.set_project_limits("nope", ProjectLimits::default()).await.unwrap());
    let token = TokenRecord { id: "t1".into(), project: "acme".into(), name: "ci".into(), created_at: now, revoked_at: None };
    store.create_token(token.clone(), "hash-1".into()).await.unwrap();
    assert_eq!(store.token_by_hash("hash-1").await.unwrap(), Some(token));
    assert!(store.token_by_hash("hash-2").await.unwrap().is_none());
    assert!(store.revoke_token("acme", "t1", now).await.unwrap());
    assert!(store.token_by_hash("hash-1").await.unwrap().is_none(), "revoked");
    assert!(!store.revoke_token("acme", "t1", now).await.unwrap(), "already revoked");
    assert_eq!(store.list_tokens("acme").await.unwrap()[0].revoked_at, Some(now));
    store.put_secret("acme", "db", b"one".to_vec(), now).await.unwrap();
    store.put_secret("acme", "db", b"two".to_vec(), now).await.unwrap();
    assert_eq!(store.list_secrets("acme").await.unwrap().iter().map(|s| s.name.clone()).collect::<Vec<_>>(), vec!["db".to_string()]);
    let mut gen = ulid::Generator::new();
    let mut s = spec("acme");
    s.secrets.push(shepherd_core::SecretRef { name: "db".into(), env: None });
    let task = new_task(&mut gen, s);
    store.create_tasks(vec![task.clone()]).await.unwrap();
    assert_eq!(store.launch_spec(task.id).await.unwrap().unwrap().secrets["db"], b"two");
    assert!(store.delete_secret("acme", "db").await.unwrap());
    assert!(!store.delete_secret("acme", "db").await.unwrap());
}

fn audit_line(project: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Timestamp::now(),
        actor: "admin".into(),
        project: Some(project.into()),
        action: action.into(),
        target: target.into(),
        detail: None,
    }
}

/// The audit log: newest first, numbered per project (no gaps from others).
pub async fn audit(store: &dyn Store) {
    let entry = |project: Option<&str>, target: &str| AuditEntry {
        seq: 0,
        at: Timestamp::now(),
        actor: "admin".into(),
        project: project.map(str::to_string),
        action: "task.create".into(),
        target: target.into(),
        detail: None,
    };
    store.append_audit(vec![entry(Some("a"), "1"), entry(Some("b"), "x"), entry(Some("b"), "y"), entry(None, "node")]).await.unwrap();
    store.append_audit(vec![entry(Some("a"), "2")]).await.unwrap();
    let a = store.list_audit(Some("a".into()), None, 10).await.unwrap();
    assert_eq!(a.iter().map(|e| (e.seq, e.target.as_str())).collect::<Vec<_>>(), vec![(2, "2"), (1, "1")]);
    let older = store.list_audit(Some("a".into()), Some(2), 10).await.unwrap();
    assert_eq!(older.len(), 1);
    let all = store.list_audit(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
}

/// Many writers at once: every write lands, none twice.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut gen = ulid::Generator::new();
            for _ in 0..25 {
                let task = new_task(&mut gen, spec(&format!("w{w}")));
                store.create_tasks(vec![task.clone()]).await.unwrap();
                store.apply(vec![(task.id, Event::Cancel)], Timestamp::now()).await.unwrap()[0].as_ref().unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let counts: BTreeMap<TaskState, u64> = store.count_by_state(None).await.unwrap().into_iter().collect();
    assert_eq!(counts.get(&TaskState::Cancelled), Some(&200));
}

/// The leader's lease: one holder at a time, renewed by it, taken over
/// after it expires or is released, with a higher epoch; a write under an
/// old lease is fenced.
pub async fn leases_and_fencing(store: &dyn Store) {
    use std::time::Duration;
    let a = store.acquire_lease("a", Duration::from_secs(30)).await.unwrap().expect("free: a takes it");
    assert!(store.acquire_lease("b", Duration::from_secs(30)).await.unwrap().is_none(), "held by a");
    let renewed = store.acquire_lease("a", Duration::from_secs(30)).await.unwrap().expect("a renews");
    assert_eq!(renewed.epoch, a.epoch, "a renewal keeps the epoch");
    let mut gen = ulid::Generator::new();
    let task = new_task(&mut gen, spec("p"));
    store.create_tasks(vec![task.clone()]).await.unwrap();
    let placed = store.apply_as_leader(vec![(task.id, Event::Schedule { node_id: "n".into() })], Timestamp::now(), &renewed).await.unwrap();
    assert!(placed[0].is_ok());
    store.release_lease("a").await.unwrap();
    let b = store.acquire_lease("b", Duration::from_millis(300)).await.unwrap().expect("released: b takes it");
    assert!(b.epoch > a.epoch, "a new holder, a new epoch");
    let late =
        store.apply_as_leader(vec![(task.id, Event::Start { attempt: 1, at: None, runtime: None })], Timestamp::now(), &renewed).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "a's old lease is fenced: {late:?}");
    assert_eq!(store.get_task(task.id).await.unwrap().unwrap().state, TaskState::Scheduled, "nothing written");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = store.apply_as_leader(vec![(task.id, Event::Start { attempt: 1, at: None, runtime: None })], Timestamp::now(), &b).await;
    assert!(matches!(expired, Err(StoreError::Fenced { .. })), "b's lease expired: {expired:?}");
    let c = store.acquire_lease("c", Duration::from_secs(30)).await.unwrap().expect("expired: c takes it");
    assert!(c.epoch > b.epoch);
    store.apply_as_leader(vec![(task.id, Event::Start { attempt: 1, at: None, runtime: None })], Timestamp::now(), &c).await.unwrap()[0]
        .as_ref()
        .unwrap();
}

/// Single creates at once, one of them with a task id already taken: they
/// share commits (group commit), and the duplicate fails alone, with
/// nothing of it written; every other one is stored with its audit line.
pub async fn concurrent_creates_fail_alone(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let taken = new_task(&mut gen, spec("p"));
    store.create_tasks(vec![taken.clone()]).await.unwrap();
    let mut requests = Vec::new();
    for i in 0..100 {
        let mut tasks = vec![new_task(&mut gen, spec("p"))];
        if i == 50 {
            tasks.push(taken.clone());
        }
        let audit = vec![AuditEntry {
            seq: 0,
            at: Timestamp::now(),
            actor: "test".into(),
            project: Some("p".into()),
            action: "task.create".into(),
            target: tasks[0].id.to_string(),
            detail: None,
        }];
        requests.push((tasks, audit));
    }
    let results = futures_util::future::join_all(requests.iter().map(|(t, a)| store.create_tasks_audited(t.clone(), a.clone()))).await;
    let failed: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_err()).map(|(i, _)| i).collect();
    assert_eq!(failed, vec![50], "only the request with the taken id fails: {results:?}");
    for (i, (tasks, _)) in requests.iter().enumerate() {
        let stored = store.get_task(tasks[0].id).await.unwrap().is_some();
        assert_eq!(stored, i != 50, "request {i}'s first task");
    }
    let counts: BTreeMap<TaskState, u64> = store.count_by_state(Some("p".into())).await.unwrap().into_iter().collect();
    assert_eq!(counts.get(&TaskState::Queued), Some(&100), "99 created and the one taken before");
    let audit = store.list_audit(Some("p".into()), None, 1000).await.unwrap();
    let seqs: std::collections::BTreeSet<i64> = audit.iter().map(|e| e.seq).collect();
    assert_eq!(audit.len(), 99, "an audit line for each stored request");
    assert_eq!(seqs.len(), 99, "numbered without a repeat");
}

/// A node's state set by the leader is fenced as its placements are: a
/// paused old leader cannot mark a node down under a lease that is over.
pub async fn node_state_fenced_by_the_lease(store: &dyn Store) {
    use std::time::Duration;
    store.upsert_node(ready_node("n1")).await.unwrap();
    let old = store.acquire_lease("old", Duration::from_secs(30)).await.unwrap().expect("free");
    store.release_lease("old").await.unwrap();
    let new = store.acquire_lease("new", Duration::from_secs(30)).await.unwrap().expect("released");
    let late = store.set_node_state_as_leader("n1", NodeState::Down, &old).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "the old leader is fenced: {late:?}");
    assert_eq!(store.get_node("n1").await.unwrap().unwrap().state, NodeState::Ready, "nothing written");
    assert!(store.set_node_state_as_leader("n1", NodeState::Down, &new).await.unwrap(), "the leader marks it down");
    assert_eq!(store.get_node("n1").await.unwrap().unwrap().state, NodeState::Down);
    assert!(!store.set_node_state_as_leader("gone", NodeState::Down, &new).await.unwrap(), "no such node");
}

/// Servers say who they are; messages reach every subscriber (for stores
/// servers share).
/// A node id is bound to the credential of its first registration: the
/// same one is taken again, another never; an id bound to nothing takes a
/// registration without one; removing the node frees the id.
pub async fn node_credentials(store: &dyn Store) {
    assert!(store.claim_node("n1", None).await.unwrap(), "bound to nothing yet");
    assert!(store.claim_node("n1", Some("aa".into())).await.unwrap(), "the first binds it");
    assert!(store.claim_node("n1", Some("aa".into())).await.unwrap(), "the same again");
    assert!(!store.claim_node("n1", Some("bb".into())).await.unwrap(), "another credential");
    assert!(!store.claim_node("n1", None).await.unwrap(), "none, once bound");
    assert!(store.claim_node("n2", Some("bb".into())).await.unwrap(), "ids are apart");
    let now = Timestamp::now();
    let node = NodeRecord {
        id: "n1".into(),
        hostname: "h".into(),
        state: NodeState::Ready,
        driver: "fake".into(),
        capacity: Resources::default(),
        max_tasks: 1,
        labels: Default::default(),
        images: Vec::new(),
        registered_at: now,
        last_heartbeat_at: now,
    };
    store.upsert_node(node).await.unwrap();
    assert!(store.delete_node("n1").await.unwrap());
    assert!(store.claim_node("n1", Some("cc".into())).await.unwrap(), "a removed node's id is free again");
}

pub async fn servers_and_messages(store: &dyn Store) {
    let now = Timestamp::now();
    let server = |id: &str, role: &str| ServerRecord {
        id: id.into(),
        url: format!("http://{id}"),
        role: role.into(),
        started_at: now,
        last_seen_at: now,
    };
    store.touch_server(server("s1", "leader")).await.unwrap();
    store.touch_server(server("s2", "follower")).await.unwrap();
    store.touch_server(server("s1", "follower")).await.unwrap();
    let servers = store.list_servers().await.unwrap();
    assert_eq!(servers.iter().map(|s| (s.id.as_str(), s.role.as_str())).collect::<Vec<_>>(), vec![("s1", "follower"), ("s2", "follower")]);
    if let Some(mut messages) = store.subscribe() {
        // The listening connection may still be opening: publish until heard.
        let mut heard = None;
        for _ in 0..50 {
            store.publish("hello".into()).await.unwrap();
            // (A listener that starts says so first: not a message.)
            match tokio::time::timeout(std::time::Duration::from_millis(100), messages.recv()).await {
                Ok(Ok(message)) if message == crate::postgres::RESYNC => {}
                Ok(Ok(message)) => {
                    heard = Some(message);
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(heard.as_deref(), Some("hello"));
    }
}

/// Codes: revisions numbered per code, read by number or latest, listed,
/// deleted (and pushed again, numbering on); limits of live codes only.
pub async fn codes(store: &dyn Store) {
    let spec = |name: &str, image: &str, max: Option<u32>| {
        let mut spec: shepherd_core::CodeSpec =
            serde_json::from_value(serde_json::json!({"name": name, "image": image})).expect("a code spec");
        spec.max_concurrency = max;
        spec
    };
    let at = Timestamp(1_000);
    let first = store.push_code("p", spec("resize", "busybox:1", Some(2)), at, None).await.unwrap();
    assert_eq!((first.revision, first.spec.project.as_str()), (1, "p"));
    let second = store.push_code("p", spec("resize", "busybox:2", None), at, None).await.unwrap();
    assert_eq!(second.revision, 2);
    store.push_code("q", spec("resize", "other", Some(5)), at, None).await.unwrap();
    store.push_code("p", spec("thumb", "busybox", Some(3)), at, None).await.unwrap();
    let latest = store.get_code("p", "resize", None).await.unwrap().expect("latest");
    assert_eq!((latest.revision, latest.spec.image.as_str()), (2, "busybox:2"));
    let old = store.get_code("p", "resize", Some(1)).await.unwrap().expect("revision 1");
    assert_eq!(old.spec.image, "busybox:1");
    assert!(store.get_code("p", "resize", Some(9)).await.unwrap().is_none());
    assert!(store.get_code("p", "nothing", None).await.unwrap().is_none());
    let back = store.push_code("p", old.spec.clone(), Timestamp(2_000), Some(1)).await.unwrap();
    assert_eq!((back.revision, back.rolled_back_from), (3, Some(1)));
    let revisions: Vec<u32> = store.code_revisions("p", "resize").await.unwrap().iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![3, 2, 1]);
    let names = |codes: Vec<shepherd_core::Code>| {
        codes.iter().map(|c| format!("{}/{}@{}", c.spec.project, c.spec.name, c.revision)).collect::<Vec<_>>()
    };
    assert_eq!(names(store.list_codes(Some("p".into())).await.unwrap()), vec!["p/resize@3", "p/thumb@1"]);
    assert_eq!(names(store.list_codes(None).await.unwrap()).len(), 3);
    let mut limits: Vec<(String, String, u32)> =
        store.code_limits().await.unwrap().into_iter().map(|l| (l.project, l.name, l.max)).collect();
    limits.sort();
    // resize@3 is revision 1's copy: its limit (2) is the code's again.
    assert_eq!(limits, vec![("p".into(), "resize".into(), 2), ("p".into(), "thumb".into(), 3), ("q".into(), "resize".into(), 5)]);
    assert!(store.delete_code("p", "resize").await.unwrap());
    assert!(!store.delete_code("p", "resize").await.unwrap());
    assert!(store.get_code("p", "resize", Some(1)).await.unwrap().is_none(), "a deleted code is gone");
    assert!(store.code_revisions("p", "resize").await.unwrap().is_empty());
    assert_eq!(store.code_limits().await.unwrap().len(), 2);
    let again = store.push_code("p", spec("resize", "busybox:3", None), at, None).await.unwrap();
    assert_eq!(again.revision, 4, "numbers are never reused");
}

/// Schedules: stored, listed, found due, fired once per slot under the
/// lease (a second firing of the same slot writes nothing), done at the end.
pub async fn schedules(store: &dyn Store) {
    use shepherd_core::{Schedule, ScheduleState};
    use std::time::Duration;
    let every: shepherd_core::ScheduleSpec =
        serde_json::from_value(serde_json::json!({"project": "p", "run_every": 10, "task": {"image": "busybox"}}))
            .expect("a schedule spec");
    let schedule = |id: &str, next: i64| Schedule {
        id: id.into(),
        state: ScheduleState::Active,
        created_at: Timestamp(0),
        next_at: Some(Timestamp(next)),
        fired: 0,
        skipped: 0,
        failed: 0,
        last_task: None,
        last_fired_at: None,
        reason: None,
        spec: every.clone(),
    };
    store.create_schedule(schedule("a", 10_000)).await.unwrap();
    store.create_schedule(schedule("b", 5_000)).await.unwrap();
    assert_eq!(store.next_schedule_at().await.unwrap(), Some(Timestamp(5_000)));
    let due: Vec<String> = store.due_schedules(Timestamp(20_000), 10).await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(due, vec!["b", "a"], "soonest first");
    assert!(store.due_schedules(Timestamp(4_000), 10).await.unwrap().is_empty());
    let lease = store.acquire_lease("me", Duration::from_secs(30)).await.unwrap().expect("the lease");
    let mut gen = ulid::Generator::new();
    let task = new_task(&mut gen, spec("p"));
    let firing = ScheduleFiring {
        id: "a".into(),
        expected_next: Timestamp(10_000),
        next: Some(Timestamp(20_000)),
        skipped: 2,
        failed: 0,
        reason: None,
        tasks: vec![task.clone()],
        audit: vec![],
        at: Timestamp(10_001),
    };
    assert!(store.fire_schedule(firing.clone(), &lease).await.unwrap());
    let mut twice = firing.clone();
    twice.tasks = vec![new_task(&mut gen, spec("p"))];
    assert!(!store.fire_schedule(twice.clone(), &lease).await.unwrap(), "that slot has fired");
    assert!(store.get_task(twice.tasks[0].id).await.unwrap().is_none(), "and its task was not stored");
    let a = store.get_schedule("a").await.unwrap().expect("a");
    assert_eq!((a.next_at, a.fired, a.skipped, a.last_task.clone()), (Some(Timestamp(20_000)), 1, 2, Some(task.id.to_string())));
    assert_eq!(a.last_fired_at, Some(Timestamp(10_001)));
    assert!(store.get_task(task.id).await.unwrap().is_some());
    // Paused: never due; a firing against it writes nothing.
    assert!(store.set_schedule_state("b", ScheduleState::Paused, None).await.unwrap());
    assert_eq!(store.due_schedules(Timestamp(20_000), 10).await.unwrap().len(), 1);
    // The last slot: done.
    let last = ScheduleFiring { expected_next: Timestamp(20_000), next: None, tasks: vec![new_task(&mut gen, spec("p"))], ..firing };
    assert!(store.fire_schedule(last, &lease).await.unwrap());
    let a = store.get_schedule("a").await.unwrap().expect("a");
    assert_eq!((a.state, a.next_at, a.fired), (ScheduleState::Done, None, 2));
    assert!(store.set_schedule_state("a", ScheduleState::Cancelled, None).await.unwrap());
    assert!(!store.set_schedule_state("a", ScheduleState::Active, Some(Timestamp(1))).await.unwrap(), "cancelled stays cancelled");
    assert_eq!(store.list_schedules(Some("p".into())).await.unwrap().len(), 2);
    assert!(store.list_schedules(Some("q".into())).await.unwrap().is_empty());
    assert!(store.get_schedule("zz").await.unwrap().is_none());
    // Another holder's lease is fenced.
    store.release_lease("me").await.unwrap();
    let other = store.acquire_lease("other", Duration::from_secs(30)).await.unwrap().expect("free");
    assert!(store.set_schedule_state("b", ScheduleState::Active, Some(Timestamp(5_000))).await.unwrap());
    let stale = ScheduleFiring {
        id: "b".into(),
        expected_next: Timestamp(5_000),
        next: Some(Timestamp(15_000)),
        skipped: 0,
        failed: 0,
        reason: None,
        tasks: vec![],
        audit: vec![],
        at: Timestamp(5_000),
    };
    assert!(matches!(store.fire_schedule(stale.clone(), &lease).await, Err(StoreError::Fenced { .. })));
    assert!(store.fire_schedule(stale, &other).await.unwrap());
    // A slot whose task could not be made: counted as failed, with the
    // reason shown until a slot fires again.
    let failing = ScheduleFiring {
        id: "b".into(),
        expected_next: Timestamp(15_000),
        next: Some(Timestamp(25_000)),
        skipped: 1,
        failed: 1,
        reason: Some("project p may have 0 queued tasks".into()),
        tasks: vec![],
        audit: vec![],
        at: Timestamp(15_000),
    };
    assert!(store.fire_schedule(failing, &other).await.unwrap());
    let b = store.get_schedule("b").await.unwrap().expect("b");
    assert_eq!((b.failed, b.skipped, b.reason.as_deref()), (1, 1, Some("project p may have 0 queued tasks")));
    let quiet = ScheduleFiring {
        id: "b".into(),
        expected_next: Timestamp(25_000),
        next: Some(Timestamp(35_000)),
        skipped: 1,
        failed: 0,
        reason: None,
        tasks: vec![],
        audit: vec![],
        at: Timestamp(25_000),
    };
    assert!(store.fire_schedule(quiet, &other).await.unwrap());
    assert!(store.get_schedule("b").await.unwrap().unwrap().reason.is_some(), "an overlap skip keeps the reason");
    let fires = ScheduleFiring {
        id: "b".into(),
        expected_next: Timestamp(35_000),
        next: Some(Timestamp(45_000)),
        skipped: 0,
        failed: 0,
        reason: None,
        tasks: vec![new_task(&mut gen, spec("p"))],
        audit: vec![],
        at: Timestamp(35_000),
    };
    assert!(store.fire_schedule(fires, &other).await.unwrap());
    assert_eq!(store.get_schedule("b").await.unwrap().unwrap().reason, None, "a slot that fires clears it");
}

/// Packages are kept per project by digest; progress is read back with the task.
pub async fn packages_and_progress(store: &dyn Store) {
    let digest = "a".repeat(64);
    store.put_package("p", &digest, b"zip bytes".to_vec(), Timestamp(1)).await.unwrap();
    store.put_package("p", &digest, b"zip bytes".to_vec(), Timestamp(2)).await.unwrap();
    assert_eq!(store.get_package("p", &digest).await.unwrap().as_deref(), Some(&b"zip bytes"[..]));
    assert_eq!(store.package_size("p", &digest).await.unwrap(), Some(9));
    assert!(store.get_package("q", &digest).await.unwrap().is_none(), "another project's package is not there");
    assert!(store.package_size("q", &digest).await.unwrap().is_none());
    // Listed without bytes; removed per project: another project's copy of
    // the same bytes stays; in use while an unfinished task names it.
    let listed = store.list_packages("p").await.unwrap();
    assert_eq!(listed.iter().map(|p| (p.digest.as_str(), p.size)).collect::<Vec<_>>(), vec![(digest.as_str(), 9)]);
    store.put_package("q", &digest, b"zip bytes".to_vec(), Timestamp(3)).await.unwrap();
    assert!(store.delete_package("q", &digest).await.unwrap());
    assert!(!store.delete_package("q", &digest).await.unwrap(), "gone already");
    assert_eq!(store.get_package("p", &digest).await.unwrap().as_deref(), Some(&b"zip bytes"[..]), "p's stays");
    let other = "b".repeat(64);
    store.put_package("p", &other, b"other zip".to_vec(), Timestamp(4)).await.unwrap();
    assert_eq!(store.list_packages("p").await.unwrap().len(), 2);
    let mut packaged = spec("p");
    packaged.package =
        Some(shepherd_core::PackageRef { digest: other.clone(), size: 9, executable: "run.sh".into(), runtime: "sh".into() });
    let mut ids = ulid::Generator::new();
    let runs = new_task(&mut ids, packaged);
    store.create_tasks(vec![runs.clone()]).await.unwrap();
    assert!(store.package_in_use("p", &other).await.unwrap());
    assert!(!store.package_in_use("p", &digest).await.unwrap());
    assert!(!store.package_in_use("q", &other).await.unwrap(), "another project's task");
    store.apply(vec![(runs.id, Event::Cancel)], Timestamp::now()).await.unwrap();
    assert!(!store.package_in_use("p", &other).await.unwrap(), "ended");
    assert!(store.delete_package("p", &other).await.unwrap());
    assert!(store.get_package("p", &other).await.unwrap().is_none());
    let mut gen = ulid::Generator::new();
    let task = new_task(&mut gen, spec("p"));
    store.create_tasks(vec![task.clone()]).await.unwrap();
    assert!(store.get_task(task.id).await.unwrap().unwrap().progress.is_none());
    let progress = shepherd_core::Progress { percent: 40, message: "half way".into() };
    assert!(store.set_progress(task.id, progress.clone()).await.unwrap());
    assert_eq!(store.get_task(task.id).await.unwrap().unwrap().progress, Some(progress.clone()));
    assert!(!store.set_progress(TaskId(ulid::Ulid::new()), shepherd_core::Progress { percent: 1, message: String::new() }).await.unwrap());

    // An image pull's progress shows while the attempt waits to start and
    // goes when it starts; the task's own progress stays.
    let pulled = new_task(&mut gen, spec("p"));
    store.create_tasks(vec![pulled.clone()]).await.unwrap();
    let now = Timestamp::now();
    for (id, event) in [(pulled.id, Event::Schedule { node_id: "n".into() }), (task.id, Event::Schedule { node_id: "n".into() })] {
        store.apply(vec![(id, event)], now).await.unwrap().remove(0).unwrap();
    }
    let pulling = shepherd_core::Progress { percent: 43, message: "pulling image: 43%".into() };
    assert!(!store.set_attempt_progress(pulled.id, 2, None, pulling.clone()).await.unwrap(), "not its attempt");
    assert!(!store.set_attempt_progress(pulled.id, 1, Some("m".into()), pulling.clone()).await.unwrap(), "not its node");
    assert!(store.set_attempt_progress(pulled.id, 1, Some("n".into()), pulling.clone()).await.unwrap());
    assert_eq!(store.get_task(pulled.id).await.unwrap().unwrap().progress, Some(pulling.clone()));
    for id in [pulled.id, task.id] {
        store.apply(vec![(id, Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap().remove(0).unwrap();
    }
    assert_eq!(store.get_task(pulled.id).await.unwrap().unwrap().progress, None, "the pull's progress goes with the start");
    assert!(!store.set_attempt_progress(pulled.id, 1, None, pulling).await.unwrap(), "a late report lands nowhere");
    assert_eq!(store.get_task(pulled.id).await.unwrap().unwrap().progress, None);
    assert_eq!(store.get_task(task.id).await.unwrap().unwrap().progress, Some(progress), "the task's own stays");
}

/// A task naming a webhook gets a delivery, due once the task has ended;
/// tries are recorded in order; a secret is set once and kept.
pub async fn webhooks(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let mut with_hook = spec("p");
    with_hook.webhook = Some("http://127.0.0.1:9/hook".into());
    let task = new_task(&mut gen, with_hook);
    let plain = new_task(&mut gen, spec("p"));
    store.create_tasks(vec![task.clone(), plain.clone()]).await.unwrap();
    let later = Timestamp::now().plus(std::time::Duration::from_secs(60));
    assert!(store.due_webhooks(later, 10, 10).await.unwrap().is_empty(), "not due before the task ends");
    assert!(store.webhook_of(plain.id).await.unwrap().is_none());
    store.apply(vec![(task.id, Event::Cancel)], Timestamp::now()).await.unwrap();
    let due = store.due_webhooks(later, 10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].task_id, due[0].url.as_str(), due[0].state.as_str()), (task.id, "http://127.0.0.1:9/hook", "pending"));
    let failed = WebhookAttempt { number: 1, at: Timestamp(10), status: Some(500), latency_ms: 3, error: Some("status 500".into()) };
    store.record_webhook(task.id, failed.clone(), WebhookNext::RetryAt(later.plus(std::time::Duration::from_secs(60)))).await.unwrap();
    assert!(store.due_webhooks(later, 10, 10).await.unwrap().is_empty(), "not due before its retry time");
    let ok = WebhookAttempt { number: 2, at: Timestamp(20), status: Some(200), latency_ms: 4, error: None };
    store.record_webhook(task.id, ok.clone(), WebhookNext::Delivered).await.unwrap();
    let delivery = store.webhook_of(task.id).await.unwrap().expect("a delivery");
    assert_eq!((delivery.state.as_str(), delivery.attempts, delivery.delivered_at), ("delivered", 2, Some(Timestamp(20))));
    assert_eq!(delivery.history, vec![failed, ok]);
    let later_still = later.plus(std::time::Duration::from_secs(3600));
    assert!(store.due_webhooks(later_still, 10, 10).await.unwrap().is_empty(), "delivered: never again");
    let first = store.ensure_secret("p", ".webhook", b"one".to_vec(), Timestamp(1)).await.unwrap();
    let second = store.ensure_secret("p", ".webhook", b"two".to_vec(), Timestamp(2)).await.unwrap();
    assert_eq!((first.as_slice(), second.as_slice()), (&b"one"[..], &b"one"[..]));
    // A few per project: one project's backlog never fills the list.
    let hooked = |project: &str, gen: &mut ulid::Generator| {
        let mut spec = spec(project);
        spec.webhook = Some(format!("http://{project}.example/hook"));
        new_task(gen, spec)
    };
    let mut all: Vec<NewTask> = (0..20).map(|_| hooked("flood", &mut gen)).collect();
    all.push(hooked("quiet", &mut gen));
    store.create_tasks(all.clone()).await.unwrap();
    store.apply(all.iter().map(|t| (t.id, Event::Cancel)).collect(), Timestamp::now()).await.unwrap();
    let due = store.due_webhooks(later_still, 6, 3).await.unwrap();
    let count = |project: &str| due.iter().filter(|d| d.project == project).count();
    assert_eq!((count("flood"), count("quiet")), (3, 1), "{due:?}");
}

/// Every state change, node change and tenant action lands in the event
/// stream in the transaction that made it; a reader resuming after any
/// cursor gets exactly the rest, in order; pruning by age keeps the rest
/// and never renumbers.
pub async fn events(store: &dyn Store) {
    use shepherd_core::ClusterEvent;
    let mut gen = ulid::Generator::new();
    assert!(store.read_events(None, 100).await.unwrap().is_empty());
    assert_eq!(store.latest_event().await.unwrap(), None);
    let tasks: Vec<NewTask> = (0..3).map(|_| new_task(&mut gen, spec("p"))).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    let now = Timestamp::now();
    let node = NodeRecord {
        id: "n1".into(),
        hostname: "h".into(),
        state: NodeState::Ready,
        driver: "fake".into(),
        capacity: Resources { cpu_millicores: 1000, memory_mib: 1024 },
        max_tasks: 4,
        labels: BTreeMap::new(),
        images: vec![],
        registered_at: now,
        last_heartbeat_at: now,
    };
    store.upsert_node(node).await.unwrap();
    let placed = store.apply(vec![(ids[0], Event::Schedule { node_id: "n1".into() })], now).await.unwrap();
    assert!(placed[0].is_ok());
    // A refused event records nothing.
    assert!(store.apply(vec![(ids[1], Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap()[0].is_err());
    store.apply_reported("n1".into(), vec![(ids[0], Event::Start { attempt: 1, at: None, runtime: None })], now).await.unwrap();
    store
        .apply_reported(
            "n1".into(),
            vec![(ids[0], Event::Exit { attempt: 1, code: 3, oom_killed: false, at: None, usage: None, result: None })],
            now,
        )
        .await
        .unwrap();
    assert!(store.set_node_state("n1", NodeState::Draining).await.unwrap());
    store.append_audit(vec![audit_line("p", "secret.set", "db"), audit_line("p", "task.cancel", "x")]).await.unwrap();

    // A store may hold events back until no older transaction is running
    // (PostgreSQL: other sessions' transactions): they show up soon after.
    let all = settled(store, None, 9).await;
    let mut active = store.active_counts().await.unwrap();
    active.sort_by_key(|(p, s, _)| (p.clone(), s.as_str()));
    assert_eq!(active, vec![("p".to_string(), TaskState::Queued, 2)]);
    let kinds: Vec<String> = all
        .iter()
        .map(|e| match &e.event {
            ClusterEvent::Task(t) => format!("task {} {}", ids.iter().position(|i| *i == t.task).unwrap(), t.state),
            ClusterEvent::Node(n) => format!("node {} {}", n.node, n.state),
            other => format!("{} {}", other.kind(), other.project().unwrap_or("")),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "task 0 queued",
            "task 1 queued",
            "task 2 queued",
            "node n1 ready",
            "task 0 scheduled",
            "task 0 running",
            "task 0 failed",
            "node n1 draining",
            "secret p",
        ]
    );
    let ClusterEvent::Task(failed) = &all[6].event else { panic!("a task event") };
    assert_eq!((failed.exit_code, failed.attempt, failed.node.as_deref(), failed.from), (Some(3), 1, Some("n1"), Some(TaskState::Running)));
    assert_eq!(failed.project, "p");
    let cursors: Vec<_> = all.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {cursors:?}");
    assert_eq!(store.latest_event().await.unwrap(), Some(*cursors.last().unwrap()));
    // Resuming after any event gives exactly the rest, whatever the page size.
    for (i, cursor) in cursors.iter().enumerate() {
        let rest = store.read_events(Some(*cursor), 1000).await.unwrap();
        assert_eq!(rest, all[i + 1..].to_vec(), "after event {i}");
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_events(after, 1).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.cursor);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    // Pruning by age: everything recorded before now goes; later events keep
    // numbering after the old ones.
    let later = Timestamp::now().plus(std::time::Duration::from_secs(1));
    assert!(store.prune_events(later).await.unwrap() >= 1);
    assert!(store.read_events(None, 100).await.unwrap().is_empty());
    store.set_node_state("n1", NodeState::Ready).await.unwrap();
    let fresh = settled(store, Some(*cursors.last().unwrap()), 1).await;
    assert!(fresh[0].cursor > *cursors.last().unwrap());
}

/// The events after `after` once there are `count` of them (within 10 s).
async fn settled(store: &dyn Store, after: Option<shepherd_core::EventCursor>, count: usize) -> Vec<shepherd_core::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = store.read_events(after, 1000).await.unwrap();
        if events.len() >= count || std::time::Instant::now() > deadline {
            assert_eq!(events.len(), count, "{events:?}");
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A queued task's place in line: priority, then age; other projects'
/// tasks count in the cluster's line only.
pub async fn queue_positions(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let tasks: Vec<NewTask> = (0..3).map(|_| new_task(&mut gen, spec("p"))).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    store.apply(vec![(ids[0], Event::Cancel)], Timestamp::now()).await.unwrap();
    assert_eq!(store.queue_position(ids[1]).await.unwrap(), Some((1, 1)));
    assert_eq!(store.queue_position(ids[2]).await.unwrap(), Some((2, 2)));
    assert_eq!(store.queue_position(ids[0]).await.unwrap(), None, "not queued");
    let mut urgent = spec("q");
    urgent.priority = 5;
    let urgent = new_task(&mut gen, urgent);
    let urgent_id = urgent.id;
    store.create_tasks(vec![urgent, new_task(&mut gen, spec("q"))]).await.unwrap();
    assert_eq!(store.queue_position(urgent_id).await.unwrap(), Some((1, 1)));
    assert_eq!(store.queue_position(ids[2]).await.unwrap(), Some((2, 3)));
    assert_eq!(store.queue_position(TaskId::generate(&mut gen, Timestamp::now())).await.unwrap(), None);
}

/// What an attempt used is kept with it and summed per project and bucket.
pub async fn usage(store: &dyn Store) {
    let mut gen = ulid::Generator::new();
    let tasks = vec![new_task(&mut gen, spec("a")), new_task(&mut gen, spec("a")), new_task(&mut gen, spec("b"))];
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    let base = Timestamp(1_800_000_000_000 / 3_600_000 * 3_600_000);
    let at = |s: u64| base.plus(std::time::Duration::from_secs(s));
    for (i, id) in ids.iter().enumerate() {
        let usage = (i != 1).then_some(shepherd_core::Usage { cpu_ms: 1000 * (i as u64 + 1), peak_memory_bytes: 1 << 20 });
        let events = vec![
            (*id, Event::Schedule { node_id: "n".into() }),
            (*id, Event::Start { attempt: 1, at: Some(at(10)), runtime: None }),
            (*id, Event::Exit { attempt: 1, code: 0, oom_killed: false, at: Some(at(20)), usage, result: None }),
        ];
        let results = store.apply(events, at(3700)).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let task = store.get_task(ids[0]).await.unwrap().unwrap();
    assert_eq!(task.attempts[0].usage, Some(shepherd_core::Usage { cpu_ms: 1000, peak_memory_bytes: 1 << 20 }));
    assert_eq!(store.get_task(ids[1]).await.unwrap().unwrap().attempts[0].usage, None);
    let hour = 3_600_000;
    let rows = store.usage(UsageQuery { project: None, from: base, to: at(7200), bucket_ms: hour }).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].project.as_str(), rows[0].start, rows[0].tasks, rows[0].attempts, rows[0].cpu_ms, rows[0].wall_ms),
        ("a", base, 2, 2, 1000, 20_000)
    );
    assert!((rows[0].memory_byte_ms - (1u64 << 20) as f64 * 10_000.0).abs() < 1.0);
    assert_eq!((rows[1].project.as_str(), rows[1].cpu_ms), ("b", 3000));
    let only_b = store.usage(UsageQuery { project: Some("b".into()), from: base, to: at(7200), bucket_ms: hour }).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert!(store.usage(UsageQuery { project: None, from: at(21), to: at(7200), bucket_ms: hour }).await.unwrap().is_empty());
}

/// Retention: finished tasks past the cut are listed by project in id
/// order, in pages; removing them takes their attempts, logs, labels and
/// dependency edges, and their usage stays in usage reports; tasks not
/// finished, not yet past the cut, or of another project stay; removing
/// twice removes nothing more.
pub async fn retention(store: &dyn Store) {
    use shepherd_core::DependOn::*;
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let base = Timestamp((now.millis() - 3 * 3_600_000) / 3_600_000 * 3_600_000);
    let at = |s: u64| base.plus(std::time::Duration::from_secs(s));
    let mut labelled = spec("a");
    labelled.labels.insert("team".into(), "x".into());
    let a0 = new_task(&mut gen, labelled);
    let a1 = new_task(&mut gen, spec("a"));
    let b0 = new_task(&mut gen, spec("b"));
    let mut waits = new_task(&mut gen, spec("a"));
    waits.spec.depends_on = vec![dep(a0.id, Succeeded)];
    let queued = new_task(&mut gen, spec("a"));
    let ids = [a0.id, a1.id, b0.id, waits.id, queued.id];
    submit_all(store, vec![Entry::Task(a0), Entry::Task(a1), Entry::Task(b0), Entry::Task(waits), Entry::Task(queued)]).await;
    for (i, id) in ids[..3].iter().enumerate() {
        let usage = Some(shepherd_core::Usage { cpu_ms: 1000 * (i as u64 + 1), peak_memory_bytes: 1 << 20 });
        let events = vec![
            (*id, Event::Schedule { node_id: "n".into() }),
            (*id, Event::Start { attempt: 1, at: Some(at(10)), runtime: None }),
            (*id, Event::Exit { attempt: 1, code: 0, oom_killed: false, at: Some(at(20)), usage, result: None }),
        ];
        let results = store.apply(events, at(30)).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let chunk = |text: &str| LogChunk { task_id: ids[0], attempt: 1, stream: LogStream::Stdout, data: text.as_bytes().to_vec() };
    store.append_logs(vec![chunk("kept until removed")]).await.unwrap();
    assert_eq!(state_of(store, ids[3]).await, TaskState::Queued, "its dependency succeeded");
    let hour = 3_600_000;
    let usage_query = UsageQuery { project: None, from: base, to: now, bucket_ms: hour };
    let usage_before = store.usage(usage_query.clone()).await.unwrap();
    assert_eq!(usage_before.len(), 2, "{usage_before:?}");

    let cut = Timestamp(now.millis() + 60_000);
    assert_eq!(store.expired_tasks("a", cut, None, 10).await.unwrap(), vec![ids[0], ids[1]]);
    assert_eq!(store.expired_tasks("a", cut, None, 1).await.unwrap(), vec![ids[0]], "pages");
    assert_eq!(store.expired_tasks("a", cut, Some(ids[0]), 10).await.unwrap(), vec![ids[1]], "after a cursor");
    assert_eq!(store.expired_tasks("b", cut, None, 10).await.unwrap(), vec![ids[2]]);
    assert!(store.expired_tasks("a", at(20), None, 10).await.unwrap().is_empty(), "finished at the cut, not before it");
    assert!(store.expired_tasks("c", cut, None, 10).await.unwrap().is_empty());

    // What an export reads: the tasks still there, with their attempts and output.
    let exported = store.export_tasks(vec![ids[0], TaskId(ulid::Ulid::new()), ids[1]]).await.unwrap();
    assert_eq!(exported.iter().map(|(t, _)| t.id).collect::<Vec<_>>(), vec![ids[0], ids[1]]);
    assert_eq!(exported[0].0.attempts.len(), 1);
    assert_eq!(exported[0].1.iter().map(|c| c.data.clone()).collect::<Vec<_>>(), vec![b"kept until removed".to_vec()]);
    assert!(exported[1].1.is_empty());
    // Project a's finished tasks, and ones that are not expired: only the
    // expired ones go.
    let removed = store.remove_tasks(vec![ids[0], ids[1], ids[3], ids[4]], cut).await.unwrap();
    assert_eq!(removed, vec![ids[0], ids[1]]);
    assert!(store.get_task(ids[0]).await.unwrap().is_none());
    assert!(store.get_task(ids[1]).await.unwrap().is_none());
    assert!(store.read_logs(ids[0], 0, 10).await.unwrap().is_empty());
    assert_eq!(state_of(store, ids[3]).await, TaskState::Queued);
    assert_eq!(state_of(store, ids[4]).await, TaskState::Queued);
    assert_eq!(state_of(store, ids[2]).await, TaskState::Succeeded, "another project's task stays");
    let labelled =
        store.list_tasks(TaskFilter { labels: vec![("team".into(), "x".into())], limit: 10, ..Default::default() }).await.unwrap();
    assert!(labelled.tasks.is_empty(), "its labels went with it");
    assert!(store.dependency_edges(&ids[3].to_string(), 10).await.unwrap().is_empty(), "its edges went with it");
    // Usage reports say the same as before.
    let usage_after = store.usage(usage_query.clone()).await.unwrap();
    assert_eq!(usage_after.len(), usage_before.len(), "{usage_after:?}");
    for (before, after) in usage_before.iter().zip(&usage_after) {
        assert_eq!(
            (&before.project, before.start, before.tasks, before.attempts, before.cpu_ms, before.wall_ms),
            (&after.project, after.start, after.tasks, after.attempts, after.cpu_ms, after.wall_ms)
        );
        assert!((before.memory_byte_ms - after.memory_byte_ms).abs() < 1.0);
    }
    let daily = store.usage(UsageQuery { project: Some("a".into()), from: Timestamp(0), to: now, bucket_ms: 24 * hour }).await.unwrap();
    assert_eq!(daily.iter().map(|r| r.cpu_ms).sum::<u64>(), 3000, "{daily:?}");
    assert!(store.remove_tasks(vec![ids[0], ids[1]], cut).await.unwrap().is_empty(), "twice removes nothing more");
    assert!(store.expired_tasks("a", cut, None, 10).await.unwrap().is_empty());
    // A second removal of b's task adds to the same hour's sums.
    assert_eq!(store.remove_tasks(vec![ids[2]], cut).await.unwrap(), vec![ids[2]]);
    let usage_all = store.usage(usage_query).await.unwrap();
    assert_eq!(usage_all.iter().map(|r| r.cpu_ms).sum::<u64>(), 6000, "{usage_all:?}");
    let size = store.store_size().await.unwrap();
    assert!(size.bytes > 0);
    let oldest = size.oldest_task.expect("tasks are kept");
    assert!(oldest <= Timestamp::now() && oldest.millis() >= now.millis() - 1000, "{oldest:?}");
}

/// The observer hears of stored tasks by project, of applied events, and
/// of commits.
pub async fn observer(store: &dyn Store) {
    #[derive(Default)]
    struct Seen {
        created: std::sync::Mutex<Vec<(String, u64)>>,
        applied: std::sync::atomic::AtomicUsize,
        commits: std::sync::atomic::AtomicUsize,
    }
    impl StoreObserver for Seen {
        fn committed(&self, requests: usize, _took: std::time::Duration) {
            assert!(requests >= 1);
            self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn created(&self, project: &str, count: u64) {
            self.created.lock().unwrap().push((project.to_string(), count));
        }
        fn applied(&self, results: &[ApplyResult]) {
            self.applied.fetch_add(results.iter().filter(|r| r.is_ok()).count(), std::sync::atomic::Ordering::SeqCst);
        }
    }
    let seen = Arc::new(Seen::default());
    store.set_observer(seen.clone());
    let mut gen = ulid::Generator::new();
    let tasks = vec![new_task(&mut gen, spec("a")), new_task(&mut gen, spec("b")), new_task(&mut gen, spec("a"))];
    let id = tasks[0].id;
    store.create_tasks(tasks).await.unwrap();
    store.create_tasks_audited(vec![new_task(&mut gen, spec("c"))], Vec::new()).await.unwrap();
    let results = store.apply(vec![(id, Event::Cancel)], Timestamp::now()).await.unwrap();
    assert!(results[0].is_ok());
    let Ok(applied) = &results[0] else { unreachable!() };
    assert_eq!((applied.project.as_str(), applied.decision.to), ("a", TaskState::Cancelled));
    let mut created = seen.created.lock().unwrap().clone();
    created.sort();
    assert_eq!(created, vec![("a".to_string(), 2), ("b".to_string(), 1), ("c".to_string(), 1)]);
    assert_eq!(seen.applied.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(seen.commits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// Machines: inserted once, changed only by compare-and-set, listed and
/// forgotten; a node is forgotten only while it holds no task; the cluster's
/// identity is made once.
pub async fn machines(store: &dyn Store) {
    use shepherd_core::{Machine, MachineShape, MachineState};
    let now = Timestamp::now();
    let machine = Machine {
        id: "m-1".into(),
        pool: "burst".into(),
        provisioner: "local".into(),
        provider_id: None,
        state: MachineState::Creating,
        shape: MachineShape {
            cpu_millicores: 2000,
            memory_mib: 1024,
            max_tasks: 8,
            labels: BTreeMap::from([("tier".to_string(), "b".to_string())]),
        },
        cost: Some("0.05/h".into()),
        node_id: None,
        created_at: now,
        updated_at: now,
        provisioned_at: None,
        joined_at: None,
        error: None,
        join_token_sha256: "ab".repeat(32),
    };
    assert!(store.put_machine(machine.clone(), None).await.unwrap());
    assert!(!store.put_machine(machine.clone(), None).await.unwrap(), "an id is taken once");
    let joined = Machine {
        state: MachineState::Joined,
        node_id: Some("n9".into()),
        provider_id: Some("c1".into()),
        joined_at: Some(Timestamp(now.millis() + 5)),
        ..machine.clone()
    };
    assert!(!store.put_machine(joined.clone(), Some(MachineState::Joined)).await.unwrap(), "the state did not match");
    assert!(store.put_machine(joined.clone(), Some(MachineState::Creating)).await.unwrap());
    assert!(store.put_machine(Machine { id: "m-0".into(), ..machine.clone() }, None).await.unwrap());
    let all = store.machines().await.unwrap();
    assert_eq!(all.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m-0", "m-1"]);
    assert_eq!(all[1], joined);
    assert!(store.delete_machine("m-1").await.unwrap());
    assert!(!store.delete_machine("m-1").await.unwrap());
    assert_eq!(store.machines().await.unwrap().len(), 1);
    // Their lives outlast them: asked, joined, gone (a replay's machine-hours).
    let lives = store.machine_history(Timestamp(now.millis() + 3_600_000)).await.unwrap();
    let life = |id: &str| lives.iter().find(|m| m.machine == id).cloned().unwrap();
    let (m1, m0) = (life("m-1"), life("m-0"));
    assert_eq!((m1.pool.as_str(), m1.asked, m1.joined), ("burst", now.millis(), Some(now.millis() + 5)));
    assert!(m1.gone.is_some_and(|g| g >= now.millis()), "{m1:?}");
    assert_eq!((m0.joined, m0.gone), (None, None));
    assert!(store.machine_history(now).await.unwrap().iter().all(|m| m.machine != "m-1"), "only machines asked for before");

    // A node holding a task stays; once the task is gone, it can go.
    let node = NodeRecord {
        id: "n9".into(),
        hostname: "m-1".into(),
        state: NodeState::Draining,
        driver: "docker".into(),
        capacity: Resources { cpu_millicores: 2000, memory_mib: 1024 },
        max_tasks: 8,
        labels: BTreeMap::new(),
        images: Vec::new(),
        registered_at: now,
        last_heartbeat_at: now,
    };
    store.upsert_node(node).await.unwrap();
    let mut gen = ulid::Generator::new();
    let task = new_task(&mut gen, spec("p"));
    let id = task.id;
    store.create_tasks(vec![task]).await.unwrap();
    store.apply(vec![(id, Event::Schedule { node_id: "n9".into() })], now).await.unwrap().remove(0).unwrap();
    assert!(!store.delete_node("n9").await.unwrap(), "it holds a task");
    store.apply(vec![(id, Event::Lost { attempt: 1, reason: "gone".into() })], now).await.unwrap().remove(0).unwrap();
    assert!(store.delete_node("n9").await.unwrap());
    assert!(store.get_node("n9").await.unwrap().is_none());
    assert!(!store.delete_node("n9").await.unwrap());

    // Each state change and the destroy are in the event stream, in order
    // (PostgreSQL shows a commit once no older transaction runs: waited for).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events: Vec<String> = store
            .read_events(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.event {
                shepherd_core::ClusterEvent::Machine(m) => Some(format!("{} {}", m.machine, m.state)),
                _ => None,
            })
            .collect();
        if events.len() >= 4 || std::time::Instant::now() > deadline {
            assert_eq!(events, ["m-1 creating", "m-1 joined", "m-0 creating", "m-1 destroyed"]);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let cluster = store.cluster_id().await.unwrap();
    assert!(cluster.len() >= 16);
    assert_eq!(store.cluster_id().await.unwrap(), cluster);
    // Other values: the first proposal stays; keys are apart.
    assert_eq!(store.cluster_value("key-a", "one").await.unwrap(), "one");
    assert_eq!(store.cluster_value("key-a", "two").await.unwrap(), "one");
    assert_eq!(store.cluster_value("key-b", "two").await.unwrap(), "two");
    assert_eq!(store.cluster_id().await.unwrap(), cluster);
}

/// Volumes: one name per project, engine names never shared across
/// projects, listed by project, bound to a node once; project policies.
pub async fn volumes_and_policies(store: &dyn Store) {
    use shepherd_core::{Egress, NetworkSpec, ProjectPolicy, Volume, VolumeScope, VolumeSpec};
    let now = Timestamp(1_000);
    for name in ["a", "a-b"] {
        store
            .create_project(Project { name: name.into(), created_at: now, limits: Default::default(), policy: Default::default() })
            .await
            .unwrap();
    }
    let mut spec = VolumeSpec::local("b-c");
    spec.options.insert("type".into(), "tmpfs".into());
    spec.size_mib = Some(64);
    let volume = Volume::new("a", spec, now);
    assert!(store.create_volume(volume.clone()).await.unwrap());
    assert!(!store.create_volume(volume.clone()).await.unwrap(), "one name per project");
    // `a-b` + `c` spells the same engine name as `a` + `b-c`: refused.
    let clash = Volume::new("a-b", VolumeSpec::local("c"), now);
    assert_eq!(clash.engine_name, volume.engine_name);
    assert!(!store.create_volume(clash).await.unwrap(), "engine names are never shared");
    assert!(store.create_volume(Volume::new("a-b", VolumeSpec::local("d"), now)).await.unwrap());
    let of_a = store.volumes(Some("a".into())).await.unwrap();
    assert_eq!(of_a, vec![volume.clone()]);
    assert_eq!(of_a[0].scope, VolumeScope::Node);
    assert_eq!(store.volumes(None).await.unwrap().len(), 2);
    assert_eq!(store.get_volume("a-b", "d").await.unwrap().map(|v| v.engine_name), Some("shepherd-vol-a-b-d".into()));
    assert!(store.get_volume("a-b", "b-c").await.unwrap().is_none(), "another project's volume is invisible");
    // Bound once: the first node stays.
    assert_eq!(store.bind_volume("a", "b-c", "n1").await.unwrap(), Some("n1".into()));
    assert_eq!(store.bind_volume("a", "b-c", "n2").await.unwrap(), Some("n1".into()));
    assert_eq!(store.get_volume("a", "b-c").await.unwrap().unwrap().node_id, Some("n1".into()));
    assert_eq!(store.bind_volume("a", "nope", "n1").await.unwrap(), None);
    assert!(store.delete_volume("a", "b-c").await.unwrap());
    assert!(!store.delete_volume("a", "b-c").await.unwrap());
    assert!(store.volumes(Some("a".into())).await.unwrap().is_empty());

    // Policies: default closed, set whole, kept apart from limits.
    assert_eq!(store.get_project("a").await.unwrap().unwrap().policy, ProjectPolicy::default());
    let mut policy = ProjectPolicy { volume_drivers: vec!["local".into(), "nfs".into()], egress: Egress::None, ..Default::default() };
    policy.networks.insert("back".into(), NetworkSpec::bridge(true));
    assert!(store.set_project_policy("a", policy.clone()).await.unwrap());
    assert!(!store.set_project_policy("nope", policy.clone()).await.unwrap());
    assert!(store.set_project_limits("a", shepherd_core::ProjectLimits { max_volumes: Some(3), ..Default::default() }).await.unwrap());
    let a = store.get_project("a").await.unwrap().unwrap();
    assert_eq!(a.policy, policy);
    assert_eq!(a.limits.max_volumes, Some(3));
    assert_eq!(store.list_projects().await.unwrap().iter().find(|p| p.name == "a").unwrap().policy, policy);
}

/// Registry logins: a project's login answers for images of its registry
/// only, and for no other project.
pub async fn registry_logins(store: &dyn Store) {
    use shepherd_core::RegistryAuth;
    let now = Timestamp(1_000);
    for name in ["a", "b"] {
        store
            .create_project(Project { name: name.into(), created_at: now, limits: Default::default(), policy: Default::default() })
            .await
            .unwrap();
    }
    let auth = RegistryAuth { registry: "127.0.0.1:5000".into(), username: "u".into(), password: "p".into() };
    let secret = shepherd_core::registry::secret_name(&auth.registry);
    store.put_secret("a", &secret, serde_json::to_vec(&auth).unwrap(), now).await.unwrap();
    assert_eq!(store.registry_auth("a", "127.0.0.1:5000/app:1").await.unwrap(), Some(auth.clone()));
    assert_eq!(store.registry_auth("a", "127.0.0.1:5000/app@sha256:00").await.unwrap(), Some(auth));
    assert_eq!(store.registry_auth("a", "127.0.0.1:5001/app:1").await.unwrap(), None, "another registry");
    assert_eq!(store.registry_auth("a", "busybox").await.unwrap(), None, "Docker Hub");
    assert_eq!(store.registry_auth("b", "127.0.0.1:5000/app:1").await.unwrap(), None, "another project");
    assert_eq!(store.registry_login_projects().await.unwrap(), vec!["a".to_string()]);
}

/// Runs every conformance check against fresh stores from `$fixture`, an
/// async fn returning a [`Fixture`], one `#[tokio::test]` each.
#[macro_export]
macro_rules! store_conformance {
    ($fixture:path) => {
        $crate::store_conformance!(@one $fixture, create_get_and_batches);
        $crate::store_conformance!(@one $fixture, apply_every_event);
        $crate::store_conformance!(@one $fixture, reports_from_their_node);
        $crate::store_conformance!(@one $fixture, queue_pages_shares_and_shapes);
        $crate::store_conformance!(@one $fixture, lists_and_counts);
        $crate::store_conformance!(@one $fixture, logs_in_order);
        $crate::store_conformance!(@one $fixture, nodes);
        $crate::store_conformance!(@one $fixture, lookups_in_batches);
        $crate::store_conformance!(@one $fixture, tenants);
        $crate::store_conformance!(@one $fixture, audit);
        $crate::store_conformance!(@one $fixture, leases_and_fencing);
        $crate::store_conformance!(@one $fixture, node_state_fenced_by_the_lease);
        $crate::store_conformance!(@one $fixture, concurrent_creates_fail_alone);
        $crate::store_conformance!(@one $fixture, servers_and_messages);
        $crate::store_conformance!(@one $fixture, node_credentials);
        $crate::store_conformance!(@one $fixture, codes);
        $crate::store_conformance!(@one $fixture, schedules);
        $crate::store_conformance!(@one $fixture, packages_and_progress);
        $crate::store_conformance!(@one $fixture, webhooks);
        $crate::store_conformance!(@one $fixture, events);
        $crate::store_conformance!(@one $fixture, observer);
        $crate::store_conformance!(@one $fixture, queue_positions);
        $crate::store_conformance!(@one $fixture, usage);
        $crate::store_conformance!(@one $fixture, retention);
        $crate::store_conformance!(@one $fixture, machines);
        $crate::store_conformance!(@one $fixture, volumes_and_policies);
        $crate::store_conformance!(@one $fixture, registry_logins);
        $crate::store_conformance!(@one $fixture, workflow_dependencies);
        $crate::store_conformance!(@one $fixture, workflow_cascade);
        $crate::store_conformance!(@one $fixture, workflow_arrays);
        $crate::store_conformance!(@one $fixture, workflow_array_dependencies);
        $crate::store_conformance!(@one $fixture, workflow_arrays_beyond_the_window);
        $crate::store_conformance!(@one $fixture, history_pages);
        $crate::store_conformance!(@one $fixture, idempotency_keys);
        $crate::store_conformance!(@one $fixture, retry_rules);
        $crate::store_conformance!(@one $fixture, results_and_inputs);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_writers() {
            let fixture = $fixture().await;
            $crate::conformance::concurrent_writers(fixture.store.clone()).await;
        }
    };
    (@one $fixture:path, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let fixture = $fixture().await;
            $crate::conformance::$check(fixture.store.as_ref()).await;
        }
    };
}

//! The SQLite store against real database files: the conformance suite
//! every store passes, and what is particular to SQLite (a file reopened).

use shepherd_core::{validate, Limits, NewTask, TaskId, TaskSpec, TaskState, Timestamp};
use shepherd_store::conformance::Fixture;
use shepherd_store::*;
use std::sync::Arc;

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default()).unwrap();
    Fixture { store: Arc::new(store), keep: Box::new(dir) }
}

shepherd_store::store_conformance!(fixture);

#[tokio::test]
async fn tasks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let task: NewTask =
        validate(TaskSpec::new("busybox", vec!["true".into()]), &Limits::default(), TaskId::generate(&mut gen, now), now).unwrap();
    {
        let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default()).unwrap();
        store.create_tasks(vec![task.clone()]).await.unwrap();
    }
    let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default()).unwrap();
    assert_eq!(store.get_task(task.id).await.unwrap().unwrap().state, TaskState::Queued);
}

/// Placement shapes are keyed by a secret each database makes once and
/// keeps: the same spec has the same shape after a reopen, another
/// database's shapes differ, and the stored shape is the keyed one.
#[tokio::test]
async fn shape_keys_are_per_database_and_kept() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let task = validate(TaskSpec::new("busybox", vec!["true".into()]), &Limits::default(), TaskId::generate(&mut gen, now), now).unwrap();
    let spec = task.spec.clone();
    let first = {
        let store = SqliteStore::open(one.path().join("state.db"), SqliteOptions::default()).unwrap();
        store.create_tasks(vec![task]).await.unwrap();
        let page = store.queued_tasks(now, QueueQuery { limit: 10, projects: None, skip_shapes: vec![] }).await.unwrap();
        assert_eq!(page.tasks[0].shape, spec.placement_shape(store.shape_key()), "the stored shape is the keyed one");
        spec.placement_shape(store.shape_key())
    };
    let again = SqliteStore::open(one.path().join("state.db"), SqliteOptions::default()).unwrap();
    assert_eq!(spec.placement_shape(again.shape_key()), first, "the key outlives the process");
    let other = SqliteStore::open(two.path().join("state.db"), SqliteOptions::default()).unwrap();
    assert_ne!(spec.placement_shape(other.shape_key()), first, "another cluster has another key");
}

/// An array's children are rows only as the queue reaches them: creating
/// 2.5 windows of them writes one window; placing children of its last
/// half makes the next; a cancel makes none of the rest.
#[tokio::test]
async fn array_children_are_made_as_the_queue_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let window = ARRAY_WINDOW;
    let n = window * 2 + window / 2;
    let now = Timestamp::now();
    let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
    spec.array = Some(shepherd_core::ArraySpec { size: n, parallelism: None, failure_policy: Default::default() });
    let task = validate(spec, &Limits::default(), TaskId::generate(&mut ulid::Generator::new(), now), now).unwrap();
    let array = NewArray {
        id: task.id,
        created_at: now,
        spec: task.spec,
        payload: None,
        children: Children::all(TaskId::block(now), n),
        retry_of: None,
    };
    let id = array.id.to_string();
    let submission = Submission { entries: vec![Entry::Array(array)], audit: Vec::new(), batch: false, idempotency: None };
    store.submit(submission).await.unwrap();
    let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows = || -> u32 { db.query_row("SELECT COUNT(*) FROM tasks WHERE array_id = ?1", [&id], |r| r.get(0)).unwrap() };
    assert_eq!(rows(), window, "one window at creation");
    // Place children 0..6000 (the last half of the window starts at 5000).
    for _ in 0..6 {
        let page = store.queued_tasks(Timestamp::now(), QueueQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let events = page.tasks.iter().map(|t| (t.id, shepherd_core::Event::Schedule { node_id: "n1".into() })).collect();
        assert!(store.apply(events, Timestamp::now()).await.unwrap().iter().all(Result::is_ok));
    }
    assert_eq!(rows(), window / 2 + window, "placing child 5,000 made up to 15,000");
    let status = store.get_array(&id).await.unwrap().unwrap();
    assert_eq!((status.counts["scheduled"], status.counts["queued"]), (6_000, u64::from(n) - 6_000));
    store.cancel_array(None, &id, Timestamp::now()).await.unwrap().unwrap();
    assert_eq!(rows(), window / 2 + window, "a cancel makes nothing");
    let status = store.get_array(&id).await.unwrap().unwrap();
    assert_eq!((status.counts["scheduled"], status.counts["cancelled"]), (6_000, u64::from(n) - 6_000), "{status:?}");
}

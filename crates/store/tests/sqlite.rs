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

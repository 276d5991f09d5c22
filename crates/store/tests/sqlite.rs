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

//! The SQLite store against a real database file.

use shepherd_core::{validate, Event, Limits, NewTask, TaskId, TaskSpec, TaskState, Timestamp};
use shepherd_store::*;

fn new_task(gen: &mut ulid::Generator, label: &str) -> NewTask {
    let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
    spec.labels.insert("group".into(), label.into());
    let now = Timestamp::now();
    validate(spec, &Limits::default(), TaskId::generate(gen, now), now).unwrap()
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default()).unwrap()
}

#[tokio::test]
async fn tasks_survive_reopen_and_list_pages_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut gen = ulid::Generator::new();
    let tasks: Vec<NewTask> = (0..25).map(|i| new_task(&mut gen, if i % 2 == 0 { "even" } else { "odd" })).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    {
        let store = open(&dir);
        store.create_tasks(tasks).await.unwrap();
    }
    let store = open(&dir);
    let task = store.get_task(ids[3]).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Queued);
    assert_eq!(task.labels["group"], "odd");

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
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let even =
        store.list_tasks(TaskFilter { labels: vec![("group".into(), "even".into())], limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(even.tasks.len(), 13);
}

#[tokio::test]
async fn a_batch_with_a_duplicate_id_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut gen = ulid::Generator::new();
    let a = new_task(&mut gen, "x");
    let b = new_task(&mut gen, "x");
    store.create_tasks(vec![a.clone()]).await.unwrap();
    let err = store.create_tasks(vec![b.clone(), a.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(id) if id == a.id));
    assert!(store.get_task(b.id).await.unwrap().is_none());
}

#[tokio::test]
async fn lifecycle_events_are_persisted_and_stale_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut gen = ulid::Generator::new();
    let task = new_task(&mut gen, "x");
    let id = task.id;
    store.create_tasks(vec![task]).await.unwrap();
    let now = Timestamp::now();
    let queued = store.queued_tasks(now, QueueQuery { limit: 10, ..Default::default() }).await.unwrap().tasks;
    assert_eq!(queued.len(), 1);

    let results = store.apply(vec![(id, Event::Schedule { node_id: "n1".into() })], now).await.unwrap();
    let applied = results[0].as_ref().unwrap();
    assert_eq!((applied.from, applied.decision.to, applied.attempt), (TaskState::Queued, TaskState::Scheduled, 1));
    assert!(store.queued_tasks(now, QueueQuery { limit: 10, ..Default::default() }).await.unwrap().tasks.is_empty());
    assert_eq!(store.active_tasks().await.unwrap().len(), 1);

    store.apply(vec![(id, Event::Start { attempt: 1, at: None })], now).await.unwrap()[0].as_ref().unwrap();
    let stale = store.apply(vec![(id, Event::Exit { attempt: 7, code: 0, oom_killed: false, at: None })], now).await.unwrap();
    assert!(matches!(stale[0], Err(ApplyError::Illegal(_))));
    store.apply(vec![(id, Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None })], now).await.unwrap()[0].as_ref().unwrap();

    let task = store.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Succeeded);
    assert_eq!(task.exit_code, Some(0));
    assert_eq!(task.attempts.len(), 1);
    assert_eq!(task.attempts[0].node_id, "n1");
    assert!(task.finished_at.is_some());
    let again = store.apply(vec![(id, Event::Cancel)], now).await.unwrap();
    assert!(matches!(again[0], Err(ApplyError::Illegal(_))));
    let missing = store.apply(vec![(TaskId(ulid::Ulid::new()), Event::Cancel)], now).await.unwrap();
    assert!(matches!(missing[0], Err(ApplyError::NotFound(_))));
}

#[tokio::test]
async fn logs_are_read_back_in_order_after_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = TaskId(ulid::Ulid::new());
    let chunk = |text: &str| LogChunk { task_id: id, attempt: 1, stream: LogStream::Stdout, data: text.as_bytes().to_vec() };
    store.append_logs(vec![chunk("a"), chunk("b")]).await.unwrap();
    store.append_logs(vec![chunk("c")]).await.unwrap();
    let all = store.read_logs(id, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|c| c.data.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let rest = store.read_logs(id, all[0].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
}

#[tokio::test]
async fn the_queue_reads_in_pages_after_a_cursor_and_skips_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let make = |gen: &mut ulid::Generator, cpu: u32, priority: i32| {
        let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
        spec.resources.cpu_millicores = cpu;
        spec.priority = priority;
        validate(spec, &Limits::default(), TaskId::generate(gen, now), now).unwrap()
    };
    // 20 big tasks at priority 5, then 20 at priority 0, then one small one at priority 0.
    let mut tasks: Vec<NewTask> = (0..20).map(|_| make(&mut gen, 9000, 5)).collect();
    tasks.extend((0..20).map(|_| make(&mut gen, 9000, 0)));
    let small = make(&mut gen, 100, 0);
    tasks.push(small.clone());
    store.create_tasks(tasks.clone()).await.unwrap();
    let big_shape = tasks[0].spec.placement_shape();

    let first = store.queued_tasks(now, QueueQuery { limit: 16, ..Default::default() }).await.unwrap();
    let ids: Vec<TaskId> = first.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, tasks[..16].iter().map(|t| t.id).collect::<Vec<_>>(), "priority first, then age");
    assert!(first.tasks.iter().all(|t| t.shape == big_shape));
    let cursor = first.more["default"];
    // After the cursor: the rest of priority 5, then priority 0.
    let projects = Some([("default".to_string(), Some(cursor))].into_iter().collect());
    let second = store.queued_tasks(now, QueueQuery { limit: 16, projects, skip_shapes: vec![] }).await.unwrap();
    let ids: Vec<TaskId> = second.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, tasks[16..32].iter().map(|t| t.id).collect::<Vec<_>>());
    // Skipping the big shape finds the small task at once, and nothing is left after it.
    let skipped = store.queued_tasks(now, QueueQuery { limit: 16, projects: None, skip_shapes: vec![big_shape] }).await.unwrap();
    assert_eq!(skipped.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![small.id]);
    assert!(skipped.more.is_empty());
}

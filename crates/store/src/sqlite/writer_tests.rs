//! The single writer's group commit, on a database of its own: requests
//! that share a savepoint, and one that fails among them.

use super::writer::{commit_group, WriteOp};
use rusqlite::Connection;
use shepherd_core::shape::ShapeKey;
use shepherd_core::TaskSpec;
use shepherd_core::{NewTask, TaskId, Timestamp};
use tokio::sync::oneshot;

fn task(id: TaskId) -> NewTask {
    NewTask { id, created_at: Timestamp(1_000), spec: TaskSpec::new("busybox", vec!["true".into()]), payload: None }
}

/// The schema in a fresh database, and its shape key.
fn schema_and_key(conn: &mut Connection) -> ShapeKey {
    super::schema::migrate(conn).expect("schema");
    let value: String = conn.query_row("SELECT value FROM cluster_meta WHERE key = ?1", [crate::SHAPE_KEY], |r| r.get(0)).expect("key");
    crate::shape_key_from(&value).expect("a key")
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get(0)).unwrap_or(-1)
}

/// A group of creates shares one savepoint; one that fails (a
/// duplicate id) is undone alone, and the others are committed, before
/// and after it, with their events.
#[test]
fn a_failed_request_undoes_only_its_own_work_in_a_shared_savepoint() {
    let mut conn = Connection::open_in_memory().expect("memory database");
    let key = schema_and_key(&mut conn);
    let mut gen = ulid::Generator::new();
    let mut id = || TaskId(gen.generate().expect("ulid"));
    let (a, b, c) = (id(), id(), id());
    let mut replies = Vec::new();
    let mut group = Vec::new();
    for tasks in [vec![task(a)], vec![task(b), task(a)], vec![task(c)]] {
        let (tx, rx) = oneshot::channel();
        group.push(WriteOp::Create(tasks, tx));
        replies.push(rx);
    }
    let created = commit_group(&mut conn, group, &key);
    let answers: Vec<bool> = replies.into_iter().map(|mut rx| matches!(rx.try_recv(), Ok(Ok(())))).collect();
    assert_eq!(answers, vec![true, false, true], "only the request with the duplicate fails");
    assert_eq!(count(&conn), 2, "its first task (b) is undone with it; a and c stay");
    assert_eq!(created.iter().map(|(_, n)| n).sum::<u64>(), 2);
    let events: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).expect("events");
    assert_eq!(events, 1, "the group's events in one row");
    let body: String = conn.query_row("SELECT body FROM events", [], |r| r.get(0)).expect("body");
    assert!(body.contains(&a.to_string()) && body.contains(&c.to_string()) && !body.contains(&b.to_string()), "{body}");
}

/// The shared savepoint still answers every request of a clean group.
#[test]
fn a_clean_group_commits_every_request() {
    let mut conn = Connection::open_in_memory().expect("memory database");
    let key = schema_and_key(&mut conn);
    let mut gen = ulid::Generator::new();
    let mut replies = Vec::new();
    let mut group = Vec::new();
    for _ in 0..50 {
        let (tx, rx) = oneshot::channel();
        group.push(WriteOp::Create(vec![task(TaskId(gen.generate().expect("ulid")))], tx));
        replies.push(rx);
    }
    commit_group(&mut conn, group, &key);
    assert!(replies.into_iter().all(|mut rx| matches!(rx.try_recv(), Ok(Ok(())))));
    assert_eq!(count(&conn), 50);
}

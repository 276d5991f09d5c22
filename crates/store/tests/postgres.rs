//! The PostgreSQL store against a real server: the same conformance suite
//! as SQLite's, each check in a fresh database. The server's URL comes
//! from `SHEPHERD_TEST_POSTGRES` (`scripts/test.sh` starts a throwaway one
//! with `scripts/postgres.sh`).

use shepherd_store::conformance::Fixture;
use shepherd_store::{PgStore, Store, StoreError};
use std::sync::Arc;

/// The test server's URL; a clear failure without one.
pub fn server_url() -> String {
    std::env::var("SHEPHERD_TEST_POSTGRES")
        .expect("SHEPHERD_TEST_POSTGRES must name a PostgreSQL server: run scripts/test.sh, or start one with scripts/postgres.sh")
}

/// A new, empty database on the test server; its URL.
pub async fn fresh_database() -> String {
    let url = server_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    let name = format!("shepherd_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    client.execute(&format!("CREATE DATABASE {name}"), &[]).await.expect("create a test database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

async fn fixture() -> Fixture {
    let store = PgStore::connect(&fresh_database().await, 8).await.expect("connect the store");
    Fixture { store: Arc::new(store), keep: Box::new(()) }
}

shepherd_store::store_conformance!(fixture);

#[tokio::test]
async fn a_second_store_on_the_same_database_finds_it_migrated_and_shares_it() {
    let url = fresh_database().await;
    let (a, b) = tokio::join!(PgStore::connect(&url, 4), PgStore::connect(&url, 4));
    let (a, b) = (a.unwrap(), b.unwrap());
    let project = shepherd_store::Project {
        name: "p".into(),
        created_at: shepherd_core::Timestamp::now(),
        limits: Default::default(),
        policy: Default::default(),
    };
    assert!(a.create_project(project).await.unwrap());
    assert_eq!(b.list_projects().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_url_or_a_missing_server_is_a_clear_error() {
    let err = PgStore::connect("not a url", 2).await.err().expect("refused");
    assert!(matches!(err, StoreError::Unavailable(_)) && err.to_string().contains("not a PostgreSQL URL"), "{err}");
    let err = PgStore::connect("postgres://shepherd:secret@127.0.0.1:1/nowhere", 2).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("cannot connect to PostgreSQL at postgres://shepherd:***@127.0.0.1:1/nowhere"), "{text}");
    assert!(!text.contains("secret"), "the password is never shown: {text}");
}

#[tokio::test]
async fn a_database_from_a_newer_shepherd_is_refused() {
    let url = fresh_database().await;
    drop(PgStore::connect(&url, 2).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)", &[]).await.unwrap();
    let err = PgStore::connect(&url, 2).await.err().expect("refused");
    assert!(matches!(err, StoreError::NewerSchema { found: 999, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_size_and_statement_timeout_are_the_servers_to_choose() {
    use shepherd_store::postgres::PgOptions;
    let url = fresh_database().await;
    let options = PgOptions { max_connections: 2, statement_timeout: Some(std::time::Duration::from_millis(1500)) };
    let store = PgStore::connect_with(&url, options).await.unwrap();
    assert_eq!(store.setting("statement_timeout").await.unwrap(), "1500ms");
    assert!(store.setting("statement_timeout; DROP TABLE tasks").await.is_err());
    // More callers than connections: they wait, and the waits are counted.
    let store = std::sync::Arc::new(store);
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store.list_nodes().await.unwrap();
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let status = Store::pool_status(store.as_ref()).expect("a pool");
    assert_eq!(status.max, 2);
    assert!(status.open <= 2, "{status:?}");
    assert!(status.waits > 0 && status.waited_seconds > 0.0, "{status:?}");
    // A URL's own setting wins; `None` leaves PostgreSQL's default (no limit).
    let own = format!("{url}?options=-c%20statement_timeout%3D2500");
    let store = PgStore::connect_with(&own, PgOptions::default()).await.unwrap();
    assert_eq!(store.setting("statement_timeout").await.unwrap(), "2500ms");
    let store = PgStore::connect_with(&url, PgOptions { statement_timeout: None, ..PgOptions::default() }).await.unwrap();
    assert_eq!(store.setting("statement_timeout").await.unwrap(), "0");
}

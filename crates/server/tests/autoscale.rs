//! The autoscaler against the provisioner seam's fake, on a real SQLite
//! store, round by round (no clock to wait for but the backoff's): what
//! it makes for a queue, what it leaves alone, failures and backoff, join
//! timeouts, and reconciling the store with the provider's list.

use shepherd_core::{validate, Limits, MachineState, TaskId, TaskSpec, Timestamp};
use shepherd_provision::fake::FakeProvisioner;
use shepherd_provision::{ProviderMachine, Provisioner};
use shepherd_server::loops::autoscale::config::AutoscaleConfig;
use shepherd_server::loops::autoscale::{AutoscaleParts, Autoscaler};
use shepherd_store::{SqliteOptions, SqliteStore, Store};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct NoLinks;

impl shepherd_server::nodes::links::NodeLinks for NoLinks {
    fn assign(&self, _: &str, _: shepherd_core::LaunchSpec) -> bool {
        true
    }
    fn cancel(&self, _: &str, _: TaskId) {}
}

struct Setup {
    store: Arc<dyn Store>,
    fake: Arc<FakeProvisioner>,
    autoscaler: Arc<Autoscaler>,
    notes: Arc<shepherd_server::placement_notes::PlacementNotes>,
    _dir: tempfile::TempDir,
}

async fn setup(fake: FakeProvisioner, pool: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("db"), SqliteOptions::default()).unwrap());
    let (fake, autoscaler, notes) = autoscaler_on(store.clone(), fake, pool).await;
    Setup { store, fake, autoscaler, notes, _dir: dir }
}

/// An autoscaler (a server's) over `store`, leading it.
async fn autoscaler_on(
    store: Arc<dyn Store>,
    fake: FakeProvisioner,
    pool: &str,
) -> (Arc<FakeProvisioner>, Arc<Autoscaler>, Arc<shepherd_server::placement_notes::PlacementNotes>) {
    let leadership = shepherd_server::loops::leader::Leadership::new("s1".into(), Duration::from_secs(30));
    leadership.round(store.as_ref()).await;
    assert!(leadership.is_leader());
    let text = format!(
        r#"
        [provisioners.fake]
        driver = "exec"
        command = ["unused"]
        [pools.burst]
        provisioner = "fake"
        {pool}
        "#
    );
    let config = AutoscaleConfig::parse(&text).unwrap();
    let notes = Arc::new(shepherd_server::placement_notes::PlacementNotes::default());
    let parts = AutoscaleParts {
        store: store.clone(),
        view: Arc::new(shepherd_server::nodes::view::ClusterView::default()),
        engine: shepherd_sched::SharedEngine::default(),
        leadership,
        links: Arc::new(NoLinks),
        notes: notes.clone(),
        metrics: Arc::new(shepherd_server::metrics::Metrics::new()),
        wakeup: Arc::new(tokio::sync::Notify::new()),
    };
    let fake = Arc::new(fake);
    let provisioners: BTreeMap<String, Arc<dyn Provisioner>> = BTreeMap::from([("fake".to_string(), fake.clone() as Arc<dyn Provisioner>)]);
    let autoscaler = Autoscaler::with_provisioners(config, parts, "http://127.0.0.1:1", provisioners).await.unwrap();
    (fake, autoscaler, notes)
}

async fn queue(store: &dyn Store, n: usize, cpu: u32, memory: u32) -> Vec<TaskId> {
    let mut gen = ulid::Generator::new();
    let now = Timestamp::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
            spec.pool = Some("burst".into());
            spec.resources = shepherd_core::Resources { cpu_millicores: cpu, memory_mib: memory };
            validate(spec, &Limits::default(), TaskId::generate(&mut gen, now), now).unwrap()
        })
        .collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    store.create_tasks(tasks).await.unwrap();
    ids
}

/// Lets the background creates and destroys finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn states(store: &dyn Store) -> Vec<MachineState> {
    store.machines().await.unwrap().into_iter().map(|m| m.state).collect()
}

const SHAPE: &str = "max = 5\ncpu_millicores = 2000\nmemory_mib = 4096\nmax_tasks = 20";

#[tokio::test]
async fn makes_what_the_queue_needs_once_and_says_so() {
    let s = setup(FakeProvisioner::default(), SHAPE).await;
    let ids = queue(s.store.as_ref(), 45, 100, 64).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 3, "45 tasks at 20 per machine");
    let machines = s.store.machines().await.unwrap();
    assert!(machines.iter().all(|m| m.state == MachineState::Creating && m.provider_id.is_some() && m.provisioned_at.is_some()));
    // The requests carry the shape, the labels and a token only the hash of which is stored.
    let requests = s.fake.requests.lock().unwrap().clone();
    assert_eq!(requests[0].labels["pool"], "burst");
    assert_eq!(requests[0].shape.max_tasks, 20);
    assert!(machines.iter().all(|m| m.join_token_sha256
        == shepherd_server::service::auth::hash_token(&requests.iter().find(|r| r.machine_id == m.id).unwrap().join_token)));
    // Machines being made count: the next rounds make nothing more.
    s.autoscaler.clone().round().await.unwrap();
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 3);
    let mut task = s.store.get_task(ids[0]).await.unwrap().unwrap();
    s.notes.annotate(&mut task, s.store.shape_key());
    assert!(task.reason.unwrap().contains("autoscaler: a new machine of pool burst is being made for it"));
}

#[tokio::test]
async fn never_more_than_max_and_nothing_for_what_fits_no_shape() {
    let s = setup(FakeProvisioner::default(), SHAPE).await;
    queue(s.store.as_ref(), 200, 100, 64).await;
    let huge = queue(s.store.as_ref(), 1, 100, 100_000).await;
    for _ in 0..3 {
        s.autoscaler.clone().round().await.unwrap();
        settle().await;
    }
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 4, "max_creating 4 of max 5 at once");
    let mut task = s.store.get_task(huge[0]).await.unwrap().unwrap();
    s.notes.annotate(&mut task, s.store.shape_key());
    let reason = task.reason.unwrap();
    assert!(reason.contains("no autoscaled pool's machine could ever run it") && reason.contains("memory"), "{reason}");
}

#[tokio::test]
async fn failed_creates_back_off_then_succeed() {
    let s = setup(FakeProvisioner::failing(2), &format!("{SHAPE}\nscale_up_cooldown = \"0s\"")).await;
    queue(s.store.as_ref(), 5, 100, 64).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(states(s.store.as_ref()).await, [MachineState::Failed]);
    // The failed machine is destroyed; the pool backs off for 1 s.
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert!(s.store.machines().await.unwrap().is_empty());
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 1, "backing off");
    let status = s.autoscaler.status().await.unwrap();
    assert_eq!((status[0].failures, status[0].failing), (1, false));
    assert!(status[0].backoff_until.is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(s.fake.creates.load(Ordering::SeqCst), 3);
    assert_eq!(states(s.store.as_ref()).await, [MachineState::Creating], "the third create worked");
    assert_eq!(s.fake.held(s.autoscaler.cluster()).len(), 1);
}

#[tokio::test]
async fn a_machine_that_never_joins_is_failed_and_destroyed() {
    let s = setup(FakeProvisioner::default(), &format!("{SHAPE}\njoin_timeout = \"300ms\"")).await;
    queue(s.store.as_ref(), 1, 100, 64).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert_eq!(s.fake.held(s.autoscaler.cluster()).len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.autoscaler.clone().round().await.unwrap();
    let failed = s.store.machines().await.unwrap();
    assert_eq!(failed[0].state, MachineState::Failed);
    assert!(failed[0].error.as_deref().unwrap_or_default().contains("did not join"), "{failed:?}");
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert!(s.fake.held(s.autoscaler.cluster()).is_empty(), "destroyed at the provider");
    assert_eq!(s.fake.destroys.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reconcile_destroys_unknown_machines_and_keeps_creates_in_flight() {
    let s = setup(FakeProvisioner::default(), SHAPE).await;
    let cluster = s.autoscaler.cluster().to_string();
    // A machine the provider holds but the store never knew.
    let orphan = shepherd_provision::conformance::request(&cluster, "m-orphan");
    s.fake.create(&orphan).await.unwrap();
    // A machine recorded creating that the provider does not list (yet).
    queue(s.store.as_ref(), 1, 100, 64).await;
    *s.fake.create_delay.lock().unwrap() = Duration::from_secs(5);
    s.autoscaler.clone().round().await.unwrap();
    s.autoscaler.reconcile().await.unwrap();
    let held: Vec<String> = s.fake.held(&cluster).into_iter().map(|m| m.machine_id).collect();
    assert!(!held.contains(&"m-orphan".to_string()), "the unknown machine went: {held:?}");
    assert_eq!(states(s.store.as_ref()).await, [MachineState::Creating], "the create in flight keeps its place");
    // Another provider machine of the cluster whose record is gone: destroyed too.
    *s.fake.create_delay.lock().unwrap() = Duration::ZERO;
    let gone = ProviderMachine { machine_id: "m-gone".into(), provider_id: "x".into(), pool: None };
    s.fake.create(&shepherd_provision::conformance::request(&cluster, &gone.machine_id)).await.unwrap();
    s.autoscaler.reconcile().await.unwrap();
    assert!(s.fake.held(&cluster).iter().all(|m| m.machine_id != "m-gone"));
}

#[tokio::test]
async fn a_create_a_dead_server_began_is_resumed_by_the_next_with_the_same_token() {
    let s = setup(FakeProvisioner::default(), SHAPE).await;
    // The first server records a machine and asks its provider, which never
    // answers: as if the server died mid-create.
    *s.fake.create_delay.lock().unwrap() = Duration::from_secs(3600);
    queue(s.store.as_ref(), 1, 100, 64).await;
    s.autoscaler.clone().round().await.unwrap();
    let recorded = s.store.machines().await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].provider_id.is_none());
    // The next server (a new process: its own provisioner, nothing in
    // flight) asks for the same machine, with a token that matches the
    // stored hash, and makes nothing else.
    let (fake, next, _) = autoscaler_on(s.store.clone(), FakeProvisioner::default(), SHAPE).await;
    next.reconcile().await.unwrap();
    settle().await;
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].machine_id, recorded[0].id);
    assert_eq!(shepherd_server::service::auth::hash_token(&requests[0].join_token), recorded[0].join_token_sha256);
    let machines = s.store.machines().await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].state, MachineState::Creating);
    assert!(machines[0].provider_id.is_some(), "the resumed create's answer is recorded");
    // Asked once: a later reconcile and rounds leave it alone.
    next.reconcile().await.unwrap();
    next.clone().round().await.unwrap();
    settle().await;
    assert_eq!(fake.creates.load(Ordering::SeqCst), 1);
    let audit = s.store.list_audit(None, None, 100).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "machine.resume" && e.target == recorded[0].id), "{audit:?}");
}

#[tokio::test]
async fn a_machine_whose_node_stays_down_is_failed_and_destroyed() {
    let s = setup(FakeProvisioner::default(), &format!("{SHAPE}\njoin_timeout = \"1m\"")).await;
    queue(s.store.as_ref(), 1, 100, 64).await;
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    // Its agent joins, then its node is found down and stays silent.
    let mut machine = s.store.machines().await.unwrap().remove(0);
    let creating = machine.state;
    machine.state = MachineState::Joined;
    machine.node_id = Some("n-dead".into());
    assert!(s.store.put_machine(machine.clone(), Some(creating)).await.unwrap());
    let long_ago = Timestamp(Timestamp::now().millis() - 120_000);
    let node = |at| shepherd_store::NodeRecord {
        id: "n-dead".into(),
        hostname: "m".into(),
        state: shepherd_core::NodeState::Down,
        driver: "docker".into(),
        capacity: shepherd_core::Resources { cpu_millicores: 2000, memory_mib: 4096 },
        max_tasks: 20,
        labels: BTreeMap::from([("pool".to_string(), "burst".to_string())]),
        images: Vec::new(),
        registered_at: at,
        last_heartbeat_at: at,
    };
    // Down for a moment only: kept.
    s.store.upsert_node(node(Timestamp::now())).await.unwrap();
    s.autoscaler.clone().round().await.unwrap();
    assert_eq!(states(s.store.as_ref()).await, [MachineState::Joined]);
    // Down past the join timeout: failed, then destroyed with its node record.
    s.store.upsert_node(node(long_ago)).await.unwrap();
    s.autoscaler.clone().round().await.unwrap();
    assert_eq!(states(s.store.as_ref()).await, [MachineState::Failed]);
    s.autoscaler.clone().round().await.unwrap();
    settle().await;
    assert!(s.store.machines().await.unwrap().is_empty());
    assert!(s.store.get_node("n-dead").await.unwrap().is_none());
    assert_eq!(s.fake.destroys.load(Ordering::SeqCst), 1);
}

//! The agent's runner on a fake driver and an in-memory cluster, on tokio's
//! paused clock: timeouts, cancel, the grace period, fencing, refused
//! reports, reconcile after a restart, and shutdown. Fast and exact; the
//! real-process and real-engine versions live in `crates/cli/tests`.

use shepherd_agent::backend::memory::MemoryBackend;
use shepherd_agent::driver::fake::{FakeDriver, Script};
use shepherd_agent::{Agent, AgentConfig, AssignedAttempt, LogLimits};
use shepherd_core::{Event, LaunchSpec, TaskId, TaskSpec, TaskState};
use std::sync::Arc;
use std::time::Duration;

fn id(n: u128) -> TaskId {
    TaskId(ulid::Ulid(n))
}

fn launch(task: TaskId, attempt: u32, timeout_seconds: u32) -> LaunchSpec {
    let mut spec = TaskSpec::new("busybox", vec!["true".into()]);
    spec.project = "p".into();
    spec.timeout_seconds = timeout_seconds;
    LaunchSpec {
        id: task,
        state: TaskState::Scheduled,
        attempt,
        node_id: Some("node".into()),
        cancel_requested: false,
        spec,
        payload: None,
        attempt_started_at: None,
        secrets: Default::default(),
        volumes: Vec::new(),
        networks: Vec::new(),
        registry_auth: None,
        inputs: Default::default(),
    }
}

struct Setup {
    agent: Agent,
    backend: Arc<MemoryBackend>,
    driver: FakeDriver,
    dir: tempfile::TempDir,
}

fn setup(driver: FakeDriver, grace: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::default());
    let agent = agent_on(&dir, backend.clone(), driver.clone(), grace, false);
    Setup { agent, backend, driver, dir }
}

fn agent_on(dir: &tempfile::TempDir, backend: Arc<MemoryBackend>, driver: FakeDriver, grace: Duration, stop_on_shutdown: bool) -> Agent {
    let config = AgentConfig {
        node_id: "node".into(),
        work_dir: dir.path().join("attempts"),
        log_limits: LogLimits::default(),
        stop_grace: grace,
        stop_on_shutdown,
        image_cleanup_every: None,
    };
    Agent::new(config, backend, Arc::new(driver), Arc::new(tokio::sync::Notify::new()))
}

/// Waits (on the paused clock) until `task` has a final report; returns its reports.
async fn until_final(backend: &MemoryBackend, task: TaskId) -> Vec<Event> {
    for _ in 0..10_000 {
        let reports = backend.reports_of(task);
        if reports.iter().any(|e| !matches!(e, Event::Start { .. })) {
            return reports;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no final report for {task}: {:?}", backend.reports_of(task));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_runs_and_its_exit_and_output_are_reported() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.driver.script(id(1), Script { output: b"hello\n".to_vec(), runs_for: Some(Duration::from_secs(3)), code: 3, ..Script::default() });
    s.agent.assign_launch(launch(id(1), 1, 60));
    let reports = until_final(&s.backend, id(1)).await;
    assert!(matches!(reports[0], Event::Start { attempt: 1, at: Some(_), runtime: None }), "{reports:?}");
    assert!(matches!(reports[1], Event::Exit { attempt: 1, code: 3, oom_killed: false, at: Some(_), .. }), "{reports:?}");
    assert_eq!(s.backend.output(id(1)), b"hello\n");
    let record = s.driver.record(id(1), 1);
    assert!(record.removed && !record.killed, "{record:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.agent.running_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_stops_the_attempt_as_timed_out() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.driver.script(id(1), Script { runs_for: None, ..Script::default() });
    let started = tokio::time::Instant::now();
    s.agent.assign_launch(launch(id(1), 1, 5));
    let reports = until_final(&s.backend, id(1)).await;
    assert_eq!(reports[1], Event::TimedOut { attempt: 1, usage: None });
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(6), "{took:?}");
    assert_eq!(s.driver.record(id(1), 1).terminated, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_ends_an_obedient_attempt_at_once_and_a_deaf_one_after_the_grace() {
    let s = setup(FakeDriver::new(), Duration::from_secs(30));
    s.driver.script(id(1), Script { runs_for: None, ..Script::default() });
    s.driver.script(id(2), Script { runs_for: None, obeys_sigterm: false, ..Script::default() });
    s.agent.assign_launch(launch(id(1), 1, 3600));
    s.agent.assign_launch(launch(id(2), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = tokio::time::Instant::now();
    s.agent.cancel(id(1));
    s.agent.cancel(id(2));
    assert_eq!(until_final(&s.backend, id(1)).await[1], Event::Cancelled { attempt: 1, usage: None });
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(until_final(&s.backend, id(2)).await[1], Event::Cancelled { attempt: 1, usage: None });
    assert!(asked.elapsed() >= Duration::from_secs(30), "SIGKILL only after the grace: {:?}", asked.elapsed());
    let deaf = s.driver.record(id(2), 1);
    assert!(deaf.killed && deaf.terminated == 2, "SIGTERM twice, then SIGKILL: {deaf:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_start_report_kills_the_attempt_and_fencing_reports_nothing() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    // Given away before its start report arrived: it must not run on.
    s.driver.script(id(1), Script { runs_for: None, ..Script::default() });
    s.backend.refuse(id(1));
    s.agent.assign_launch(launch(id(1), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.driver.record(id(1), 1).killed);
    assert!(s.driver.record(id(1), 1).removed, "its container is not left behind");
    assert_eq!(s.backend.reports_of(id(1)).len(), 1, "only the refused start");
    // Fenced while running: killed, and no report at all.
    s.driver.script(id(2), Script { runs_for: None, ..Script::default() });
    s.agent.assign_launch(launch(id(2), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.agent.fence(id(2));
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(s.driver.record(id(2), 1).ended);
    assert!(s.driver.record(id(2), 1).removed);
    assert_eq!(s.backend.reports_of(id(2)).len(), 1, "the start only: {:?}", s.backend.reports_of(id(2)));
    assert_eq!(s.agent.running_count(), 0);
    // A newer attempt of a task fences the older one.
    s.driver.script(id(3), Script { runs_for: None, ..Script::default() });
    s.agent.assign_launch(launch(id(3), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.agent.assign_launch(launch(id(3), 2, 3600));
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(s.driver.record(id(3), 1).ended);
    assert!(!s.backend.reports_of(id(3)).iter().any(|e| matches!(e, Event::Cancelled { attempt: 1, .. })));
}

#[tokio::test(start_paused = true)]
async fn start_failures_are_reported_with_the_driver_s_reason() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.driver.script(id(1), Script { start_fails: Some("image `x` is not on this node".into()), ..Script::default() });
    s.agent.assign_launch(launch(id(1), 1, 60));
    let reports = until_final(&s.backend, id(1)).await;
    assert_eq!(reports, vec![Event::StartFailed { attempt: 1, reason: "image `x` is not on this node".into() }]);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_survivors_are_adopted_the_missing_lost_and_the_unowned_removed() {
    let driver = FakeDriver::surviving();
    let s = setup(driver.clone(), Duration::from_secs(10));
    for n in [1, 2] {
        driver.script(id(n), Script { runs_for: Some(Duration::from_secs(60)), code: 0, ..Script::default() });
        s.agent.assign_launch(launch(id(n), 1, 3600));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A clean stop leaves both running for adoption.
    assert_eq!(s.agent.shutdown().await, 2);
    assert_eq!(driver.running(), 2);
    // The next agent: the cluster still has task 1 here, and task 3 (gone from the engine); not task 2.
    let backend = Arc::new(MemoryBackend::default());
    backend.add_launch(launch(id(1), 1, 3600));
    let running = |n| AssignedAttempt { task_id: id(n), attempt: 1, state: TaskState::Running, cancel_requested: false };
    backend.set_assigned(vec![running(1), running(3)]);
    let agent = agent_on(&s.dir, backend.clone(), driver.clone(), Duration::from_secs(10), false);
    agent.reconcile().await.unwrap();
    assert!(driver.record(id(2), 1).removed, "not ours any more: removed");
    assert!(matches!(backend.reports_of(id(3))[..], [Event::Lost { attempt: 1, .. }]), "{:?}", backend.reports_of(id(3)));
    let reports = until_final(&backend, id(1)).await;
    assert!(matches!(reports[..], [Event::Exit { attempt: 1, code: 0, .. }]), "adopted and finished: {reports:?}");
}

#[tokio::test(start_paused = true)]
async fn stop_on_shutdown_stops_even_surviving_attempts() {
    let driver = FakeDriver::surviving();
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::default());
    let agent = agent_on(&dir, backend.clone(), driver.clone(), Duration::from_secs(10), true);
    driver.script(id(1), Script { runs_for: None, ..Script::default() });
    agent.assign_launch(launch(id(1), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agent.shutdown().await, 0);
    assert_eq!(backend.reports_of(id(1))[1], Event::Interrupted { attempt: 1 });
    assert_eq!(driver.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_delivers_a_cancel_whose_message_was_lost() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.driver.script(id(1), Script { runs_for: None, ..Script::default() });
    s.agent.assign_launch(launch(id(1), 1, 3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The cluster recorded the cancel; its message never reached the agent.
    s.backend.set_assigned(vec![AssignedAttempt { task_id: id(1), attempt: 1, state: TaskState::Running, cancel_requested: true }]);
    s.agent.reconcile().await.unwrap();
    let reports = until_final(&s.backend, id(1)).await;
    assert_eq!(reports[1], Event::Cancelled { attempt: 1, usage: None }, "{reports:?}");
}

#[tokio::test(start_paused = true)]
async fn reports_no_server_took_are_sent_again_at_the_next_reconcile_in_order() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.driver.script(id(1), Script { runs_for: Some(Duration::from_secs(3)), code: 4, ..Script::default() });
    s.agent.assign_launch(launch(id(1), 1, 60));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Started and heard; then no server answers while it ends.
    s.backend.set_unreachable(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(s.backend.reports_of(id(1))[..], [Event::Start { .. }]), "{:?}", s.backend.reports_of(id(1)));
    s.backend.set_unreachable(false);
    s.backend.set_assigned(vec![AssignedAttempt { task_id: id(1), attempt: 1, state: TaskState::Running, cancel_requested: false }]);
    s.agent.reconcile().await.unwrap();
    // Sent before the cluster's state is read (this fake's list stays as
    // set, so what the reconcile does next does not count here).
    let reports = s.backend.reports_of(id(1));
    assert!(matches!(reports[..2], [Event::Start { attempt: 1, .. }, Event::Exit { attempt: 1, code: 4, .. }]), "{reports:?}");
    s.backend.set_assigned(Vec::new());

    // One whose start no server heard is stopped; the cluster, still
    // waiting for it to start, hears it lost rather than waiting for ever.
    s.backend.set_unreachable(true);
    s.driver.script(id(2), Script { runs_for: Some(Duration::from_secs(3)), ..Script::default() });
    s.agent.assign_launch(launch(id(2), 1, 60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.backend.set_unreachable(false);
    assert!(s.backend.reports_of(id(2)).is_empty());
    s.backend.set_assigned(vec![AssignedAttempt { task_id: id(2), attempt: 1, state: TaskState::Scheduled, cancel_requested: false }]);
    s.agent.reconcile().await.unwrap();
    let reports = s.backend.reports_of(id(2));
    assert!(matches!(reports[..], [Event::Lost { attempt: 1, .. }]), "{reports:?}");
}

#[tokio::test(start_paused = true)]
async fn a_late_copy_of_an_assignment_that_already_ran_here_is_ignored() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    s.agent.assign_launch(launch(id(1), 1, 60));
    let reports = until_final(&s.backend, id(1)).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    // A server frozen after sending it flushes the same assignment, its
    // launch spec still saying "scheduled".
    s.agent.assign_launch(launch(id(1), 1, 60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.backend.reports_of(id(1)).len(), 2, "ran once: {:?}", s.backend.reports_of(id(1)));
}

#[tokio::test(start_paused = true)]
async fn an_assignment_read_before_its_attempt_ended_does_not_run_it_again() {
    let s = setup(FakeDriver::new(), Duration::from_secs(10));
    // The attempt ran and ended; a reconcile that read "scheduled" just
    // before asks for it again. The launch spec now says it is over.
    let mut over = launch(id(1), 1, 60);
    over.state = TaskState::Succeeded;
    s.backend.add_launch(over);
    s.agent.assign(id(1), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(s.backend.reports_of(id(1)).is_empty(), "{:?}", s.backend.reports_of(id(1)));
    assert!(!s.driver.record(id(1), 1).started, "never started again");
    // A newer attempt still waiting for its start does start.
    s.backend.add_launch(launch(id(1), 2, 60));
    s.agent.assign(id(1), 2);
    let reports = until_final(&s.backend, id(1)).await;
    assert!(matches!(reports[..], [Event::Start { attempt: 2, .. }, Event::Exit { attempt: 2, code: 0, .. }]), "{reports:?}");
}

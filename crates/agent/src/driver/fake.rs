//! A driver with no processes or containers, for fast tests of the agent
//! (timeouts, cancel, fencing, reconcile) and of anything built on it.
//! Each attempt follows a [`Script`]: some output, then it exits after a
//! (tokio) delay, or runs until stopped; it may ignore SIGTERM. Attempts
//! can be made to "survive" an agent restart and be recovered.

use super::seam::{AttemptHandle, Driver};
use super::spec::{AttemptSpec, Captured, DriverError, ExitStatus, OutputChunk, OutputSender};
use async_trait::async_trait;
use shepherd_core::{LogStream, TaskId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a fake attempt does.
#[derive(Debug, Clone)]
pub struct Script {
    /// Written to stdout at once.
    pub output: Vec<u8>,
    /// Exits with `code` after this long; `None`: runs until stopped.
    pub runs_for: Option<Duration>,
    pub code: i32,
    /// SIGTERM stops it (exit 143); if false only SIGKILL does (137).
    pub obeys_sigterm: bool,
    /// Refuses to start, with this reason.
    pub start_fails: Option<String>,
}

impl Default for Script {
    fn default() -> Script {
        Script { output: Vec::new(), runs_for: Some(Duration::ZERO), code: 0, obeys_sigterm: true, start_fails: None }
    }
}

/// What happened to a fake attempt, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    pub started: bool,
    pub terminated: u32,
    pub killed: bool,
    pub removed: bool,
    /// It ended (by itself or stopped).
    pub ended: bool,
}

#[derive(Default)]
struct State {
    scripts: HashMap<TaskId, Script>,
    /// For tasks without a script of their own.
    default_script: Option<Script>,
    records: HashMap<(TaskId, u32), Record>,
    /// Attempts still "running" when the agent goes away, recoverable.
    surviving: HashMap<(TaskId, u32), Arc<Live>>,
}

/// A running fake attempt; its exit is published on `exit`.
struct Live {
    exit: watch::Sender<Option<i32>>,
    obeys_sigterm: bool,
}

/// The fake driver. Cheap to clone; clones share their attempts.
#[derive(Clone, Default)]
pub struct FakeDriver {
    state: Arc<Mutex<State>>,
    /// Attempts outlive the agent (as containers do).
    pub survives: bool,
}

impl FakeDriver {
    /// A driver whose attempts die with the agent (as processes do).
    pub fn new() -> FakeDriver {
        FakeDriver::default()
    }

    /// A driver whose attempts outlive the agent (as containers do).
    pub fn surviving() -> FakeDriver {
        FakeDriver { survives: true, ..FakeDriver::default() }
    }

    /// How `task`'s attempts behave (default: exit 0 at once).
    pub fn script(&self, task: TaskId, script: Script) {
        self.lock().scripts.insert(task, script);
    }

    /// How attempts of tasks without a script behave from now on.
    pub fn script_all(&self, script: Script) {
        self.lock().default_script = Some(script);
    }

    /// What happened to one attempt.
    pub fn record(&self, task: TaskId, attempt: u32) -> Record {
        self.lock().records.get(&(task, attempt)).copied().unwrap_or_default()
    }

    /// Attempts started and not yet ended.
    pub fn running(&self) -> usize {
        self.lock().records.values().filter(|r| r.started && !r.ended).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn handle(&self, task: TaskId, attempt: u32, live: Arc<Live>) -> Box<dyn AttemptHandle> {
        Box::new(FakeAttempt { driver: self.clone(), key: (task, attempt), exits: live.exit.subscribe(), live })
    }
}

struct FakeAttempt {
    driver: FakeDriver,
    key: (TaskId, u32),
    live: Arc<Live>,
    exits: watch::Receiver<Option<i32>>,
}

impl FakeAttempt {
    fn end(&self, code: i32) {
        self.live.exit.send_if_modified(|exit| {
            if exit.is_none() {
                *exit = Some(code);
                true
            } else {
                false
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut Record)) {
        let mut state = self.driver.lock();
        change(state.records.entry(self.key).or_default());
    }
}

#[async_trait]
impl AttemptHandle for FakeAttempt {
    async fn wait(&mut self) -> Result<ExitStatus, DriverError> {
        let exit =
            self.exits.wait_for(Option::is_some).await.map_err(|_| DriverError::Io(std::io::Error::other("fake attempt vanished")))?;
        let code = exit.unwrap_or(0);
        drop(exit);
        self.update(|r| r.ended = true);
        Ok(ExitStatus { code, oom_killed: false, finished_at: None, usage: None })
    }

    async fn terminate(&mut self) -> Result<(), DriverError> {
        self.update(|r| r.terminated += 1);
        if self.live.obeys_sigterm {
            self.end(143);
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<(), DriverError> {
        if self.live.exit.borrow().is_none() {
            self.update(|r| r.killed = true);
        }
        self.end(137);
        Ok(())
    }

    async fn remove(&mut self) -> Result<(), DriverError> {
        self.update(|r| r.removed = true);
        self.driver.lock().surviving.remove(&self.key);
        Ok(())
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn attempts_survive_agent(&self) -> bool {
        self.survives
    }

    async fn start(&self, spec: &AttemptSpec, output: OutputSender) -> Result<Box<dyn AttemptHandle>, DriverError> {
        let script = {
            let state = self.lock();
            state.scripts.get(&spec.task_id).or(state.default_script.as_ref()).cloned().unwrap_or_default()
        };
        if let Some(reason) = script.start_fails {
            return Err(DriverError::StartFailed(reason));
        }
        let (exit, _) = watch::channel(None);
        let live = Arc::new(Live { exit, obeys_sigterm: script.obeys_sigterm });
        let key = (spec.task_id, spec.attempt);
        {
            let mut state = self.lock();
            state.records.insert(key, Record { started: true, ..Record::default() });
            if self.survives {
                state.surviving.insert(key, live.clone());
            }
        }
        let runner = live.clone();
        tokio::spawn(async move {
            if !script.output.is_empty() {
                let _ = output.send(OutputChunk { stream: LogStream::Stdout, data: script.output }).await;
            }
            // The output channel closes here: output ends when the attempt is started.
            drop(output);
            if let Some(after) = script.runs_for {
                tokio::time::sleep(after).await;
                runner.exit.send_if_modified(|exit| {
                    if exit.is_none() {
                        *exit = Some(script.code);
                        true
                    } else {
                        false
                    }
                });
            }
        });
        Ok(self.handle(spec.task_id, spec.attempt, live))
    }

    async fn recover(
        &self,
        task_id: TaskId,
        attempt: u32,
        _output: OutputSender,
        _captured: Captured,
    ) -> Result<Option<Box<dyn AttemptHandle>>, DriverError> {
        let live = self.lock().surviving.get(&(task_id, attempt)).cloned();
        Ok(live.map(|live| self.handle(task_id, attempt, live)))
    }

    async fn remove_orphans(&self, keep: &[(TaskId, u32)]) -> Result<usize, DriverError> {
        let mut state = self.lock();
        let orphans: Vec<(TaskId, u32)> = state.surviving.keys().filter(|k| !keep.contains(k)).copied().collect();
        for key in &orphans {
            if let Some(live) = state.surviving.remove(key) {
                live.exit.send_if_modified(|exit| exit.replace(137).is_none());
            }
            state.records.entry(*key).or_default().removed = true;
        }
        Ok(orphans.len())
    }
}

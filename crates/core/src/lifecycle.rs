//! The one state machine that decides every task transition.
//!
//! Callers (the store, in practice) load a task's [`LifecycleContext`], ask
//! [`decide`] what an [`Event`] does to it, and persist the [`Decision`] in the
//! same transaction. Nothing else in Shepherd changes a task's state.

use crate::{AttemptOutcome, TaskState, Timestamp};
use std::time::Duration;

/// What the state machine needs to know about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleContext {
    pub state: TaskState,
    /// Number of the current (or last) attempt; 0 before the first.
    pub attempt: u32,
    /// Attempts that count against `max_attempts` (interrupted ones do not).
    pub charged_attempts: u32,
    pub max_attempts: u32,
    /// The retry policy's base backoff.
    pub backoff_seconds: u32,
    pub cancel_requested: bool,
}

/// Something that happened to a task. Events about an attempt name it, so a
/// late report about an attempt that was already given up is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The scheduler placed the task on a node.
    Schedule { node_id: String },
    /// The agent started the attempt (`at`: when, by the node's clock; the
    /// time the report is applied when absent).
    Start {
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<crate::Timestamp>,
        /// Where it runs (its container, warm or cold), if the driver says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime: Option<crate::AttemptRuntime>,
    },
    /// The attempt exited with a code; `oom_killed` when the kernel killed
    /// it for exceeding its memory limit. `at`: when it exited, as the
    /// engine recorded it (it may have ended while no agent watched).
    Exit {
        attempt: u32,
        code: i32,
        oom_killed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<crate::Timestamp>,
        /// What it used, if the node measured it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::Usage>,
        /// What it wrote to `$SHEPHERD_RESULT_FILE` (at most
        /// [`MAX_RESULT_BYTES`]; more is cut there), base64 on the wire.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "result_base64")]
        result: Option<Vec<u8>>,
    },
    /// The attempt ran past the timeout and was stopped.
    TimedOut {
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::Usage>,
    },
    /// The attempt could not be started.
    StartFailed { attempt: u32, reason: String },
    /// The attempt's node or agent went away.
    Lost { attempt: u32, reason: String },
    /// A clean agent shutdown stopped the attempt; it will run again.
    Interrupted { attempt: u32 },
    /// A user asked to cancel the task.
    Cancel,
    /// The task's dependencies are met (and, a child of an array, it has a
    /// place under the array's parallelism): it joins the queue.
    Release,
    /// A dependency ended in a way that can never satisfy it (or, a child
    /// of a fail-fast array, a sibling failed): `reason` says which.
    DependencyFailed { reason: String },
    /// The agent stopped the attempt because the task was cancelled.
    Cancelled {
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::Usage>,
    },
}

/// What an event does to a task, for the store to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The new state (equal to the old one for a cancel request on a task
    /// that is on a node: it stays there until the agent stops it).
    pub to: TaskState,
    /// Open this attempt number (on scheduling).
    pub open_attempt: Option<u32>,
    /// Close the current attempt with this outcome.
    pub close_attempt: Option<AttemptOutcome>,
    /// Whether the closed attempt counts against `max_attempts`.
    pub charge_attempt: bool,
    /// When going back to the queue: wait this long before placing again.
    pub retry_after: Option<Duration>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// Mark the task as cancel-requested.
    pub request_cancel: bool,
}

impl Decision {
    fn to(state: TaskState) -> Decision {
        Decision {
            to: state,
            open_attempt: None,
            close_attempt: None,
            charge_attempt: false,
            retry_after: None,
            exit_code: None,
            reason: None,
            request_cancel: false,
        }
    }
}

/// An event that cannot apply to the task as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    #[error("task is {state}; `{event}` does not apply")]
    WrongState { state: TaskState, event: &'static str },
    #[error("report about attempt {reported}, but the current attempt is {current}")]
    StaleAttempt { reported: u32, current: u32 },
    #[error("task already ended as {0}")]
    AlreadyTerminal(TaskState),
    /// The event was applied before: an agent sent a report again because
    /// the answer to the first one was lost (its server died). Nothing
    /// changes, and the agent may go on as if it had been accepted.
    #[error("`{event}` for attempt {attempt} was already applied")]
    Repeated { event: &'static str, attempt: u32 },
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Schedule { .. } => "schedule",
            Event::Start { .. } => "start",
            Event::Exit { .. } => "exit",
            Event::TimedOut { .. } => "timed_out",
            Event::StartFailed { .. } => "start_failed",
            Event::Lost { .. } => "lost",
            Event::Interrupted { .. } => "interrupted",
            Event::Cancel => "cancel",
            Event::Release => "release",
            Event::DependencyFailed { .. } => "dependency_failed",
            Event::Cancelled { .. } => "cancelled",
        }
    }

    /// When it happened, if the reporter knew better than "now" (the node's
    /// or the engine's record of a start or an exit).
    pub fn at(&self) -> Option<crate::Timestamp> {
        match self {
            Event::Start { at, .. } | Event::Exit { at, .. } => *at,
            _ => None,
        }
    }

    /// The attempt an agent's report is about (`None` for the scheduler's
    /// and users' events).
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Event::Start { attempt, .. }
            | Event::Exit { attempt, .. }
            | Event::TimedOut { attempt, .. }
            | Event::StartFailed { attempt, .. }
            | Event::Lost { attempt, .. }
            | Event::Interrupted { attempt }
            | Event::Cancelled { attempt, .. } => Some(*attempt),
            Event::Schedule { .. } | Event::Cancel | Event::Release | Event::DependencyFailed { .. } => None,
        }
    }
}

/// Decides what `event` does to a task in `ctx`.
pub fn decide(ctx: &LifecycleContext, event: &Event) -> Result<Decision, IllegalTransition> {
    decide_with(ctx, &[], event)
}

/// [`decide`] for a task with retry rules (`RetryPolicy::on`): the first
/// rule that matches a failed attempt decides whether the task is retried,
/// retried without spending an attempt, or ends now.
pub fn decide_with(ctx: &LifecycleContext, rules: &[crate::RetryRule], event: &Event) -> Result<Decision, IllegalTransition> {
    use TaskState::*;
    if ctx.state.is_terminal() {
        return Err(IllegalTransition::AlreadyTerminal(ctx.state));
    }
    if let Some(reported) = event.attempt() {
        if reported != ctx.attempt {
            return Err(IllegalTransition::StaleAttempt { reported, current: ctx.attempt });
        }
    }
    let on_node = matches!(ctx.state, Scheduled | Running);
    let wrong = || IllegalTransition::WrongState { state: ctx.state, event: event.name() };
    let decision = match event {
        Event::Schedule { .. } if ctx.state == Queued => Decision { open_attempt: Some(ctx.attempt + 1), ..Decision::to(Scheduled) },
        Event::Start { .. } if ctx.state == Scheduled => Decision::to(Running),
        Event::Start { attempt, .. } if ctx.state == Running => {
            return Err(IllegalTransition::Repeated { event: "start", attempt: *attempt });
        }
        Event::Exit { code: 0, oom_killed: false, .. } if ctx.state == Running => {
            Decision { close_attempt: Some(AttemptOutcome::Succeeded), charge_attempt: true, exit_code: Some(0), ..Decision::to(Succeeded) }
        }
        Event::Exit { code, oom_killed, .. } if ctx.state == Running => {
            let reason = if *oom_killed { "oom_killed".to_string() } else { format!("exited with code {code}") };
            let why = oom_killed.then_some(crate::FailureReason::OomKilled);
            let rule = rules.iter().find(|r| r.matches(Some(*code), why));
            Decision { exit_code: Some(*code), ..retry_or_fail(ctx, rule, AttemptOutcome::Failed, reason) }
        }
        Event::TimedOut { .. } if ctx.state == Running => Decision {
            close_attempt: Some(AttemptOutcome::TimedOut),
            charge_attempt: true,
            reason: Some("timed out".to_string()),
            ..Decision::to(TimedOut)
        },
        Event::StartFailed { reason, .. } if on_node => {
            let why = if reason.starts_with("image_pull_failed") {
                crate::FailureReason::ImagePullFailed
            } else {
                crate::FailureReason::StartFailed
            };
            let rule = rules.iter().find(|r| r.matches(None, Some(why)));
            retry_or_fail(ctx, rule, AttemptOutcome::StartFailed, reason.clone())
        }
        Event::Lost { .. } if on_node && ctx.cancel_requested => cancelled(AttemptOutcome::Lost),
        Event::Lost { .. } if on_node => {
            let rule = rules.iter().find(|r| r.matches(None, Some(crate::FailureReason::Lost)));
            retry_or_fail(ctx, rule, AttemptOutcome::Lost, "lost".to_string())
        }
        Event::Interrupted { .. } if on_node && ctx.cancel_requested => cancelled(AttemptOutcome::Interrupted),
        Event::Interrupted { .. } if on_node => Decision { close_attempt: Some(AttemptOutcome::Interrupted), ..Decision::to(Queued) },
        Event::Release if ctx.state == Waiting => Decision::to(Queued),
        Event::DependencyFailed { reason } if matches!(ctx.state, Waiting | Queued) => {
            Decision { reason: Some(reason.clone()), ..Decision::to(Cancelled) }
        }
        Event::DependencyFailed { reason } if on_node => {
            Decision { request_cancel: true, reason: Some(reason.clone()), ..Decision::to(ctx.state) }
        }
        Event::Cancel if matches!(ctx.state, Queued | Waiting) => {
            Decision { reason: Some("cancelled by user".to_string()), ..Decision::to(Cancelled) }
        }
        Event::Cancel if on_node => Decision { request_cancel: true, ..Decision::to(ctx.state) },
        Event::Cancelled { .. } if on_node => cancelled(AttemptOutcome::Cancelled),
        _ => return Err(wrong()),
    };
    debug_assert!(decision.to == ctx.state || ctx.state.can_transition_to(decision.to));
    Ok(decision)
}

/// Every field of a task (and of its attempts) that an event changes,
/// worked out in full, so that a store only writes what it says: no
/// lifecycle rule lives in any store's SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What the state machine decided.
    pub decision: Decision,
    pub state: TaskState,
    /// The current attempt's number after the event.
    pub attempt: u32,
    pub charged_attempts: u32,
    pub cancel_requested: bool,
    /// The node of the current (or last) attempt.
    pub node_id: Option<String>,
    /// The task may not be placed before this.
    pub not_before: Timestamp,
    /// Set when `Some`; left as it is when `None` (so are the times below).
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// A new attempt row: its number, node and time.
    pub open_attempt: Option<(u32, String, Timestamp)>,
    /// The current attempt started at this time (and where, if its agent said).
    pub start_attempt: Option<(u32, Timestamp, Option<crate::AttemptRuntime>)>,
    /// The current attempt ended.
    pub close_attempt: Option<ClosedAttempt>,
}

/// The most a task's result may hold: 64 KiB.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// An attempt's result as base64 in JSON.
mod result_base64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| base64::engine::general_purpose::STANDARD.decode(t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// How an attempt ended, as its row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedAttempt {
    pub number: u32,
    pub finished_at: Timestamp,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// What the attempt used, if its node measured it.
    pub usage: Option<crate::Usage>,
    /// What it wrote to its result file (at most [`MAX_RESULT_BYTES`]).
    pub result: Option<Vec<u8>>,
}

/// Decides what `event` does to a task in `ctx` (on node `node_id`) at
/// `now`, and works out every field that changes. An event that carries its
/// own time (a start or exit timed by the node or the engine) happens then,
/// never later than `now`.
pub fn change(ctx: &LifecycleContext, node_id: Option<&str>, event: &Event, now: Timestamp) -> Result<Change, IllegalTransition> {
    change_with(ctx, &[], node_id, event, now)
}

/// [`change`] for a task with retry rules (see [`decide_with`]).
pub fn change_with(
    ctx: &LifecycleContext,
    rules: &[crate::RetryRule],
    node_id: Option<&str>,
    event: &Event,
    now: Timestamp,
) -> Result<Change, IllegalTransition> {
    let decision = decide_with(ctx, rules, event)?;
    let at = event.at().map_or(now, |at| at.min(now));
    let attempt = decision.open_attempt.unwrap_or(ctx.attempt);
    let node_id = match event {
        Event::Schedule { node_id } => Some(node_id.clone()),
        _ => node_id.map(str::to_string),
    };
    let open_attempt = decision.open_attempt.map(|number| (number, node_id.clone().unwrap_or_default(), at));
    let start_attempt = match event {
        Event::Start { runtime, .. } => Some((attempt, at, runtime.clone())),
        _ => None,
    };
    let close_attempt = decision.close_attempt.map(|outcome| ClosedAttempt {
        number: attempt,
        finished_at: at,
        outcome,
        exit_code: decision.exit_code,
        // A lost attempt keeps the detailed reason; the task says `lost`.
        reason: match event {
            Event::Lost { reason, .. } => Some(reason.clone()),
            _ => decision.reason.clone(),
        },
        usage: match event {
            Event::Exit { usage, .. } | Event::TimedOut { usage, .. } | Event::Cancelled { usage, .. } => *usage,
            _ => None,
        },
        // Cut at the bound, whatever a node sends.
        result: match event {
            Event::Exit { result: Some(bytes), .. } => Some(bytes[..bytes.len().min(MAX_RESULT_BYTES)].to_vec()),
            _ => None,
        },
    });
    Ok(Change {
        state: decision.to,
        attempt,
        charged_attempts: ctx.charged_attempts + u32::from(decision.charge_attempt),
        cancel_requested: ctx.cancel_requested || decision.request_cancel,
        node_id,
        not_before: decision.retry_after.map_or(at, |wait| at.plus(wait)),
        exit_code: decision.exit_code,
        reason: decision.reason.clone(),
        scheduled_at: open_attempt.as_ref().map(|_| at),
        started_at: start_attempt.as_ref().map(|_| at),
        finished_at: decision.to.is_terminal().then_some(at),
        updated_at: at,
        open_attempt,
        start_attempt,
        close_attempt,
        decision,
    })
}

fn cancelled(outcome: AttemptOutcome) -> Decision {
    Decision {
        close_attempt: Some(outcome),
        charge_attempt: true,
        reason: Some("cancelled by user".to_string()),
        ..Decision::to(TaskState::Cancelled)
    }
}

/// Back to the queue while attempts remain, else failed with `reason`;
/// a matching retry rule may end it now or retry it without charge.
fn retry_or_fail(ctx: &LifecycleContext, rule: Option<&crate::RetryRule>, outcome: AttemptOutcome, reason: String) -> Decision {
    let charged = ctx.charged_attempts + 1;
    let base = Decision { close_attempt: Some(outcome), charge_attempt: true, reason: Some(reason), ..Decision::to(TaskState::Failed) };
    if ctx.cancel_requested {
        return cancelled(outcome);
    }
    let policy = crate::RetryPolicy { max_attempts: ctx.max_attempts, backoff_seconds: ctx.backoff_seconds, on: Vec::new() };
    match rule.map(|r| r.action) {
        Some(crate::RetryAction::Fail) => {
            let reason = base.reason.clone().map(|r| format!("{r}; a retry rule ends the task"));
            return Decision { reason, ..base };
        }
        Some(crate::RetryAction::RetryFree) if ctx.attempt.saturating_sub(ctx.charged_attempts) < crate::task::MAX_FREE_RETRIES => {
            let wait = policy.backoff_before(ctx.charged_attempts + 2);
            return Decision { to: TaskState::Queued, charge_attempt: false, retry_after: Some(wait), ..base };
        }
        _ => {}
    }
    if charged < ctx.max_attempts {
        let wait = policy.backoff_before(ctx.attempt + 1);
        Decision { to: TaskState::Queued, retry_after: Some(wait), ..base }
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn ctx(state: TaskState) -> LifecycleContext {
        LifecycleContext { state, attempt: 1, charged_attempts: 0, max_attempts: 1, backoff_seconds: 5, cancel_requested: false }
    }

    fn all_events() -> Vec<Event> {
        vec![
            Event::Schedule { node_id: "n".into() },
            Event::Start { attempt: 1, at: None, runtime: None },
            Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None },
            Event::Exit { attempt: 1, code: 3, oom_killed: false, at: None, usage: None, result: None },
            Event::TimedOut { attempt: 1, usage: None },
            Event::StartFailed { attempt: 1, reason: "no such image".into() },
            Event::Lost { attempt: 1, reason: "node down".into() },
            Event::Interrupted { attempt: 1 },
            Event::Cancel,
            Event::Release,
            Event::DependencyFailed { reason: "dependency_failed: x".into() },
            Event::Cancelled { attempt: 1, usage: None },
        ]
    }

    #[test]
    fn every_decision_is_a_legal_move() {
        for state in TaskState::ALL {
            for max_attempts in [1, 3] {
                for cancel_requested in [false, true] {
                    let c = LifecycleContext { max_attempts, cancel_requested, ..ctx(state) };
                    for event in all_events() {
                        if let Ok(d) = decide(&c, &event) {
                            assert!(d.to == state || state.can_transition_to(d.to), "{state} --{event:?}--> {}", d.to);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_states_refuse_every_event() {
        for state in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in all_events() {
                assert_eq!(decide(&ctx(state), &event), Err(IllegalTransition::AlreadyTerminal(state)));
            }
        }
    }

    #[test]
    fn the_happy_path() {
        let d = decide(&LifecycleContext { attempt: 0, ..ctx(Queued) }, &Event::Schedule { node_id: "n".into() }).unwrap();
        assert_eq!((d.to, d.open_attempt), (Scheduled, Some(1)));
        assert_eq!(decide(&ctx(Scheduled), &Event::Start { attempt: 1, at: None, runtime: None }).unwrap().to, Running);
        let d =
            decide(&ctx(Running), &Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None }).unwrap();
        assert_eq!((d.to, d.exit_code, d.close_attempt), (Succeeded, Some(0), Some(AttemptOutcome::Succeeded)));
    }

    #[test]
    fn failures_retry_while_attempts_remain() {
        let running = LifecycleContext { max_attempts: 2, ..ctx(Running) };
        let d = decide(&running, &Event::Exit { attempt: 1, code: 1, oom_killed: false, at: None, usage: None, result: None }).unwrap();
        assert_eq!((d.to, d.exit_code), (Queued, Some(1)));
        assert!(d.retry_after.is_some());
        let last = LifecycleContext { attempt: 2, charged_attempts: 1, ..running };
        let d = decide(&last, &Event::Exit { attempt: 2, code: 1, oom_killed: false, at: None, usage: None, result: None }).unwrap();
        assert_eq!(d.to, Failed);
        assert_eq!(d.reason.as_deref(), Some("exited with code 1"));
    }

    #[test]
    fn an_oom_kill_fails_with_reason_oom_killed() {
        let d =
            decide(&ctx(Running), &Event::Exit { attempt: 1, code: 137, oom_killed: true, at: None, usage: None, result: None }).unwrap();
        assert_eq!((d.to, d.reason.as_deref(), d.exit_code), (Failed, Some("oom_killed"), Some(137)));
    }

    #[test]
    fn a_lost_attempt_is_retried_or_fails_with_reason_lost() {
        let d = decide(&LifecycleContext { max_attempts: 2, ..ctx(Running) }, &Event::Lost { attempt: 1, reason: "x".into() }).unwrap();
        assert_eq!(d.to, Queued);
        let d = decide(&ctx(Scheduled), &Event::Lost { attempt: 1, reason: "x".into() }).unwrap();
        assert_eq!((d.to, d.reason.as_deref()), (Failed, Some("lost")));
    }

    #[test]
    fn interrupted_attempts_requeue_without_charge() {
        let d = decide(&ctx(Running), &Event::Interrupted { attempt: 1 }).unwrap();
        assert_eq!((d.to, d.charge_attempt), (Queued, false));
    }

    #[test]
    fn cancel_ends_queued_tasks_and_flags_running_ones() {
        assert_eq!(decide(&ctx(Queued), &Event::Cancel).unwrap().to, Cancelled);
        let d = decide(&ctx(Running), &Event::Cancel).unwrap();
        assert_eq!((d.to, d.request_cancel), (Running, true));
        let flagged = LifecycleContext { cancel_requested: true, max_attempts: 5, ..ctx(Running) };
        assert_eq!(decide(&flagged, &Event::Cancelled { attempt: 1, usage: None }).unwrap().to, Cancelled);
        assert_eq!(
            decide(&flagged, &Event::Exit { attempt: 1, code: 137, oom_killed: false, at: None, usage: None, result: None }).unwrap().to,
            Cancelled
        );
        assert_eq!(decide(&flagged, &Event::Lost { attempt: 1, reason: "x".into() }).unwrap().to, Cancelled);
    }

    #[test]
    fn waiting_tasks_are_released_or_end_with_their_dependency() {
        assert_eq!(decide(&ctx(Waiting), &Event::Release).unwrap().to, Queued);
        assert!(matches!(decide(&ctx(Queued), &Event::Release), Err(IllegalTransition::WrongState { .. })));
        let d = decide(&ctx(Waiting), &Event::DependencyFailed { reason: "dependency_failed: A".into() }).unwrap();
        assert_eq!((d.to, d.reason.as_deref()), (Cancelled, Some("dependency_failed: A")));
        assert_eq!(decide(&ctx(Waiting), &Event::Cancel).unwrap().to, Cancelled);
        assert!(matches!(decide(&ctx(Waiting), &Event::Schedule { node_id: "n".into() }), Err(IllegalTransition::WrongState { .. })));
        // A fail-fast sibling stops a running child as a cancel would.
        let d = decide(&ctx(Running), &Event::DependencyFailed { reason: "array_failed: 3".into() }).unwrap();
        assert_eq!((d.to, d.request_cancel), (Running, true));
    }

    #[test]
    fn retry_rules_end_a_task_or_retry_it_free() {
        use crate::{FailureReason, RetryAction, RetryRule};
        let rules = vec![
            RetryRule { exit_codes: vec![3, 4], reason: None, action: RetryAction::Fail },
            RetryRule { exit_codes: vec![], reason: Some(FailureReason::Lost), action: RetryAction::RetryFree },
        ];
        let running = LifecycleContext { max_attempts: 5, ..ctx(Running) };
        let exit = |code| Event::Exit { attempt: 1, code, oom_killed: false, at: None, usage: None, result: None };
        let d = decide_with(&running, &rules, &exit(3)).unwrap();
        assert_eq!((d.to, d.reason.as_deref()), (Failed, Some("exited with code 3; a retry rule ends the task")));
        assert_eq!(decide_with(&running, &rules, &exit(1)).unwrap().to, Queued, "no rule: retried");
        let d = decide_with(&running, &rules, &Event::Lost { attempt: 1, reason: "node down".into() }).unwrap();
        assert_eq!((d.to, d.charge_attempt), (Queued, false));
        // Even on the last attempt, a lost one is retried free...
        let last = LifecycleContext { max_attempts: 1, ..ctx(Running) };
        assert_eq!(decide_with(&last, &rules, &Event::Lost { attempt: 1, reason: "x".into() }).unwrap().to, Queued);
        // ...but not forever.
        let worn = LifecycleContext { attempt: 101, charged_attempts: 0, max_attempts: 1, ..ctx(Running) };
        assert_eq!(decide_with(&worn, &rules, &Event::Lost { attempt: 101, reason: "x".into() }).unwrap().to, Failed);
    }

    #[test]
    fn stale_attempt_reports_are_refused() {
        let c = LifecycleContext { attempt: 2, ..ctx(Running) };
        assert_eq!(
            decide(&c, &Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None }),
            Err(IllegalTransition::StaleAttempt { reported: 1, current: 2 })
        );
    }

    #[test]
    fn events_out_of_order_are_illegal() {
        assert!(matches!(
            decide(&ctx(Queued), &Event::Start { attempt: 1, at: None, runtime: None }),
            Err(IllegalTransition::WrongState { .. })
        ));
        // A start reported again (its first answer lost) is known as such.
        assert!(matches!(
            decide(&ctx(Running), &Event::Start { attempt: 1, at: None, runtime: None }),
            Err(IllegalTransition::Repeated { event: "start", attempt: 1 })
        ));
        assert!(matches!(
            decide(&ctx(Scheduled), &Event::Exit { attempt: 1, code: 0, oom_killed: false, at: None, usage: None, result: None }),
            Err(IllegalTransition::WrongState { .. })
        ));
        assert!(matches!(decide(&ctx(Running), &Event::Schedule { node_id: "n".into() }), Err(IllegalTransition::WrongState { .. })));
    }
}

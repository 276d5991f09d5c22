//! Property: whatever sequence of events hits a task, the state machine
//! only makes legal moves, a terminal state never changes, attempts only
//! grow, and a task never uses more attempts than it is allowed.

use proptest::prelude::*;
use shepherd_core::lifecycle::decide;
use shepherd_core::{Event, LifecycleContext, TaskState};

fn event(kind: u8, attempt_offset: u8, code: i32) -> impl Fn(u32) -> Event {
    move |current| {
        let attempt = current.saturating_sub(u32::from(attempt_offset % 2));
        match kind % 9 {
            0 => Event::Schedule { node_id: "n".into() },
            1 => Event::Start { attempt, at: None, runtime: None },
            2 => Event::Exit { attempt, code, oom_killed: code == 137, at: None, usage: None, result: None },
            3 => Event::TimedOut { attempt, usage: None },
            4 => Event::StartFailed { attempt, reason: "x".into() },
            5 => Event::Lost { attempt, reason: "x".into() },
            6 => Event::Interrupted { attempt },
            7 => Event::Cancel,
            _ => Event::Cancelled { attempt, usage: None },
        }
    }
}

proptest! {
    #[test]
    fn random_event_sequences_keep_the_lifecycle_sound(
        max_attempts in 1u32..5,
        events in prop::collection::vec((any::<u8>(), any::<u8>(), prop_oneof![Just(0), Just(1), Just(137)]), 0..60),
    ) {
        let mut ctx = LifecycleContext {
            state: TaskState::Queued, attempt: 0, charged_attempts: 0, max_attempts, backoff_seconds: 0, cancel_requested: false,
        };
        for (kind, offset, code) in events {
            let e = event(kind, offset, code)(ctx.attempt);
            if let Ok(d) = decide(&ctx, &e) {
                {
                    prop_assert!(!ctx.state.is_terminal());
                    prop_assert!(d.to == ctx.state || ctx.state.can_transition_to(d.to));
                    let attempt = d.open_attempt.unwrap_or(ctx.attempt);
                    prop_assert!(attempt >= ctx.attempt);
                    ctx = LifecycleContext {
                        state: d.to,
                        attempt,
                        charged_attempts: ctx.charged_attempts + u32::from(d.charge_attempt),
                        cancel_requested: ctx.cancel_requested || d.request_cancel,
                        ..ctx
                    };
                    prop_assert!(ctx.charged_attempts <= max_attempts);
                    if ctx.state == TaskState::Queued {
                        prop_assert!(ctx.charged_attempts < max_attempts, "requeued with no attempts left");
                    }
                }
            }
        }
    }
}

//! Reloads of the scheduler config (`--scheduler-config`) while the
//! server runs: when the file or one of its WebAssembly plugins changes
//! (checked every two seconds), on SIGHUP, and through
//! `POST /v1/plugins/reload`. A configuration that does not load leaves the
//! previous one in place and says why (`GET /v1/plugins`, the log). Passes
//! take the engine once at their start, so a reload never splits one.

use shepherd_plugins::Scheduling;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How often the files are looked at.
const EVERY: Duration = Duration::from_secs(2);

/// Watches for changes and SIGHUP until shutdown; wakes the scheduler
/// after a reload so the new version is used at once.
pub async fn run(scheduling: Arc<Scheduling>, wakeup: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    if scheduling.report().config.is_none() {
        return;
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = shutdown.changed() => return,
        };
        if forced {
            tracing::info!("SIGHUP: reloading the scheduler config");
        }
        let scheduling = scheduling.clone();
        let outcome =
            tokio::task::spawn_blocking(move || if forced { Some(scheduling.reload()) } else { scheduling.reload_if_changed() }).await;
        if let Ok(Some(Ok(_))) = outcome {
            wakeup.notify_one();
        }
    }
}

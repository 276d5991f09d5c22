//! Heartbeats into the store: those of remote agents heard by this server
//! (kept in memory by [`Liveness`] and written in batches), and the
//! in-process node's own.

use crate::nodes::liveness::Liveness;
use crate::nodes::view::ClusterView;
use shepherd_agent::Agent;
use shepherd_core::Timestamp;
use shepherd_store::{NodeState, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Writes the heartbeats heard here to the store every `every`, in one
/// batch; a node the store shows down (a leader elsewhere decided it) is
/// told to reconnect at its next heartbeat. Changed images make the
/// scheduler read the nodes again.
pub async fn flush(
    store: Arc<dyn Store>,
    liveness: Arc<Liveness>,
    view: Arc<ClusterView>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let beats = liveness.take_unflushed();
        if beats.is_empty() {
            continue;
        }
        let images_changed = beats.iter().any(|b| b.images.is_some());
        match store.touch_nodes(beats.clone()).await {
            Ok(states) => {
                for (beat, state) in beats.iter().zip(states) {
                    if state == Some(NodeState::Down) {
                        liveness.mark_down(&beat.id);
                    }
                }
                if images_changed {
                    view.nodes_changed();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, nodes = beats.len(), "heartbeats not stored; kept for the next write");
                liveness.restore(beats);
            }
        }
    }
}

/// The in-process node's heartbeat: its time and images for the store,
/// and a reconcile every 30 s. (Its liveness needs none: it lives as long
/// as this process.) Should the
/// store show it down, it fences its attempts (reconciles) before it is
/// ready again, as a remote agent does on reconnecting.
pub async fn local_node(store: Arc<dyn Store>, agent: Agent, node_id: String, mut shutdown: watch::Receiver<bool>) {
    // Every 30 s the node reconciles, as remote agents do: a report that
    // could not be stored (the store away longer than the agent retries)
    // leaves its task waiting for this. (`SHEPHERD_RECONCILE_EVERY`, in
    // seconds, for tests that race reconciles against starts.)
    let every = std::env::var("SHEPHERD_RECONCILE_EVERY")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64);
    let mut reconciles = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    reconciles.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = beats.tick() => {}
            _ = reconciles.tick() => {
                if let Err(e) = agent.reconcile().await {
                    tracing::warn!(error = %e, "could not reconcile the local node");
                }
                continue;
            }
            _ = shutdown.changed() => return,
        }
        match store.touch_node(&node_id, Timestamp::now(), agent.images().await).await {
            Ok(Some(NodeState::Down)) => {
                tracing::warn!(node = %node_id, "local node found down: fencing its attempts before it takes work again");
                match agent.reconcile().await {
                    Ok(()) => {
                        if let Ok(ready) = NodeState::Down.next(shepherd_core::NodeEvent::Fenced) {
                            let _ = store.set_node_state(&node_id, ready).await;
                            crate::nodes::dispatch::nodes_changed_everywhere(store.as_ref()).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not reconcile the local node"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat not stored"),
        }
    }
}

//! The leader's watch over nodes: a node silent past the node timeout is
//! declared down and its attempts reported lost.

use crate::loops::leader::{fenced, Leadership};
use crate::nodes::liveness::Liveness;
use crate::nodes::remote::RemoteAgents;
use crate::nodes::view::Observer;
use shepherd_core::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Declares nodes that stopped heartbeating down, and reports their
/// attempts lost: the state machine retries them elsewhere or fails them.
/// Only the leader does, with its lease on every write (the node's state
/// and the reports). A node's last sign
/// of life is the latest of its heartbeats here (`Liveness`: in memory,
/// before any store write), its heartbeat time in the store (written by
/// whichever server it talks to), and the moment this server began to lead
/// (agents of a server that died need time to move). In-process nodes are
/// never silent.
pub async fn run(
    remote: Arc<RemoteAgents>,
    liveness: Arc<Liveness>,
    observer: Observer,
    leadership: Leadership,
    wakeup: Arc<Notify>,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let store = observer.store.clone();
    let mut leading_since: Option<std::time::Instant> = None;
    // A tenth of the timeout between looks (1 to 5 s): listing thousands of
    // nodes every second would cost more than it tells.
    let every = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let Some(lease) = leadership.lease() else {
            leading_since = None;
            continue;
        };
        let now = Timestamp::now();
        let leading = leading_since.get_or_insert_with(std::time::Instant::now).elapsed();
        // Stored heartbeat times are in the store's clock (PostgreSQL's,
        // whichever server wrote them): compared with the same clock, so
        // no server's skew makes a live node look silent.
        let Ok(store_now) = store.clock().await else { continue };
        let nodes = match store.list_nodes().await {
            Ok(nodes) => nodes,
            Err(_) => continue,
        };
        for node in nodes {
            if liveness.is_local(&node.id) {
                continue;
            }
            if node.state == shepherd_core::NodeState::Down {
                // Down already: what is still on it was not reported lost
                // (a report that failed, fenced or not): report it again.
                give_away(&store, &observer, &leadership, &wakeup, &lease, &node.id, now).await;
                continue;
            }
            let heard_here = liveness.silent_for(&node.id);
            let stored = std::time::Duration::from_millis(u64::try_from(store_now.millis() - node.last_heartbeat_at.millis()).unwrap_or(0));
            let silent = heard_here.min(stored).min(leading);
            if silent <= timeout {
                continue;
            }
            // Already down (no change) or not one that can go down: nothing to do.
            let Ok(down) = node.state.next(shepherd_core::NodeEvent::MissedHeartbeats) else { continue };
            tracing::warn!(node = %node.id, silent_ms = silent.as_millis() as u64, "node missed its heartbeats: down");
            let id = node.id.clone();
            // Its heartbeats are refused from now on: it must reconnect and reconcile.
            liveness.mark_down(&id);
            remote.disconnect(&id);
            match store.set_node_state_as_leader(&id, down, &lease).await {
                Ok(_) => {}
                Err(e) if fenced(&e) => {
                    // Another server leads now: it watches the nodes.
                    leadership.step_down();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not mark node down");
                    continue;
                }
            }
            observer.view.nodes_changed();
            give_away(&store, &observer, &leadership, &wakeup, &lease, &id, now).await;
        }
    }
}

/// Reports the attempts still on a down node lost (the state machine
/// retries them elsewhere or fails them), unless the node came back.
async fn give_away(
    store: &Arc<dyn shepherd_store::Store>,
    observer: &Observer,
    leadership: &Leadership,
    wakeup: &Notify,
    lease: &shepherd_store::Lease,
    id: &str,
    now: Timestamp,
) {
    let lost: Vec<_> = match store.active_tasks_on(id).await {
        Ok(active) => active
            .into_iter()
            .map(|t| (t.id, shepherd_core::Event::Lost { attempt: t.attempt, reason: format!("node {id} missed its heartbeats") }))
            .collect(),
        Err(_) => return,
    };
    if lost.is_empty() {
        return;
    }
    // A node that registered again meanwhile keeps what it runs.
    if !matches!(store.get_node(id).await, Ok(Some(node)) if node.state == shepherd_core::NodeState::Down) {
        return;
    }
    tracing::info!(node = %id, count = lost.len(), "attempts lost with their node");
    match store.apply_as_leader(lost, now, lease).await {
        Err(e) if fenced(&e) => leadership.step_down(),
        Err(e) => tracing::warn!(error = %e, "could not report the attempts lost"),
        Ok(results) => observer.observe(&results),
    }
    wakeup.notify_one();
}
